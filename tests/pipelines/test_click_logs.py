"""A log without ratings (``data.columns.rating: none``) end to end: tasks that learn from
ratings refused before any stage; ``run`` with tasks [interaction], ``score`` and ``update``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from tests.conftest import tiny_config

COLUMNS = {"user_id": "user", "item_id": "item", "rating": "none", "ts": "when"}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("recsys-mtl")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _clicks(path, users: range, seed: int = 0, t0: int = 1_000_000):
    """Clicks of two tastes: users of the first half click items 0-39, the others items 40-79;
    18 clicks a user, some of them a repeat of a pair."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in users:
        low = 0 if u < 30 else 40
        for k, i in enumerate(rng.integers(low, low + 40, 18)):
            rows.append((u, int(i), t0 + 100 * u + k))
    frame = pl.DataFrame(rows, schema=["user", "item", "when"], orient="row")
    frame.write_csv(path)
    return path


def _config(tmp_path, log, tasks):
    return tiny_config(
        tmp_path, {"path": str(log), "columns": COLUMNS},
        model={"name": "bellkor", "params": {"dim": 8}}, tasks=tasks,
        features={"negatives_per_positive": 4},
        split={"strategy": "leave_last_out"},
        train={"epochs": 8, "batch_size": 256, "lr": 0.02, "monitor": "interaction"},
        evaluate={"k": 10, "sampled_negatives": 20, "full_ranking": True},
    )  # fmt: skip


def test_rating_or_like_tasks_on_a_log_without_ratings_stop_before_any_stage(tmp_path, cli):
    log = _clicks(tmp_path / "clicks.csv", range(60))
    cfg = _config(tmp_path, log, ["rating", "interaction", "like"])
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 2
    line = _one_line(err)
    assert "tasks: ['rating', 'like']" in line and "data.columns.rating is none" in line
    assert not (tmp_path / "run" / "ingest").exists()
    code, _, err = cli("stream", cfg, "--set", "split.strategy=stream", "--out", tmp_path / "s")
    assert code == 2 and "data.columns.rating is none" in _one_line(err)
    assert not (tmp_path / "s" / "ingest").exists()
    cold = ["--set", "tasks=[interaction]", "--set", "meta={learners: [{name: ridge}]}"]
    code, _, err = cli("run", cfg, *cold, "--out", tmp_path / "cold")
    assert code == 2 and "meta: cold start adapts from ratings" in _one_line(err)
    assert not (tmp_path / "cold" / "ingest").exists()


def test_a_click_log_runs_scores_and_updates_with_the_interaction_task(tmp_path, cli):
    log = _clicks(tmp_path / "clicks.csv", range(60))
    code, _, err = cli("run", _config(tmp_path, log, ["interaction"]), "--out", tmp_path / "run")
    assert code == 0, err
    assert "repeats of a (user, item) pair merged" in err
    report = json.loads((tmp_path / "run" / "ingest" / "report.json").read_text())
    assert report["interactions"]["ratings"] == "none" and report["rating_scale"] == [0.0, 1.0]
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    # the held-out click is ranked among some 60 unclicked items, half of them of the user's
    # taste: a model that learned the two tastes finds it well above chance (10/60)
    assert 0.3 < metrics["ranking_full/hr@10"] <= 1.0
    assert 0.7 < metrics["ranking/hr@10"] <= 1.0  # against 20 sampled items (chance 10/21)
    assert not any(k.startswith(("rating/", "like/")) for k in metrics)
    out = tmp_path / "top.parquet"
    code, _, err = cli("score", tmp_path / "run", "--top-k", "5", "--out", out)
    assert code == 0, err
    top = pl.read_parquet(out)
    assert top.height == 60 * 5 and top["score"].is_finite().all()
    new = _clicks(tmp_path / "new.csv", range(60), seed=1, t0=2_000_000)
    code, _, err = cli("update", tmp_path / "run", "--data", new, "--out", tmp_path / "child")
    assert code == 0, err
    assert (tmp_path / "child").is_dir()
    code, out_text, err = cli("data", "ingest", new, "--out", tmp_path / "ing", "--user-col",
                              "user", "--item-col", "item", "--rating-col", "none",
                              "--ts-col", "when")  # fmt: skip
    assert code == 0, err
    assert "no ratings (every row an interaction;" in out_text


