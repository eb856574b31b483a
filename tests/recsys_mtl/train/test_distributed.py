"""Training under torchrun: real 2-process gloo jobs (``elastic_launch``, a file-store
rendezvous: no port is shared between test workers), and the one-line refusals."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import torch

from recsys_mtl.config import RunConfig
from recsys_mtl.config.train import DistributedConfig
from recsys_mtl.errors import UserError
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.weighting import WEIGHTINGS

pytest.importorskip("torchrec")

CTX = FeatureContext.synthetic(n_users=40, n_items=50, seed=1)
TASKS = ["rating", "interaction"]


def _launch(tmp: Path, nproc: int, fn, *args) -> dict[int, object]:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint=str(tmp / f"rdzv-{uuid.uuid4().hex}"),
        rdzv_configs={"store_type": "file"}, max_restarts=0, monitor_interval=0.1,
        start_method="spawn",
    )  # fmt: skip
    return elastic_launch(config, fn)(*args)


def _config(sharding: str = "auto", epochs: int = 2) -> RunConfig:
    return RunConfig.model_validate({
        "name": "t", "data": {"format": "synthetic"}, "tasks": TASKS,
        "model": {"name": "mmoe", "params": {"dim": 8, "side_dim": 6}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 5e-3, "patience": None,
                  "embedding_optimizer": "rowwise_adagrad",
                  "distributed": {"sharding": sharding, "collective_timeout": 60}},
    })  # fmt: skip


def _data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, CTX.n_users, (n,), generator=g)
    item = torch.randint(0, CTX.n_items, (n,), generator=g)
    rating = (3.0 + (user % 2) - (item % 3 == 0).float()).clamp(1, 5)
    return {"user": user, "item": item,
            "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
            "day": torch.randint(0, 100, (n,), generator=g), "rating": rating,
            "like": (rating >= 4).float(), "interaction": torch.ones(n)}  # fmt: skip


def _model():
    cls = RANKERS.get("mmoe")
    torch.manual_seed(0)
    return cls(cls.config_class(dim=8, side_dim=6), CTX, TASKS)


def _job(mode: str, ckpt: str, sharding: str) -> dict:
    """One process: ``train`` fits 2 epochs with checkpoints; both modes then load the last
    checkpoint into a freshly sharded model (plan ``sharding``) and score a fixed batch."""
    from recsys_mtl.models.embeddings import EmbeddingTables, ShardedTableError
    from recsys_mtl.train import dcp, distributed
    from recsys_mtl.train.parallel import fit_parallel, sharded_model

    cfg = _config(sharding)
    distributed.setup(cfg.train.distributed)
    weighting = WEIGHTINGS.get("static")(TASKS)
    if mode == "train":
        fit_parallel(_model(), _data(400, 0), _data(100, 1), TASKS, cfg, weighting, ckpt)
    dmp, plan, _, opts = sharded_model(_model(), cfg, weighting, 0.1)
    dcp.load(Path(ckpt), dcp.read_sidecar(Path(ckpt)), dmp, opts, weighting)
    dmp.eval()
    with torch.no_grad():
        out = dmp(_data(64, 2))
    tables = next(m for m in dmp.modules() if isinstance(m, EmbeddingTables))
    refused = []
    for read in (lambda: tables.weight("user"), lambda: tables.rows("user", torch.tensor([0]))):
        try:
            read()
        except ShardedTableError:
            refused.append(True)
    import torch.distributed as dist

    dist.destroy_process_group()
    return {"rating": out["rating"], "plan": plan, "refused": len(refused) == 2}


def test_a_checkpoint_of_two_processes_loads_into_one_and_into_another_plan(tmp_path):
    t0 = time.perf_counter()
    ckpt = tmp_path / "ckpt"
    two = _launch(tmp_path, 2, _job, "train", str(ckpt), "table_wise")
    types = {v["sharding_type"] for v in two[0]["plan"].values()}
    assert "table_wise" in types and "data_parallel" in types  # side_dim 6: not a multiple of 4
    assert two[0]["refused"] and two[1]["refused"]
    assert (ckpt / "plan.json").exists()
    one = _launch(tmp_path, 1, _job, "load", str(ckpt), "auto")
    other = _launch(tmp_path, 2, _job, "load", str(ckpt), "column_wise")
    assert {v["sharding_type"] for v in other[0]["plan"].values()} >= {"column_wise"}
    for res in (one[0], other[0], other[1], two[1]):
        torch.testing.assert_close(res["rating"], two[0]["rating"], rtol=0, atol=1e-6)
    # and in one process without any process group: the unsharded model
    from recsys_mtl.train import dcp

    plain = _model()
    sidecar = dcp.read_sidecar(ckpt)
    dcp.load_model(ckpt / dcp.FOLDER / sidecar["latest"], plain)
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(_data(64, 2))["rating"], two[0]["rating"], atol=1e-6, rtol=0
        )
    assert time.perf_counter() - t0 < 90


def _wait_job(delay: float) -> float:
    """Rank 0 is busy (a data stage) longer than the collective timeout; the others wait."""
    from recsys_mtl.train import distributed

    d = distributed.setup(DistributedConfig(collective_timeout=1.0, wait_timeout=60.0))
    t0 = time.perf_counter()
    if d.leader:
        time.sleep(delay)
        distributed.announce("go")
    else:
        assert distributed.receive() == "go"
    total = distributed.all_sum(torch.ones(1))  # the short-timeout group still works
    waited = time.perf_counter() - t0
    distributed.teardown(clean=False)
    return waited if int(total[0]) == d.world else -1.0


def test_the_data_stage_wait_outlives_the_collective_timeout(tmp_path):
    waited = _launch(tmp_path, 2, _wait_job, 3.0)
    assert waited[1] > 2.5  # three times the collective timeout, and no failure


def test_adam_on_cpu_is_refused_naming_the_fused_optimizers():
    from recsys_mtl.train.distributed import check_settings

    cfg = _config().model_copy(update={"train": _config().train.model_copy(
        update={"embedding_optimizer": "adam"})})  # fmt: skip
    with pytest.raises(UserError, match="sgd, adagrad, rowwise_adagrad"):
        check_settings(cfg, torch.device("cpu"))


def test_gradient_weightings_are_refused_under_model_parallel():
    from recsys_mtl.train.parallel import _refuse

    with pytest.raises(UserError, match="loss-based weighting"):
        _refuse(_model(), WEIGHTINGS.get("pcgrad")(TASKS))


def test_tables_keep_their_order_in_every_lookup():
    """A sharded collection keeps its first input's key order: every KJT uses the tables'."""
    from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec

    tables = EmbeddingTables([TableSpec("a", 5, 4), TableSpec("b", 6, 4)], "torchrec")
    seen = []
    tables.ebc.register_forward_pre_hook(lambda m, args: seen.append(args[0].keys()))
    tables({"b": torch.tensor([1, 2])})
    tables({"a": torch.tensor([0]), "b": torch.tensor([3])})
    assert seen == [["a", "b"], ["a", "b"]]
