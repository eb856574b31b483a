"""``recsys-mtl run`` with a ``meta:`` section: the cold-start stages, caching, the table,
adapt_users through a trained learner, and config errors as one line with exit code 2."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from meta.adapt import adapt_users
from meta.choose import COOC, SPLIT, SUFFIX
from pipelines.cli import run_command
from recsys_mtl.runs.load import load_run
from tests.conftest import tiny_config

VARIANTS = (SUFFIX, SPLIT, COOC)  # a served variant's name: its learner's and one of these
SYN = {"format": "synthetic", "synthetic": {"users": 80, "items": 60, "ratings": 3000}}
META = {
    "ks": [3, 5], "epochs": 2, "batch_users": 16, "max_query": 16, "fold_in_steps": [0, 2], "fold_in_lrs": [0.01],
    "learners": [
        {"name": "maml", "params": {"steps": 2}},
        {"name": "metric", "params": {"hidden": 8}},
        {"name": "fomaml", "label": "melu_fomaml", "base": "melu", "params": {"adapt": ["dense"], "steps": 1, "start": "zero"}},
        {"name": "ridge", "label": "closed_form"},
        {"name": "matching", "params": {"hidden": 4}},
        {"name": "ensemble", "label": "blend", "params": {"members": ["closed_form", "matching", "maml"], "grid": 4}},
        {"name": "ensemble", "label": "blend_median", "params": {"members": ["closed_form", "matching"], "grid": 2, "rating_map": "median", "head_epochs": 2}},
    ],
}  # fmt: skip


LEARNERS = {"maml", "metric", "melu_fomaml", "closed_form", "matching", "blend", "blend_median"}


def _config(base: Path, tracking: bool = False, **meta) -> Path:
    cfg = tiny_config(
        base, SYN, model={"name": "bellkor", "params": {"dim": 4}},
        tasks=["rating", "interaction", "like"],
        train={"epochs": 2, "patience": None, "batch_size": 256, "lr": 0.01},
        meta={**META, **meta},
    )  # fmt: skip
    if tracking:
        doc = yaml.safe_load(cfg.read_text())
        doc["tracking"] = {"enabled": True, "experiment": "cold"}
        cfg.write_text(yaml.safe_dump(doc))
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("coldpipe")
    cfg = _config(base, tracking=True)
    with contextlib.chdir(base):
        summary = run_command(str(cfg), [], str(base / "run"), False)
        again = run_command(str(cfg), [], str(base / "run"), False)
    return base, summary, again


def test_the_pipeline_writes_the_per_k_table_for_every_floor_and_learner(finished):
    base, summary, _ = finished
    assert list(summary["stages"]) == [
        "ingest",
        "features",
        "split",
        "train",
        "meta_train",
        "coldstart",
    ]
    table = summary["coldstart"]
    floors = {
        "global_mean",
        "item_bias",
        "support_mean",
        "ridge",
        "ridge_steps",
        "ridge_median",
        "population",
        "ranker_ridge",
        "fold_in",
    }
    served = {v["method"] for v in table["served"].values()}  # may be a shrunk or split variant
    extra = {"item_bias_group", "demographic_ridge", "served"}
    assert floors | LEARNERS | extra == set(table) - {
        n for n in served if any(v in n for v in VARIANTS)
    }
    for name, row in table.items():
        if name in ("served", "item_bias_group"):
            continue
        assert set(row) - {"k0"} == {"k3", "k5"}
        assert 0 < row["k3"]["rating/mae"] < 4
    assert set(table["item_bias_group"]) == {"k0"}
    assert set(table["served"]) == {"k3", "k5"}
    assert "adapt/loop_ms_per_user" in table["maml"]["k3"] and "meta/seconds" in table["maml"]["k5"]
    assert summary["metrics"]["coldstart/ridge/k5/rating/mae"] == table["ridge"]["k5"]["rating/mae"]
    doc = json.loads((base / "run" / "coldstart" / "coldstart.json").read_text())
    assert {r["labels"]["kind"] for r in doc["rows"]} == {"floor", "learner"}
    assert (base / "run" / "coldstart" / "mae_vs_k.png").stat().st_size > 1000


def test_the_printed_report_is_the_per_k_table_of_every_learner_and_the_best_floors(finished):
    from pipelines.report import run_report

    _, summary, _ = finished
    text = run_report(summary)
    table = summary["coldstart"]
    floors = [n for n in table if n in {"global_mean", "item_bias", "support_mean", "ridge",
                                        "ridge_steps", "ridge_median", "population", "ranker_ridge",
                                        "fold_in"}]  # fmt: skip
    for k in ("k3", "k5"):
        block = text.split(f"K = {k[1:]} ")[1].split("\n\n")[0]
        names = {line.split()[0] for line in block.splitlines()[3:] if line[:1].isalnum()}
        shown = {n for n in names if n in table}
        by_mae = min(floors, key=lambda n: table[n][k]["rating/mae"])
        ranks = [n for n in floors if table[n][k].get("ranking/ndcg@10") is not None]
        by_ndcg = max(ranks, key=lambda n: table[n][k]["ranking/ndcg@10"])
        served = {v["method"] for v in table["served"].values()
                  if any(s in v["method"] for s in VARIANTS)}  # fmt: skip
        assert shown == {*LEARNERS, *served, "demographic_ridge", by_mae, by_ndcg}
        assert "best learner" in block and "best floor" in block
    assert "coldstart/" not in text  # not the ~100 flat metrics
    assert "new users are served " in text
    assert len(text.splitlines()) < 50


def test_the_ridge_learner_records_its_cold_validation_ranking_choice(finished):
    base, _, _ = finished
    doc = json.loads((base / "run" / "meta_train" / "learners.json").read_text())
    choice = doc["learners"]["closed_form"]["cold_valid_choice"]
    assert set(choice) == {"rating", "interaction", "like", "liked"}
    state = torch.load(base / "run" / "meta_train" / "closed_form" / "learner.pt",
                       weights_only=True)  # fmt: skip
    options = ["rating", "interaction", "like", "liked"]
    assert choice[options[int(state["rank_choice"])]] == max(choice.values())


def test_meta_training_curves_the_table_and_the_plot_land_in_mlflow(finished):
    from mlflow import MlflowClient

    _, summary, _ = finished
    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    run_id = summary["mlflow"]["run_id"]
    curve = client.get_metric_history(run_id, "maml/meta/loss")
    assert [m.step for m in curve] == [0, 1]
    assert client.get_metric_history(run_id, "metric/cold_valid/rating/mae")
    metrics = client.get_run(run_id).data.metrics
    assert metrics["coldstart/ridge/k5/rating/mae"] == pytest.approx(
        summary["coldstart"]["ridge"]["k5"]["rating/mae"]
    )
    artifacts = {a.path for a in client.list_artifacts(run_id, "coldstart")}
    assert {"coldstart/mae_vs_k.png", "coldstart/coldstart.json"} <= artifacts


def test_a_rerun_skips_every_stage(finished):
    _, summary, again = finished
    assert all(s["skipped"] for s in again["stages"].values())
    assert again["coldstart"] == summary["coldstart"]


def test_adapt_users_adapts_through_a_learner_trained_in_the_run(finished):
    base, _, _ = finished
    run = load_run(base / "run")
    items = run.item_ids.to_list()
    support = pl.DataFrame(
        {"user_id": ["x", "x", "y"], "item_id": items[:3], "rating": [5.0, 1.0, 4.0]}
    )
    learned = adapt_users(run, support, learner_dir=base / "run" / "meta_train" / "metric")
    served = adapt_users(run, support)  # the method the run serves (coldstart/served.json)
    doc = json.loads((base / "run" / "coldstart" / "served.json").read_text())
    assert learned.learner == "metric" and served.learner == doc["name"]
    assert set(learned.state) == set(served.state)
    if doc.get("split") and doc["learner"] == "metric":  # rated by metric's state, ranked by
        torch.testing.assert_close(learned.state["user"], served.state["user"])  # another
        # shrunk by 1, a cooc variant ranks by the state itself (plus its evidence)
        unshrunk = doc.get("shrink") == 1
        assert torch.allclose(learned.state["user"], served.rank_state["user"]) == unshrunk
    elif doc["name"] != "metric":
        assert not torch.allclose(learned.state["user"], served.state["user"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adapt_users_on_a_cuda_run_gives_the_cpu_states_on_the_device(finished):
    base, _, _ = finished

    def support_of(run) -> pl.DataFrame:
        items = run.item_ids.to_list()[:3]
        return pl.DataFrame(
            {"user_id": ["x", "x", "y"], "item_id": items, "rating": [5.0, 1.0, 4.0]}
        )

    for learner_dir in (base / "run" / "meta_train" / "maml", None):
        cpu_run, gpu_run = load_run(base / "run"), load_run(base / "run", device="cuda")
        cpu = adapt_users(cpu_run, support_of(cpu_run), learner_dir=learner_dir)
        gpu = adapt_users(gpu_run, support_of(gpu_run), learner_dir=learner_dir)
        assert gpu.learner == cpu.learner and set(gpu.state) == set(cpu.state)
        for name, value in gpu.state.items():
            assert value.device.type == "cuda", name
            torch.testing.assert_close(value.cpu(), cpu.state[name], atol=1e-4, rtol=1e-4)


def test_melu_and_ridge_learners_are_refused_by_adapt_users_with_a_reason(finished):
    from recsys_mtl.errors import UserError

    base, _, _ = finished
    run = load_run(base / "run")
    support = pl.DataFrame(
        {"user_id": ["x"], "item_id": run.item_ids.to_list()[:1], "rating": [5.0]}
    )
    with pytest.raises(UserError, match="melu"):
        adapt_users(run, support, learner_dir=base / "run" / "meta_train" / "melu_fomaml")
    with pytest.raises(UserError, match="its own item table"):
        adapt_users(run, support, learner_dir=base / "run" / "meta_train" / "closed_form")
    with pytest.raises(UserError, match="its own item table, biases and support attention"):
        adapt_users(run, support, learner_dir=base / "run" / "meta_train" / "matching")
    with pytest.raises(UserError, match="'blend' is an ensemble"):
        adapt_users(run, support, learner_dir=base / "run" / "meta_train" / "blend")


def test_the_ensemble_is_fitted_on_cold_validation_and_reported_beside_its_members(finished):
    base, summary, _ = finished
    doc = json.loads((base / "run" / "meta_train" / "learners.json").read_text())
    fit = doc["learners"]["blend"]["cold_valid_choice"]
    assert list(fit["rating_weights"]) == ["intercept", "closed_form", "matching", "maml"]
    rank = list(fit["rank_weights"].values())
    assert abs(sum(rank) - 1.0) < 1e-6 and all(4 * v == round(4 * v) for v in rank)
    table = summary["coldstart"]
    for k in ("k3", "k5"):
        m = table["blend"][k]
        assert 0 < m["rating/mae"] < 4 and 0 <= m["ranking/ndcg@10"] <= 1
        # its own combination, not a copy of a member's predictions
        assert all(m["rating/mae"] != table[x][k]["rating/mae"] for x in ("closed_form", "maml"))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (
            {"learners": [{"name": "mamll"}]},
            "meta.learners.0.name: unknown meta-learner 'mamll'; known: blackbox, ensemble, fomaml",
        ),
        ({"learners": [{"name": "maml", "params": {"steps": 0}}]}, "meta.learners.0.params.steps"),
        (
            {"learners": [{"name": "maml", "params": {"adapt": ["legs"]}}]},
            "unknown group(s) ['legs']",
        ),
        (
            {"learners": [{"name": "maml"}, {"name": "maml"}]},
            "meta.learners.1.label: 'maml' is used twice",
        ),
        (
            {"learners": [{"name": "ridge"}]},
            "meta.learners.0.label: 'ridge' is the name of a floor in the report",
        ),
        (
            {"learners": [{"name": "ridge", "label": "cf", "params": {"features": ["genre"]}}]},
            "meta.learners.0.params.features",
        ),
        (
            {"learners": [{"name": "ridge", "label": "cf", "params": {"rank_by": "clicks"}}]},
            "meta.learners.0.params.rank_by",
        ),
        (
            {
                "learners": [
                    {"name": "ridge", "label": "cf"},
                    {"name": "ensemble", "params": {"members": ["cf", "maml"]}},
                ]
            },
            "meta.learners.1.params.members: ['maml'] are not labels of learners listed before",
        ),
        (
            {"learners": [{"name": "ensemble", "params": {"members": ["a", "b"], "wait": 1}}]},
            "meta.learners.0.params.wait: unknown key (ensemble)",
        ),
        ({"holdout": 1.5}, "meta.holdout"),
        ({"ks": [5, 5]}, "ks repeat a value"),
        ({"shots": 3}, "meta.shots: unknown key"),
    ],
)
def test_config_errors_exit_2_with_one_line(tmp_path, cli, meta, message):
    doc = yaml.safe_load(_config(tmp_path).read_text())
    doc["meta"] = {**doc["meta"], **meta}
    if "learners" not in meta:
        doc["meta"]["learners"] = []
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = cli("run", tmp_path / "bad.yaml", "--out", tmp_path / "run")
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_median_rule_on_ratings_of_many_values_exits_2_with_one_line(tmp_path, cli):
    import numpy as np

    rng = np.random.default_rng(0)
    n_users, n_items, n = 60, 50, 2400
    pairs = rng.choice(n_users * n_items, size=n, replace=False)
    stars = np.round(1 + 4 * rng.random(n), 2)  # hundredths: hundreds of distinct values
    ts = 1_000_000_000 + rng.integers(0, 400 * 86_400, n)
    lines = ["user,item,stars,when"] + [
        f"u{p // n_items},{p % n_items},{r},{t}" for p, r, t in zip(pairs, stars, ts, strict=True)
    ]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    doc = yaml.safe_load(_config(tmp_path).read_text())
    doc["data"] = {"format": "csv", "path": str(tmp_path / "log.csv"),
                   "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"}}  # fmt: skip
    doc["meta"]["learners"] = [
        {"name": "ridge", "label": "a"},
        {"name": "ridge", "label": "b", "params": {"shrinkage": 2.0}},
        {"name": "ensemble", "params": {"members": ["a", "b"], "rating_map": "median"}},
    ]
    (tmp_path / "median.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = cli("run", tmp_path / "median.yaml", "--out", tmp_path / "run")
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    prefix = ("recsys-mtl: error: meta.learners.2.params.rating_map (ensemble): the median "
              "rule needs ratings on at most 20 values; the training ratings take ")  # fmt: skip
    assert last.startswith(prefix) and int(last[len(prefix) :]) > 20, err
    assert "Traceback" not in err and sum("error" in line for line in err.splitlines()) == 1
    assert not (tmp_path / "run" / "meta_train" / "learners.json").exists()
