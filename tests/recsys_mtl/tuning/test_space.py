"""The tune: section: search spaces, objectives and their one-line errors."""

from __future__ import annotations

import optuna
import pytest

from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.tuning.space import apply_values, objectives, sample, validate_tune
from recsys_mtl.tuning.study import redact


def config(tune: dict, **sections) -> RunConfig:
    doc = {
        "name": "t",
        "data": {"format": "synthetic"},
        "model": {"name": "bellkor", "params": {"dim": 8}},
        "tasks": ["rating", "interaction"],
        "tracking": {"enabled": False},
        "tune": tune,
        **sections,
    }
    return RunConfig.model_validate(doc)


SPACE = {"train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}


def test_objective_defaults_and_directions() -> None:
    assert [(o.name, o.direction) for o in objectives(config({"space": SPACE}))] == [
        ("valid/rating/rmse", "minimize")
    ]
    cfg = config({"space": SPACE, "objective": ["valid/rating/rmse", "valid/ranking/ndcg@10"]})
    assert [o.direction for o in objectives(cfg)] == ["minimize", "maximize"]
    # MLflow's spelling of a cut-off is accepted too
    cfg = config({"space": SPACE, "objective": "valid/ranking/hr_at_10"})
    assert objectives(cfg)[0].name == "valid/ranking/hr@10"
    assert objectives(config({"space": SPACE}, tasks=["interaction"]))[0].name == (
        "valid/ranking/ndcg@10"
    )


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"objective": "rating/rmse"}, "is not a validation metric"),
        ({"objective": "test/rating/rmse"}, "is not a validation metric"),
        ({"objective": "valid/rating/auc"}, "task rating reports rmse, mae"),
        ({"objective": "valid/like/auc"}, "needs task 'like'"),
        ({"objective": "valid/ranking/ndcg@20"}, "the run reports @10 (evaluate.k)"),
        ({"objective": "valid/ranking/precision@10"}, "is not a metric a run reports"),
        (
            {"objective": ["valid/rating/rmse", "valid/ranking/ndcg@10"], "pruner": "median"},
            "Optuna does not prune multi-objective studies",
        ),
        ({"sampler": "nsga2"}, "nsga2 is for several objectives"),
        ({"direction": ["minimize", "maximize"]}, "2 direction(s) for 1 objective(s)"),
    ],
)
def test_objective_errors(tune: dict, message: str) -> None:
    with pytest.raises(UserError, match=None) as e:
        validate_tune(config({"space": SPACE, **tune}), "c.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("c.yaml: tune.")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"split.seed": {"type": "int", "low": 0, "high": 3}}, "split is fixed within a study"),
        ({"evaluate.k": {"type": "int", "low": 5, "high": 20}}, "evaluate is fixed"),
        ({"train.lrr": {"type": "float", "low": 0.1, "high": 1.0}}, "tune.space.train.lrr: not a config key"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1}}, "value 0.0 is refused"),
        ({"train.epochs": {"type": "int", "low": 1, "high": 2, "log": True, "step": 1}}, None),
        ({"model.params.dimm": {"type": "int", "low": 4, "high": 8}}, "value 4 is refused"),
        (
            {"weighting.params.temperature": {"type": "float", "low": 1.0, "high": 2.0, "when": {"weighting.nam": "dwa"}}},
            "when: 'weighting.nam' is neither a config key nor an earlier parameter",
        ),
        ({}, "name at least one config key"),
    ],
)  # fmt: skip
def test_space_errors(space: dict, message: str | None) -> None:
    if message is None:  # a shape error pydantic catches when the section is read
        with pytest.raises(Exception, match="log scale and step cannot be combined"):
            config({"space": space})
        return
    with pytest.raises(UserError) as e:
        validate_tune(config({"space": space}), "c.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_conditional_parameters_follow_the_sampled_method() -> None:
    cfg = config(
        {
            "space": {
                "weighting.name": {"type": "categorical", "choices": ["static", "dwa"]},
                "weighting.params.temperature": {
                    "type": "float",
                    "low": 1.0,
                    "high": 4.0,
                    "when": {"weighting.name": "dwa"},
                },
                "weighting.weights.interaction": {
                    "type": "float",
                    "low": 0.1,
                    "high": 1.0,
                    "when": {"weighting.name": ["static"]},
                },
            }
        }
    )
    validate_tune(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"static": 0, "dwa": 0}
    for _ in range(12):
        trial = study.ask()
        values = sample(trial, cfg)
        method = values["weighting.name"]
        seen[method] += 1
        if method == "dwa":
            assert set(values) == {"weighting.name", "weighting.params.temperature"}
            assert 1.0 <= values["weighting.params.temperature"] <= 4.0
        else:
            assert set(values) == {"weighting.name", "weighting.weights.interaction"}
        applied = apply_values(cfg, values)
        assert applied.weighting.name == method
        study.tell(trial, 0.0)
    assert seen["static"] and seen["dwa"]


def test_int_steps_and_log_scales_reach_optuna() -> None:
    cfg = config(
        {
            "space": {
                "model.params.dim": {"type": "int", "low": 8, "high": 32, "step": 8},
                "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            }
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = sample(trial, cfg)
    assert values["model.params.dim"] in (8, 16, 24, 32)
    dists = trial.distributions
    assert dists["train.lr"].log and dists["model.params.dim"].step == 8


def test_apply_values_reports_the_key() -> None:
    cfg = config({"space": SPACE})
    with pytest.raises(UserError, match=r"trial 3: train.lr: Input should be greater than 0"):
        apply_values(cfg, {"train.lr": -1.0}, "trial 3")


def test_storage_urls_lose_their_passwords() -> None:
    assert redact("postgresql://bob:s3cret@db.example:5432/optuna") == (
        "postgresql://bob:***@db.example:5432/optuna"
    )
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_the_baseline_trial_is_the_config_as_written() -> None:
    from recsys_mtl.tuning.space import baseline_values

    cfg = config(
        {
            "space": {
                "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "train.l2": {"type": "float", "low": 0.1, "high": 1.0},  # 0.0 is outside
                "model.params.dim": {"type": "int", "low": 4, "high": 32, "step": 4},
                "weighting.name": {"type": "categorical", "choices": ["static", "uw"]},
                "weighting.params.temperature": {
                    "type": "float",
                    "low": 1.0,
                    "high": 4.0,
                    "when": {"weighting.name": "dwa"},
                },
            }
        },
        train={"lr": 0.003},
    )
    assert baseline_values(cfg) == {
        "train.lr": 0.003,
        "model.params.dim": 8,
        "weighting.name": "static",
    }


def test_the_baseline_trial_samples_nothing_and_runs_the_config_as_written() -> None:
    from recsys_mtl.tuning.space import BASELINE_ATTR, baseline_values

    space = {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "train.l2": {"type": "float", "low": 0.1, "high": 1.0},  # 0.0 is outside
        # not in the config: the ranker's own default applies
        "weighting.weights.interaction": {"type": "float", "low": 0.1, "high": 1.0},
        "model.params.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
    cfg = config({"space": space}, train={"lr": 0.003})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(baseline_values(cfg), user_attrs={BASELINE_ATTR: True})
    trial = study.ask()
    values = sample(trial, cfg)
    assert values == {"train.lr": 0.003} and trial.params == values
    assert apply_values(cfg, values) == cfg  # nothing the config does not say
    # the next trial samples every key
    assert set(sample(study.ask(), cfg)) == set(space)
