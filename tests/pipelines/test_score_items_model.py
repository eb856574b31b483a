"""``recsys-mtl score models:/NAME/VERSION --items-meta FILE`` on the real MovieLens-100K
(skipped when absent): a registered model serves new items as its run folder does, score for
score; a model logged before models carried what new items need exits 2 in one line saying how
to log it again, and registering its run again does. One tracked run (SQLite store) per module."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.cli import run_command
from recsys_mtl.runs.bundle import BUNDLE_FORMAT

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "coldstart-ml100k.yaml"
OLD_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "pyfunc-0.1.0-layout1"
SETS = ["tracking.enabled=true", "tracking.experiment=items", "train.epochs=3",
        "model.params.dim=8", "meta.learners=[]", "meta.ks=[5]", "meta.fold_in_steps=[0]",
        "meta.fold_in_lrs=[0.01]", "meta.holdout=0.1", "meta.cold_valid=0.05",
        "meta.new_items=0.1", "meta.item_ks=[5]"]  # fmt: skip
NEW_ID = 99_001  # an item the log has never had
NEW_USER = 99_002  # a user the log has never had


@pytest.fixture(scope="module")
def tracked(ml100k, tmp_path_factory) -> tuple[Path, str, dict]:
    """The run folder, its store's URI and its model registered as ``recs`` version 1."""
    base = tmp_path_factory.mktemp("items-model")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp, contextlib.chdir(base):
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        # new users' new items ranked by a support rule (the run's choice, else one put into
        # its served record as it is written, before the model is logged), which reads the
        # raters' offsets the model carries
        from meta import items_serve

        chosen = items_serve.new_item_rules

        def support_rule(doc: dict) -> dict | None:
            rules = chosen(doc)
            if rules and not rules["cold_start"].startswith("support+"):
                rules = {**rules, "cold_start": "support+0.25user",
                         "demographics_only": rules["cold_start"]}  # fmt: skip
            return rules

        mp.setattr(items_serve, "new_item_rules", support_rule)
        run_command(str(CONFIG), [f"data.path={ml100k}", *SETS], str(base / "run"), False)
        from recsys_mtl.tracking.model import register

        version = register(base / "run", "recs")
    return base / "run", uri, version


@pytest.fixture
def store(tracked, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked[1])
    import mlflow

    mlflow.set_tracking_uri(tracked[1])  # an earlier test may have set MLflow's global URI
    return tracked[1]


def _item_files(run_dir: Path, tmp_path: Path) -> tuple[Path, Path, list]:
    """Items meta of six held-out items and a brand-new one, and support (the first 10 ratings
    of four of them by training users)."""
    ratings = pl.read_parquet(run_dir / "features" / "interactions.parquet").filter(
        pl.col("interaction") == 1
    )
    items = pl.read_parquet(run_dir / "split" / "items.parquet")
    users = pl.read_parquet(run_dir / "split" / "users.parquet")
    feats = pl.read_parquet(run_dir / "features" / "item_features.parquet")
    names = json.loads((run_dir / "features" / "spec.json").read_text())["features"]["genres"]
    held = items.filter(pl.col("role") == "test")["iidx"].implode()
    train_u = users.filter(pl.col("role") == "train")["uidx"].implode()
    r = ratings.filter(pl.col("uidx").is_in(train_u) & pl.col("iidx").is_in(held))
    pick = r.group_by("iidx").len().filter(pl.col("len") >= 10).sort("iidx")["iidx"].head(6)
    meta = feats.filter(pl.col("iidx").is_in(pick.implode())).select(
        "item_id",
        pl.col("genres").list.eval(pl.element().replace_strict(
            list(range(len(names["values"]))), names["values"])).list.join("|").alias("genres"),
        "year",
    )  # fmt: skip
    new = pl.DataFrame({"item_id": [NEW_ID], "genres": ["Comedy|Drama"], "year": [1998]})
    meta = pl.concat([meta, new.cast(meta.schema)])
    meta.write_csv(tmp_path / "items.csv")
    first = (r.filter(pl.col("iidx").is_in(pick.head(4).implode())).sort("iidx", "ts", "row")
             .group_by("iidx", maintain_order=True).head(10))  # fmt: skip
    uid = pl.read_parquet(run_dir / "features" / "user_features.parquet").select("uidx", "user_id")
    sup = first.join(uid, on="uidx").join(feats.select("iidx", "item_id"), on="iidx")
    sup = sup.select(user="user_id", item="item_id", rating="rating")
    # a new user (an id the log lacks): a held-out user's first 5 ratings of old items
    old = items.filter(pl.col("role") == "old")["iidx"].implode()
    held_u = users.filter(pl.col("role") == "test")["uidx"].head(1).implode()
    mine = (ratings.filter(pl.col("uidx").is_in(held_u) & pl.col("iidx").is_in(old))
            .sort("ts", "row").head(5).join(feats.select("iidx", "item_id"), on="iidx"))  # fmt: skip
    mine = mine.select(user=pl.lit(NEW_USER), item="item_id", rating="rating")
    pl.concat([sup, mine.cast(sup.schema)]).write_csv(tmp_path / "support.csv")
    return tmp_path / "items.csv", tmp_path / "support.csv", meta["item_id"].to_list()


