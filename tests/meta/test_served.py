"""The method a cold-start run serves: chosen by a balanced rule on the cold validation users
only, recorded in the run and its bundle, served by ``adapt_users`` and ``recsys-mtl score``;
users with demographics and no rating (K = 0)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from meta.adapt import adapt_users
from meta.select import select_served
from recsys_mtl.runs.load import load_run


def _rows(figures: dict[str, dict[str, tuple]]) -> list[dict]:
    """Cold-validation rows from ``{method: {k: (rmse, ndcg, hr)}}``."""
    rows = []
    for name, per_k in figures.items():
        for k, (rmse, ndcg, hr) in per_k.items():
            m = {"rating/rmse": rmse, "ranking/ndcg@10": ndcg, "ranking/hr@10": hr,
                 "rating/mae": rmse * 0.8}  # fmt: skip
            rows.append({"labels": {"learner": name, "kind": "learner", "k": k}, "metrics": m})
    return rows


def test_the_rule_is_balanced_a_method_best_on_one_measure_is_not_picked():
    rows = _rows({
        "rating_only": {5: (0.90, 0.20, 0.50), 10: (0.88, 0.21, 0.52)},
        "balanced": {5: (0.95, 0.40, 0.80), 10: (0.93, 0.41, 0.81)},
        "ranking_only": {5: (1.10, 0.42, 0.70), 10: (1.08, 0.43, 0.70)},
    })  # fmt: skip
    rec = select_served(rows, ["rating_only", "balanced", "ranking_only"])
    assert rec["name"] == "balanced"
    assert rec["ranks"]["rating_only"]["k5/rating/rmse"] == 1.0
    assert rec["mean_rank"]["balanced"] == pytest.approx((2 + 2 + 1 + 1 + 2 + 2) / 6)
    assert rec["cold_valid"]["balanced"]["k10"]["ranking/hr@10"] == 0.81
    # a method that cannot rank is last on the ranking measures
    rows = _rows({"a": {5: (0.9, None, None)}, "b": {5: (1.0, 0.3, 0.6)}})
    assert select_served(rows, ["a", "b"])["name"] == "b"


def test_ties_share_the_mean_rank_and_break_on_rmse():
    rows = _rows({"a": {5: (0.9, 0.3, 0.6)}, "b": {5: (1.0, 0.3, 0.7)}, "c": {5: (1.1, 0.2, 0.5)}})
    rec = select_served(rows, ["a", "b", "c"])
    assert rec["ranks"]["a"]["k5/ranking/ndcg@10"] == rec["ranks"]["b"]["k5/ranking/ndcg@10"] == 1.5
    assert rec["name"] == "a"  # a and b tie at 5 / 3; a has the lower RMSE rank


def test_the_choice_reads_the_cold_validation_users_only(synthetic_run):
    from meta.choose import choose_served
    from meta.data import load_cold_data
    from meta.demographic import DemographicState
    from pipelines.coldstart import load_learners
    from recsys_mtl.config import RunConfig

    run_dir, summary = synthetic_run
    cfg = RunConfig.model_validate(json.loads((run_dir / "config.resolved.json").read_text()))
    run = load_run(run_dir)
    learners = load_learners(run_dir / "meta_train", cfg, run)
    dem_dir = run_dir / "meta_train" / "demographic_ridge"
    dem = DemographicState.load(dem_dir) if DemographicState.saved(dem_dir) else None
    trained = json.loads((run_dir / "meta_train" / "learners.json").read_text())
    choice = (trained["fold_in"]["steps"], trained["fold_in"]["lr"])

    def chosen(flip_role: str | None) -> dict:
        data = load_cold_data(run_dir / "features", run_dir / "split", cfg.meta)
        if flip_role is not None:  # every rating of that role's users mirrored on the scale
            role = data.roles.filter(pl.col("role") == flip_role).select("uidx")
            flip = pl.col("uidx").is_in(role["uidx"].implode())
            data.ratings = data.ratings.with_columns(
                pl.when(flip).then(6.0 - pl.col("rating")).otherwise(pl.col("rating"))
                .alias("rating")
            )  # fmt: skip
        return choose_served(run.model, data, learners, run.tasks, "interaction", dem, choice)

    torch.manual_seed(0)
    before = chosen(None)
    saved = json.loads((run_dir / "coldstart" / "served.json").read_text())
    assert before["name"] == saved["name"] and before["cold_valid"] == saved["cold_valid"]
    assert chosen("test") == before  # the held-out users' ratings are never read
    assert chosen("cold_valid")["cold_valid"] != before["cold_valid"]
    # not eligible: the closed form (no user state for the run's model) and the MAE point rules
    assert "closed_form" not in before["eligible"] and "ridge" not in before["eligible"]
    assert {"ranker_ridge", "fold_in", "population", "maml", "metric"} <= set(before["eligible"])
    assert {"maml_shrunk0.5", "state_mean", "state_mean_shrunk0.5"} <= set(before["eligible"])
    assert {"maml_split0.5", "maml_split0.25", "state_mean_split0.5"} <= set(before["eligible"])
    served = summary["coldstart"]["served"]
    assert {v["method"] for v in served.values()} == {before["name"]}


def test_a_state_mean_serves_one_state_through_the_run_model(synthetic_run):
    run_dir, _ = synthetic_run
    run = load_run(run_dir)
    items = run.item_ids.to_list()
    support = pl.DataFrame({"user_id": ["x", "x", "y"], "item_id": items[:3],
                            "rating": [5.0, 2.0, 4.0]})  # fmt: skip
    users = adapt_users(run, support, learner_dir=run_dir / "meta_train" / "state_mean")
    assert users.learner == "state_mean" and users.state["user"].shape[0] == 2
    batch = {"item": torch.tensor([0, 1]), "day": torch.tensor([0, 0]),
             "time_bin": torch.tensor([0, 0])}  # fmt: skip
    out = run.model.score(users.state, batch)
    assert torch.isfinite(out["rating"]).all()


def test_the_bundle_carries_the_served_method(synthetic_run, tmp_path):
    from recsys_mtl.runs.bundle import export_bundle, load_bundle

    run_dir, _ = synthetic_run
    bundle = export_bundle(run_dir, tmp_path / "bundle")
    record = json.loads((bundle / "coldstart" / "served.json").read_text())
    if record.get("learner_dir"):
        assert (bundle / record["learner_dir"] / "learner.json").is_file()
    run, packed = load_run(run_dir), load_bundle(bundle)
    items = run.item_ids.to_list()
    support = pl.DataFrame({"user_id": ["x", "x"], "item_id": items[:2], "rating": [5.0, 2.0]})
    a, b = adapt_users(run, support), adapt_users(packed, support)
    assert a.learner == b.learner == record["name"]
    for name, value in a.state.items():
        torch.testing.assert_close(value, b.state[name])


@pytest.mark.parametrize("label", ["served", "demographic_ridge", "item_bias_group"])
def test_a_learner_may_not_take_a_name_of_the_report(label):
    from pipelines.coldstart import validate_meta
    from recsys_mtl.config import RunConfig
    from recsys_mtl.errors import UserError

    cfg = RunConfig.model_validate({
        "name": "t", "data": {"format": "synthetic"}, "tasks": ["rating"],
        "meta": {"learners": [{"name": "maml", "label": label}]},
    })  # fmt: skip
    with pytest.raises(UserError, match=f"label: '{label}'"):
        validate_meta(cfg)


def test_a_split_variant_is_ranked_by_the_shrunk_state_and_rated_by_the_adapted(synthetic_run,
                                                                                tmp_path):  # fmt: skip
    import shutil

    from pipelines.commands.score import score_command

    run_dir, _ = synthetic_run
    served = {}
    for kind in ("split", "shrunk", "adapted"):  # the same run serving each of maml's forms
        served[kind] = tmp_path / kind
        shutil.copytree(run_dir, served[kind])
        path = served[kind] / "coldstart" / "served.json"
        record = json.loads(path.read_text())
        record.update(name=f"maml_{kind}0.5", kind="learner", learner="maml",
                      learner_dir="meta_train/maml", shrink=0.5, split=kind == "split")  # fmt: skip
        if kind == "adapted":
            record.pop("shrink")
        path.write_text(json.dumps(record))
    run = load_run(served["split"])
    items = run.item_ids.to_list()
    support = pl.DataFrame({"user_id": [9001, 9001, 9001, 9002, 9002], "item_id": items[:5],
                            "rating": [5.0, 2.0, 4.0, 1.0, 5.0]})  # fmt: skip
    split = adapt_users(run, support)
    shrunk = adapt_users(load_run(served["shrunk"]), support)
    adapted = adapt_users(load_run(served["adapted"]), support)
    assert split.rank_state is not None and shrunk.rank_state is None
    for name, value in split.state.items():  # rated by the adapted state, ranked by the shrunk
        torch.testing.assert_close(value, adapted.state[name])
        torch.testing.assert_close(split.rank_state[name], shrunk.state[name])
    assert not torch.equal(split.state["user"], split.rank_state["user"])
    csv = tmp_path / "support.csv"
    support.rename({"user_id": "user", "item_id": "item"}).write_csv(csv)
    out = {}
    for kind, folder in served.items():
        score_command(str(folder), 10, str(tmp_path / f"{kind}.parquet"), support=str(csv))
        out[kind] = pl.read_parquet(tmp_path / f"{kind}.parquet").filter(
            pl.col("served_by") == "cold_start").sort("user_id", "rank")  # fmt: skip
    assert out["split"]["item_id"].to_list() == out["shrunk"]["item_id"].to_list()
    assert out["split"]["score"].to_list() == out["shrunk"]["score"].to_list()
    # each listed item's predicted rating: the adapted state's
    for user in (9001, 9002):
        row = out["split"].filter(pl.col("user_id") == user)
        at = torch.tensor(run.item_index(row["item_id"])[0].tolist())
        one = {n: v[[split.user_ids.index(user)]].expand(at.numel(), *v.shape[1:])
               for n, v in split.state.items()}  # fmt: skip
        batch = {"item": at, "day": torch.full_like(at, run.reference["day"]),
                 "time_bin": torch.full_like(at, run.reference["time_bin"])}  # fmt: skip
        with torch.no_grad():
            want = run.model.score(one, batch)["rating"]
        got = torch.from_numpy(row["score_rating"].to_numpy().copy())
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


def test_a_bundle_is_not_written_without_the_served_neighbour_table(synthetic_run, tmp_path):
    import shutil

    from recsys_mtl.runs.bundle import export_bundle

    run_dir = tmp_path / "run"
    shutil.copytree(synthetic_run[0], run_dir)
    served = run_dir / "coldstart" / "served.json"
    record = json.loads(served.read_text())
    served.write_text(json.dumps({**record, "cooc": {"file": "gone.pt", "weight": 1.0}}))
    with pytest.raises(FileNotFoundError, match="neighbour table is missing"):
        export_bundle(run_dir, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()  # nothing that looks like a bundle
