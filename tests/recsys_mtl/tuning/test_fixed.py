"""A study's fixed settings: what a resumed study must share with the one that started it."""

from __future__ import annotations

from typing import Any

import pytest

from recsys_mtl.config import RunConfig
from recsys_mtl.tuning.fixed import differences, fixed_settings

SPACE = {
    "train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
    "model.params.dim": {"type": "int", "low": 4, "high": 32},
    "train.l2": {"type": "float", "low": 0.0, "high": 0.1, "when": {"model.name": "bellkor"}},
}


def config(**changes: Any) -> RunConfig:
    """A study config, with dotted ``changes`` (``train__epochs=5`` sets train.epochs)."""
    doc: dict[str, Any] = {
        "name": "t",
        "data": {"path": "/data/ratings.csv"},
        "model": {"name": "bellkor", "params": {"dim": 8}},
        "tasks": ["rating", "interaction"],
        "train": {"epochs": 3, "lr": 0.01},
        "tracking": {"enabled": False},
        "tune": {"trials": 4, "space": SPACE},
    }
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return RunConfig.model_validate(doc)


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other"},
        {"tune__trials": 40, "tune__timeout": 60, "tune__workers": 4, "tune__seed": 3},
        {"tune__storage": "postgresql://user:secret@host/db", "tune__study": "s"},
        {"tracking__enabled": True, "tracking__experiment": "x"},
        {"data__path": "/elsewhere/copy.csv", "data__max_quarantine_share": 0.5},
        {"train__threads": 8, "train__device": "cpu"},
        {"train__distributed": {"backend": "gloo", "collective_timeout": 10.0}},
        {"train__lr": 0.05, "model__params": {}},  # sampled in every trial: seeds the baseline
        {"train__epochs": 3, "train__patience": 3},  # 3 is train.patience's default
    ],
)
def test_what_may_change_between_commands_leaves_the_settings_alone(change: dict) -> None:
    assert fixed_settings(config(**change)) == fixed_settings(config())


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"train__epochs": 5}, "train.epochs=3, this config has 5"),
        ({"train__epochs": 10}, "train.epochs=3, this config has 10"),  # to its default
        ({"train__patience": 1}, "train.patience=3, this config has 1"),  # from its default
        ({"train__l2": 0.01}, "train.l2=0.0, this config has 0.01"),  # sampled under a when
        ({"data__memory_mb": 64}, "data.memory_mb=1024, this config has 64"),  # the negatives
        ({"features__seed": 2}, "features.seed=0, this config has 2"),
        ({"evaluate__k": [5, 10]}, "evaluate.k=10, this config has [5, 10]"),
        (
            {"model__params": {"dim": 8, "layers": 2}},
            "model.params.layers=(not set), this config has 2",
        ),
        ({"meta": {}}, "meta=null, this config has {}"),
        ({"data__format": "csv"}, "data.format=auto, this config has csv"),
    ],
)
def test_a_changed_fixed_setting_is_named_with_both_values(change: dict, said: str) -> None:
    new = config(**change)
    assert differences(fixed_settings(config()), fixed_settings(new), new) == said


def test_several_differences_are_named_in_config_order() -> None:
    new = config(train__epochs=5, tasks=["rating"], split__seed=1, evaluate__k=5)
    text = differences(fixed_settings(config()), fixed_settings(new), new)
    assert text == (
        "split.seed=0, tasks=[rating, interaction], train.epochs=3; this config has "
        "split.seed=1, tasks=[rating], train.epochs=5 (and 1 more)"
    )
    assert differences(fixed_settings(new), fixed_settings(new), new) is None


def test_a_stream_study_s_sampled_strategy_settings_are_not_fixed() -> None:
    space = {"stream.settings.replay.lr": {"type": "float", "low": 0.001, "high": 0.1}}
    stream = {"strategies": ["replay"], "settings": {"replay": {"lr": 0.01}}}
    base = config(stream=stream, tune__space=space, split__strategy="stream")
    other = {**stream, "settings": {"replay": {"lr": 0.05}}}
    assert fixed_settings(config(stream=other, tune__space=space, split__strategy="stream")) == (
        fixed_settings(base)
    )
    share = {**stream, "settings": {"replay": {"lr": 0.01, "share": 0.5}}}
    new = config(stream=share, tune__space=space, split__strategy="stream")
    assert differences(fixed_settings(base), fixed_settings(new), new) == (
        "stream.settings.replay.share=(not set), this config has 0.5"
    )
