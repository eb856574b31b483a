"""Training under torchrun: real 2-process gloo jobs (``elastic_launch``, a file-store
rendezvous: no port is shared between test workers), and the one-line refusals."""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest
import torch

from recsys_mtl.config import RunConfig
from recsys_mtl.config.train import DistributedConfig
from recsys_mtl.errors import UserError
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.train.callbacks import Callback
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


def _config(sharding: str = "auto", epochs: int = 2, batch: str = "global") -> RunConfig:
    return RunConfig.model_validate({
        "name": "t", "data": {"format": "synthetic"}, "tasks": TASKS,
        "model": {"name": "mmoe", "params": {"dim": 8, "side_dim": 6}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 5e-3, "patience": None,
                  "embedding_optimizer": "rowwise_adagrad", "lr_scaling": "linear",
                  "lr_reference_batch": 64,
                  "distributed": {"sharding": sharding, "collective_timeout": 60,
                                  "batch": batch}},
    })  # fmt: skip


class _Steps(Callback):
    """What a fit tells its callbacks, and the rows of every training forward (a pre-hook on
    the model, which the sharded copy keeps)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.info: dict = {}
        self.steps: dict[int, int] = {}
        self.rows: list[int] = []
        rows = self.rows

        def count(module: torch.nn.Module, args: tuple) -> None:  # deepcopy keeps a function
            if module.training:
                rows.append(int(args[0]["user"].numel()))

        model.register_forward_pre_hook(count)

    def on_train_start(self, model: torch.nn.Module, info: dict) -> None:
        self.info = dict(info)

    def on_step_end(self, epoch: int, step: int, steps: int) -> None:
        self.steps[epoch] = step


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


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


def _job(mode: str, ckpt: str, sharding: str, resume: str | None = None) -> dict:
    """One process: ``train`` fits 2 epochs with checkpoints (``per_process`` batches); both
    modes then load the last checkpoint into a freshly sharded model (plan ``sharding``) and
    score a fixed batch; ``resume``: a copy of the checkpoint continued for a third epoch."""
    from recsys_mtl.models.embeddings import EmbeddingTables, ShardedTableError
    from recsys_mtl.train import dcp, distributed
    from recsys_mtl.train.parallel import fit_parallel, sharded_model

    cfg = _config(sharding, batch="per_process")
    distributed.setup(cfg.train.distributed)
    weighting = WEIGHTINGS.get("static")(TASKS)
    seen: dict = {}
    if mode == "train":
        model = _model()
        steps = _Steps(model)
        fit_parallel(model, _data(400, 0), _data(100, 1), TASKS, cfg, weighting, ckpt, [steps])
        seen = {"info": steps.info, "steps": steps.steps, "rows": steps.rows}
    if resume is not None:
        model, caught = _model(), _Warnings()
        steps = _Steps(model)
        logging.getLogger("recsys_mtl.train").addHandler(caught)
        res = fit_parallel(model, _data(400, 0), _data(100, 1), TASKS, _config(epochs=3,
                           batch="per_process"), WEIGHTINGS.get("static")(TASKS), resume,
                           [steps])  # fmt: skip
        seen = {"info": steps.info, "steps": steps.steps, "warnings": caught.lines,
                "epochs": len(res.history)}  # fmt: skip
    dmp, plan, _, opts = sharded_model(_model(), cfg, weighting, 0.1)
    seen["dense_lr"] = opts[0].base_lr
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
    distributed.teardown(release=False)  # no process waits in receive()
    return {"rating": out["rating"], "plan": plan, "refused": len(refused) == 2, **seen}


def test_a_checkpoint_of_two_processes_loads_into_one_and_into_another_plan(tmp_path):
    """Per-process batches: each of 2 processes takes batch_size rows (a step sees twice as
    many, half the steps of an epoch; rates scaled to the global batch); the checkpoint loads
    into 1 process and another plan, and resumes in 1 process with a logged batch change."""
    ckpt = tmp_path / "ckpt"
    two = _launch(tmp_path, 2, _job, "train", str(ckpt), "table_wise")
    types = {v["sharding_type"] for v in two[0]["plan"].values()}
    assert "table_wise" in types and "data_parallel" in types  # side_dim 6: not a multiple of 4
    assert two[0]["refused"] and two[1]["refused"]
    assert (ckpt / "plan.json").exists()
    for rank in (0, 1):  # 400 rows: 200 per process, 64 per step: 4 steps an epoch, not 7
        got = two[rank]
        assert got["info"]["batch_per_process"] == 64 and got["info"]["global_batch"] == 128
        assert got["info"]["steps_per_epoch"] == 4 and got["steps"] == {0: 4, 1: 4}
        assert got["rows"] == [64, 64, 64, 8] * 2
        assert got["dense_lr"] == pytest.approx(5e-3 * 128 / 64)  # linear, from batches of 64
    from recsys_mtl.train import dcp

    sidecar = dcp.read_sidecar(ckpt)
    assert (sidecar["batch"], sidecar["global_batch"], sidecar["world_size"]) == (
        "per_process", 128, 2)  # fmt: skip
    shutil.copytree(ckpt, tmp_path / "resume")
    one = _launch(tmp_path, 1, _job, "load", str(ckpt), "auto", str(tmp_path / "resume"))
    # resumed in 1 process: 64 rows a step, 400 rows an epoch: 7 steps, the rate for 64 rows
    assert one[0]["info"]["resumed_from"] == 2 and one[0]["epochs"] == 3
    assert one[0]["info"]["global_batch"] == 64 and one[0]["steps"] == {2: 7}
    assert one[0]["dense_lr"] == pytest.approx(5e-3)
    assert any("global batch was 128 rows" in w and "from epoch 2" in w
               for w in one[0]["warnings"]), one[0]["warnings"]  # fmt: skip
    other = _launch(tmp_path, 2, _job, "load", str(ckpt), "column_wise")
    assert {v["sharding_type"] for v in other[0]["plan"].values()} >= {"column_wise"}
    for res in (one[0], other[0], other[1], two[1]):
        torch.testing.assert_close(res["rating"], two[0]["rating"], rtol=0, atol=1e-6)
    # and in one process without any process group: the unsharded model
    plain = _model()
    sidecar = dcp.read_sidecar(ckpt)
    dcp.load_model(ckpt / dcp.FOLDER / sidecar["latest"], plain)
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(_data(64, 2))["rating"], two[0]["rating"], atol=1e-6, rtol=0
        )


def _bellkor_config() -> RunConfig:
    cfg = _config().model_dump()
    cfg["model"] = {"name": "bellkor", "params": {"dim": 8, "implicit": True,
                    "time_effects": True, "user_day_bias": True}}  # fmt: skip
    cfg["train"]["warm_start"] = "als"
    return RunConfig.model_validate(cfg)


def _bellkor_job() -> dict:
    """One process: BellKor warm-started by ALS, sharded, scored on a fixed batch; then one
    epoch of training through the sharded tables."""
    from recsys_mtl.train import distributed
    from recsys_mtl.train.parallel import fit_parallel, sharded_model

    cfg = _bellkor_config()
    distributed.setup(cfg.train.distributed)
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    model = cls(cls.config_class(**cfg.model.params), CTX, TASKS)
    model.warm_start(_data(400, 0), cfg.train)
    weighting = WEIGHTINGS.get("static")(TASKS)
    dmp, plan, _, _ = sharded_model(model, cfg, weighting, 0.1)
    dmp.eval()
    batch = _data(64, 2)
    with torch.no_grad():
        sharded, plain = dmp(batch), model.eval()(batch)
    grads = []  # the same batch on every process: the mean gradient is the one-process one
    for m in (dmp.train(), model.train()):
        out = m(batch)
        (out["rating"].sum() + out["interaction"].sum() + out["_reg"]).backward()
        grads.append({n.removesuffix(".weight").rsplit(".")[-1]: p.grad for n, p in m.named_parameters()
                      if p.grad is not None})  # fmt: skip
    res = fit_parallel(model.train(), _data(400, 0), _data(100, 1), TASKS,
                       cfg.model_copy(update={"train": cfg.train.model_copy(
                           update={"epochs": 1})}), weighting)  # fmt: skip
    distributed.teardown(release=False)  # no process waits in receive()
    return {"sharded": {t: sharded[t] for t in TASKS}, "plain": {t: plain[t] for t in TASKS},
            "plan": plan, "loss": res.history[-1]["valid/rating/loss"], "grads": grads}  # fmt: skip


def test_bellkor_trains_on_sharded_tables_from_its_als_warm_start(tmp_path):
    """The ALS factors reach the sharded tables (DMP re-initialises them), and the lookup-only
    forward on real shards gives the unsharded model's scores."""
    out = _launch(tmp_path, 2, _bellkor_job)
    plan = out[0]["plan"]
    assert {plan[t]["sharding_type"] for t in ("user", "item", "implicit")} != {"data_parallel"}
    assert plan["user_bias"]["sharding_type"] == "data_parallel"  # width 2: not a multiple of 4
    assert plan["user_day_bias"]["sharding_type"] == "data_parallel"
    for rank in (0, 1):
        for t in TASKS:
            torch.testing.assert_close(out[rank]["sharded"][t], out[rank]["plain"][t],
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
    # the data-parallel tables (fbgemm's dense kernel, DDP) and the dense parameters
    sharded_grads, plain_grads = out[0]["grads"]
    assert set(sharded_grads) >= {"user_bias", "user_day_bias", "item_time_bias", "global_bias"}
    for name, g in sharded_grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(torch.tensor(out[0]["loss"])) and out[0]["loss"] == out[1]["loss"]


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
    distributed.teardown(release=False)  # no process waits in receive()
    return waited if int(total[0]) == d.world else -1.0


def test_the_data_stage_wait_outlives_the_collective_timeout(tmp_path):
    waited = _launch(tmp_path, 2, _wait_job, 2.0)
    assert waited[1] > 1.5  # twice the collective timeout, and no failure


def test_sigterm_stops_a_run_but_not_the_ending_of_one_that_already_failed():
    """torchrun's SIGTERM reaches the other processes while they end after a failed
    collective: that ending (the MLflow run marked FAILED) is not cut short."""
    from recsys_mtl.train.groups import Terminated, _on_sigterm

    with pytest.raises(Terminated, match="SIGTERM"):
        _on_sigterm(15, None)
    try:
        raise RuntimeError("Connection reset by peer")
    except RuntimeError:
        _on_sigterm(15, None)  # handling the collective's error: returns


def test_after_leaving_the_job_a_sigterm_no_longer_cuts_the_exit_short(monkeypatch):
    import signal

    from recsys_mtl.train import distributed, groups

    monkeypatch.setattr(groups, "_current",
                        groups.Dist(1, 2, 1, torch.device("cpu"), "gloo", None))  # fmt: skip
    before = signal.getsignal(signal.SIGTERM)
    try:
        distributed.teardown(clean=False)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert distributed.current() is None
    finally:
        signal.signal(signal.SIGTERM, before)


def test_adam_on_cpu_is_refused_naming_the_fused_optimizers():
    from recsys_mtl.train.distributed import check_settings

    cfg = _config().model_copy(update={"train": _config().train.model_copy(
        update={"embedding_optimizer": "adam"})})  # fmt: skip
    with pytest.raises(UserError, match="sgd, adagrad, rowwise_adagrad"):
        check_settings(cfg, torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weighting.name": "pcgrad"}, "weighting.name: pcgrad combines per-task gradients"),
        ({"weighting.name": "mgda"}, "weighting.name: mgda combines per-task gradients"),
        ({"weighting.name": "gradnorm"}, "weighting.name: gradnorm combines"),
        ({"model.name": "sasrec", "model.params": {}, "tasks": ["interaction"]},
         "model.name: sasrec is a sequence ranker"),
        ({"model.name": "bert4rec", "model.params": {}, "tasks": ["interaction"]},
         "model.name: bert4rec is a sequence ranker"),
        ({"train.distributed.sharding": "row_wise"},
         "train.distributed.sharding: row_wise is not available on cpu"),
    ],
)  # fmt: skip
def test_what_model_parallel_cannot_train_is_refused_before_any_stage(overrides, message):
    """Every setting the sharded trainer refuses is refused by the check a run makes before
    its first stage (``prepare``), in one line naming the key, not at the train stage."""
    from recsys_mtl.train.distributed import check_settings

    doc = _config().model_dump(mode="json")
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = doc
        for part in path:
            node = node[part]
        node[last] = value
    with pytest.raises(UserError, match=re.escape(message)):
        check_settings(RunConfig.model_validate(doc), torch.device("cpu"))
    check_settings(_config(), torch.device("cpu"))  # the base config passes
    closed = _config().model_dump(mode="json")  # a closed-form ranker: no sharded trainer
    closed.update(model={"name": "bias", "params": {}}, tasks=["rating"],
                  weighting={"name": "pcgrad"})  # fmt: skip
    check_settings(RunConfig.model_validate(closed), torch.device("cpu"))