def _taste_match(recs: pl.DataFrame, first_taste: pl.Expr) -> float:
    """The share of recommended items of the user's taste (items 0-39 or 40-79)."""
    return float(recs.select((first_taste == (pl.col("item_id") < 40)).mean()).item())


def test_new_users_of_a_click_run_are_folded_in_from_a_support_file_without_ratings(tmp_path, cli):
    """``score --support`` on a run trained on clicks reads ``user, item[, time]`` (every row an
    interaction) from the run folder and from its bundle, and folds the new users in with the
    ranker's interaction task: a ranker without implicit feedback (GMF), whose new-user state
    alone is the same for everybody, ranks each new user's taste first; so does a rated run of
    the interaction task alone (no rating head either), from a support file with ratings. A
    rated run still refuses a file without them in one line naming it and the column."""
    from recsys_mtl.runs.bundle import export_bundle

    log = _clicks(tmp_path / "clicks.csv", range(60))
    cfg = _config(tmp_path, log, ["interaction"])
    code, _, err = cli("run", cfg, "--set", "model={name: gmf, params: {dim: 8}}",
                       "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    rng = np.random.default_rng(5)
    rows = [(u, int(i), 3_000_000 + k) for u in range(1000, 1020)
            for k, i in enumerate(rng.choice(range(0, 40) if u < 1010 else range(40, 80), 6,
                                             replace=False))]  # fmt: skip
    support = tmp_path / "support.csv"
    pl.DataFrame(rows, schema=["user", "item", "when"], orient="row").write_csv(support)
    bundle = export_bundle(tmp_path / "run", tmp_path / "bundle")
    assert json.loads((bundle / "info.json").read_text())["ratings"] == "none"
    for source in (tmp_path / "run", bundle):
        out = tmp_path / f"{source.name}.parquet"
        code, text, err = cli("score", source, "--support", support, "--top-k", "10",
                              "--out", out)  # fmt: skip
        assert code == 0, err
        report = json.loads(text.splitlines()[-1])
        assert report["served_by"]["cold_start"] == 20, report
        assert report["cold_start_learner"] == "fold_in", report
        new = pl.read_parquet(out).filter(pl.col("user_id") >= 1000)
        assert new.height == 200 and (new["served_by"] == "cold_start").all()
        assert _taste_match(new, pl.col("user_id") < 1010) > 0.9, source  # chance: 0.5
    rated = tmp_path / "rated.csv"
    pl.read_csv(log).unique(["user", "item"]).with_columns(stars=pl.lit(4)).write_csv(rated)
    cfg = _config(tmp_path, rated, ["interaction"])
    code, _, err = cli("run", cfg, "--set", "model={name: gmf, params: {dim: 8}}",
                       "--set", "data.columns.rating=stars", "--out", tmp_path / "rated-run")  # fmt: skip
    assert code == 0, err
    # a rated run of the interaction task alone has no rating head either: folded in alike
    stars = tmp_path / "stars.csv"
    pl.read_csv(support).with_columns(rating=pl.lit(4)).write_csv(stars)
    out = tmp_path / "rated.parquet"
    code, text, err = cli("score", tmp_path / "rated-run", "--support", stars, "--top-k", "10",
                          "--out", out)  # fmt: skip
    assert code == 0, err
    assert json.loads(text.splitlines()[-1])["cold_start_learner"] == "fold_in"
    new = pl.read_parquet(out).filter(pl.col("user_id") >= 1000)
    assert _taste_match(new, pl.col("user_id") < 1010) > 0.9  # chance: 0.5
    code, _, err = cli("score", tmp_path / "rated-run", "--support", support, "--top-k", "10",
                       "--out", tmp_path / "r.parquet")  # fmt: skip
    assert code == 2
    assert _one_line(err) == (
        f"recsys-mtl: error: --support {support}:1: no rating column (needs user, item, rating; "
        "has user, item, when)"
    )
