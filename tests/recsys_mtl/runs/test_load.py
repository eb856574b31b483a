"""load_run: a finished run directory back as a usable ranker, its id maps, seen items and "now"."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from torch.testing import assert_close

from pipelines.cli import run_command
from recsys_mtl.errors import UserError
from recsys_mtl.models import RANKERS, load_context
from recsys_mtl.runs.load import load_run
from recsys_mtl.train.data import load_part
from tests.conftest import sparse_id_log, tiny_config

TASKS = ["rating", "interaction"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("load_run")
    data = {
        "format": "csv",
        "path": str(sparse_id_log(base / "log.csv")),
        "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"},
    }
    cfg = tiny_config(
        base,
        data,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=TASKS,
        train={"epochs": 3, "patience": 1, "refit": True, "batch_size": 256, "lr": 0.01},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
    )
    with contextlib.chdir(base):  # nothing of the run lands in the checkout
        run_command(str(cfg), [], str(base / "run"), False)
    return base / "run"


def _by_hand(run: Path, weights: str):
    import json

    meta = json.loads((run / "train" / "model.json").read_text())
    cls = RANKERS.get(meta["name"])
    model = cls(
        cls.config_class(**meta["params"]), load_context(run / "features", run / "split"), TASKS
    )
    model.load_state_dict(torch.load(run / "train" / weights, weights_only=True))
    return model.eval()


def _outputs(model, batch):
    with torch.no_grad():
        return {t: v for t, v in model(batch).items() if not t.startswith("_")}


def test_the_loaded_model_gives_the_outputs_of_a_model_built_and_loaded_by_hand(run_dir):
    run = load_run(run_dir)
    batch = load_part(run_dir / "split" / "test.parquet", TASKS)
    assert not run.model.training and run.tasks == TASKS
    assert_close(_outputs(run.model, batch), _outputs(_by_hand(run_dir, "model.pt"), batch))


def test_after_a_refit_the_selected_model_is_the_one_saved_before_it(run_dir):
    run = load_run(run_dir)
    batch = load_part(run_dir / "split" / "valid.parquet", TASKS)
    selected = _outputs(run.selected, batch)
    assert_close(selected, _outputs(_by_hand(run_dir, "selected.pt"), batch))
    assert not torch.allclose(selected["rating"], _outputs(run.model, batch)["rating"])


def test_user_and_item_index_map_raw_ids_to_their_feature_table_indices(run_dir):
    run = load_run(run_dir)
    users = pl.read_parquet(run_dir / "features" / "user_features.parquet").sample(
        fraction=1.0, shuffle=True, seed=1
    )
    index, known = run.user_index(users["user_id"])
    assert torch.equal(index, torch.tensor(users["uidx"].to_list()))
    assert bool(known.all())
    items = pl.read_parquet(run_dir / "features" / "item_features.parquet").reverse()
    index, known = run.item_index(items["item_id"].to_list())
    assert torch.equal(index, torch.tensor(items["iidx"].to_list()))
    assert bool(known.all())


def test_unknown_raw_ids_get_index_minus_one_and_are_not_known(run_dir):
    run = load_run(run_dir)
    first_user = pl.read_parquet(run_dir / "features" / "user_features.parquet")["user_id"][0]
    index, known = run.user_index(["nobody", first_user, "user-999"])
    assert index.tolist() == [-1, 0, -1] and known.tolist() == [False, True, False]
    index, known = run.item_index([123456789])
    assert index.tolist() == [-1] and known.tolist() == [False]
    index, known = run.item_index(["not-a-number"])  # integer item ids: a string casts to null
    assert index.tolist() == [-1] and known.tolist() == [False]


def test_seen_holds_every_rated_item_of_every_user_in_the_log(run_dir):
    run = load_run(run_dir)
    pos = pl.read_parquet(run_dir / "features" / "interactions.parquet").filter(
        pl.col("interaction") == 1
    )
    offsets, values = run.seen
    assert offsets.numel() == run.ctx.n_users + 1 and values.numel() == pos.height
    rated = pos.group_by("uidx").agg(pl.col("iidx"))
    wanted = dict(zip(rated["uidx"].to_list(), rated["iidx"].to_list(), strict=True))
    for u in range(run.ctx.n_users):
        got = sorted(values[offsets[u] : offsets[u + 1]].tolist())
        assert got == sorted(wanted.get(u, [])), u


def test_the_reference_time_is_the_last_rating_of_the_log(run_dir):
    run = load_run(run_dir)
    pos = pl.read_parquet(run_dir / "features" / "interactions.parquet").filter(
        pl.col("interaction") == 1
    )
    assert run.reference == {
        "ts": pos["ts"].max(),
        "day": pos["day"].max(),
        "time_bin": pos["time_bin"].max(),
    }


@pytest.mark.parametrize(
    ("missing", "folder"),
    [
        ("features/spec.json", "features"),
        ("split/train.parquet", "split"),
        ("train/model.pt", "train"),
        ("train/model.json", "train"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_a_user_error_naming_the_missing_file(
    run_dir, tmp_path, missing, folder
):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / missing).unlink()
    name = Path(missing).name
    with pytest.raises(UserError, match=rf"not a finished run \({name} missing in {folder}/\)"):
        load_run(broken)


def test_an_empty_folder_is_not_a_finished_run(tmp_path):
    with pytest.raises(UserError, match=r"not a finished run \(spec.json missing in features/\)"):
        load_run(tmp_path)