def test_the_sharded_trainer_refuses_a_gradient_weighting_too():
    """Called from Python (``fit_parallel``) the same check stands."""
    from recsys_mtl.train.distributed import check_trainable

    with pytest.raises(UserError, match="loss-based weighting"):
        check_trainable(type(_model()), WEIGHTINGS.get("pcgrad"))


def test_a_data_parallel_table_the_model_lacks_is_named_with_the_tables_it_has():
    """A misspelt ``train.distributed.data_parallel`` entry would otherwise leave the table the
    user meant sharded, without a word."""
    from recsys_mtl.train.distributed import _constraints
    from recsys_mtl.train.parallel import _torchrec_twin

    twin = _torchrec_twin(_model())
    settings = DistributedConfig(data_parallel=["user", "itme"])
    with pytest.raises(UserError, match=r"data_parallel: 'itme' is not a table .*: .*item"):
        _constraints(twin, settings, torch.device("cpu"))
    _, sharded = _constraints(twin, DistributedConfig(data_parallel=["user"]),
                              torch.device("cpu"))  # fmt: skip
    assert "user" not in sharded and "item" in sharded


def test_nccl_on_a_machine_without_it_is_one_line_naming_the_backend(monkeypatch):
    """``train.distributed.backend: nccl`` where there is no CUDA (or no NCCL): the user's
    error, before the process joins any group (not torch's RuntimeError)."""
    from recsys_mtl.train import groups

    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        pytest.skip("this machine has CUDA and NCCL")
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(groups, "_current", None)
    with pytest.raises(UserError, match=r"train\.distributed\.backend: nccl needs CUDA"):
        groups.setup(DistributedConfig(backend="nccl"))
    assert groups.current() is None