def _score(cli, source, out: Path, items: Path, support: Path) -> dict:
    code, stdout, err = cli("score", source, "--top-k", 50, "--out", out, "--items-meta", items,
                            "--support", support)  # fmt: skip
    assert code == 0, err
    return json.loads(stdout)


def test_a_registered_model_serves_new_items_as_its_run_folder_does(tracked, store, cli,
                                                                    tmp_path):  # fmt: skip
    run_dir, _, version = tracked
    items, support, ids = _item_files(run_dir, tmp_path)
    got = _score(cli, version["model_uri"], tmp_path / "model.parquet", items, support)
    want = _score(cli, run_dir, tmp_path / "run.parquet", items, support)
    assert got["new_items"] == want["new_items"] == len(ids) == 7
    # the model carries the run's choice of what ranks new items (its served record), a new
    # user's support rule with the raters' offsets it reads
    assert got["new_items_rank_by"] == want["new_items_rank_by"] != "blend"
    assert got["new_items_rank_by"]["cold_start"].startswith("support+")
    assert got["served_by"]["cold_start"] == 1
    model = pl.read_parquet(tmp_path / "model.parquet")
    assert_frame_equal(model, pl.read_parquet(tmp_path / "run.parquet"))
    assert model.filter(pl.col("item_id").is_in(ids)).height > 0  # new items are recommended
    # every item's score, new ones included, for a few users: the whole grown catalog
    users = tmp_path / "users.txt"
    some = [*model["user_id"].unique().sort().head(8).to_list(), NEW_USER]
    users.write_text("\n".join(str(u) for u in some) + "\n")
    for source, name in ((version["model_uri"], "model-all"), (run_dir, "run-all")):
        out = tmp_path / f"{name}.parquet"
        code, _, err = cli("score", source, "--top-k", 5000, "--out", out, "--items-meta", items,
                           "--support", support, "--users", users)  # fmt: skip
        assert code == 0, err
    every = pl.read_parquet(tmp_path / "model-all.parquet")
    assert_frame_equal(every, pl.read_parquet(tmp_path / "run-all.parquet"))
    assert NEW_ID in every["item_id"].to_list()
    meta = pl.read_parquet_metadata(tmp_path / "model.parquet")
    assert meta["recsys_mtl.model_version"] == "recs/1"


def test_the_model_carries_no_training_ratings_and_nothing_pickled(tracked, store, tmp_path):
    import mlflow
    import torch

    from recsys_mtl.io import load_tensors

    local = Path(mlflow.artifacts.download_artifacts(tracked[2]["source"], dst_path=str(tmp_path)))
    bundle = local / "artifacts" / "bundle"
    assert (bundle / "features" / "spec.json").is_file()
    assert (bundle / "coldstart" / "item_side.json").is_file()
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".parquet",) and p.stem not in ("users", "items")]
    assert (bundle / "coldstart" / "item_side.pt").stat().st_size < 200_000
    side = load_tensors(bundle / "coldstart" / "item_side.pt")  # weights_only: nothing runs
    assert side["trained"].dtype == torch.bool and side["weights"]
    # the raters' offsets: aggregates, one float per user (no rating, no item)
    offsets = load_tensors(bundle / "coldstart" / "rater_offsets.pt")
    assert set(offsets) == {"mu", "user", "shrinkage"} and offsets["mu"].dim() == 0
    n_users = pl.read_parquet(bundle / "users.parquet").height
    assert offsets["user"].shape == (n_users,) and offsets["user"].dtype == torch.float64


def test_a_model_logged_before_new_items_exits_2_saying_how_to_log_it_again(cli, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,genres,year\n5001,Comedy,1998\n")
    code, _, err = cli("score", OLD_MODEL, "--top-k", 5, "--out", tmp_path / "o.parquet",
                       "--items-meta", items)  # fmt: skip
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("recsys-mtl: error: --items-meta: "), err
    for needle in ("features/spec.json", "coldstart/item_side.pt", "recsys-mtl register"):
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "o.parquet").exists()


def test_registering_a_run_whose_model_predates_the_format_logs_it_afresh(tracked, store, cli,
                                                                          tmp_path):  # fmt: skip
    from mlflow import MlflowClient

    run_dir, uri, first = tracked
    model_id = first["source"].removeprefix("models:/")
    client = MlflowClient(tracking_uri=uri)
    client.set_logged_model_tags(model_id, {"bundle_format": "1"})  # as a model logged before
    try:
        code, stdout, err = cli("register", run_dir, "--name", "recs")
        assert code == 0, err
        again = json.loads(stdout)
        assert again["source"] != first["source"]
        tags = client.get_logged_model(again["source"].removeprefix("models:/")).tags
        assert tags["bundle_format"] == str(BUNDLE_FORMAT)
    finally:
        client.set_logged_model_tags(model_id, {"bundle_format": str(BUNDLE_FORMAT)})
    code, stdout, err = cli("register", run_dir, "--name", "recs")  # a current model is reused
    assert code == 0 and json.loads(stdout)["source"] == first["source"], err
