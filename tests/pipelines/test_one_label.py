"""A task whose training labels are all one value learns nothing: the run says so."""

from __future__ import annotations

import numpy as np

from tests.conftest import tiny_config, write


def _log(path, ratings):
    pairs = np.random.default_rng(0).choice(40 * 50, len(ratings), replace=False)
    lines = ["user_id,item_id,rating,ts"] + [
        f"{p // 50},{p % 50},{r},{1_000_000 + k}"
        for k, (p, r) in enumerate(zip(pairs, ratings, strict=True))
    ]
    return write(path, "\n".join(lines) + "\n")


def _run(tmp_path, cli, ratings):
    log = _log(tmp_path / "log.csv", ratings)
    cfg = tiny_config(
        tmp_path, {"path": str(log), "rating_scale": [1, 5]},
        model={"name": "bellkor", "params": {"dim": 4}}, tasks=["rating", "like"],
        train={"epochs": 1, "batch_size": 256},
        evaluate={"k": 5, "sampled_negatives": 5, "full_ranking": False},
    )  # fmt: skip
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 0, err
    return err


def test_a_like_task_with_one_label_is_warned_once(tmp_path, cli):
    err = _run(tmp_path / "a", cli, [1] * 800)  # every rating below the threshold 4
    assert err.count("no training rating is a like") == 1
    mixed = np.random.default_rng(1).integers(1, 6, 800).tolist()
    assert "a like (rating >=" not in _run(tmp_path / "b", cli, mixed)