def test_tables_keep_their_order_in_every_lookup():
    """A sharded collection keeps its first input's key order: every KJT uses the tables'."""
    from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec

    tables = EmbeddingTables([TableSpec("a", 5, 4), TableSpec("b", 6, 4)], "torchrec")
    seen = []
    tables.ebc.register_forward_pre_hook(lambda m, args: seen.append(args[0].keys()))
    tables({"b": torch.tensor([1, 2])})
    tables({"a": torch.tensor([0]), "b": torch.tensor([3])})
    assert seen == [["a", "b"], ["a", "b"]]


def test_per_process_batches_multiply_the_global_batch_and_scale_the_rates(monkeypatch):
    from recsys_mtl.train.distributed import check_settings
    from recsys_mtl.train.parallel import fused_lr, global_train, step_rows

    def train(batch: str, **kw) -> object:
        over = {"distributed": DistributedConfig(batch=batch), "batch_size": 1000,
                "lr_scaling": "sqrt", "lr_reference_batch": 1000, "embedding_lr": 0.1,
                **kw}  # fmt: skip
        return _config().train.model_copy(update=over)

    assert [step_rows(train("global"), n) for n in (1, 2, 4)] == [(1000, 1000), (500, 1000),
                                                                   (250, 1000)]  # fmt: skip
    assert [step_rows(train("per_process"), n) for n in (1, 2, 4)] == [(1000, 1000),
                                                                        (1000, 2000),
                                                                        (1000, 4000)]  # fmt: skip
    assert global_train(train("global"), 4).batch_size == 1000
    # a batch that does not split evenly: the rows a step takes, and the rates scaled to them
    assert step_rows(train("global"), 3) == (333, 999)
    assert global_train(train("global"), 3).batch_size == 999
    assert global_train(train("per_process"), 4).batch_size == 4000
    assert fused_lr(train("global"), 4) == pytest.approx(0.1)
    assert fused_lr(train("per_process"), 4) == pytest.approx(0.2)  # sqrt(4000 / 1000)
    # sgd: a sharded table's gradient sums the processes' means, so its rate is divided by N
    assert fused_lr(train("per_process", embedding_optimizer="sgd"), 4) == pytest.approx(0.05)
    from recsys_mtl.train import groups

    monkeypatch.setattr(groups, "_current",
                        groups.Dist(0, 4, 0, torch.device("cpu"), "gloo", None))  # fmt: skip
    for batch in ("global", "per_process"):
        cfg = _config().model_copy(update={"train": train(batch, batch_size=2)})
        if batch == "global":  # 2 rows cannot be split among 4 processes
            with pytest.raises(UserError, match="smaller than the 4 processes"):
                check_settings(cfg, torch.device("cpu"))
        else:
            check_settings(cfg, torch.device("cpu"))
