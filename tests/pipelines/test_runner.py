"""The stage runner: wiring checked at build, content-hash caching, atomic stages, resume."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import run_command
from pipelines.runner import (
    Artifact,
    Pipeline,
    PipelineError,
    Stage,
    code_digest,
    fingerprint,
    run_pipeline,
    stage_code,
)
from recsys_mtl.config import load_config
from tests.conftest import REPO, tiny_config, write

SYN = {"format": "synthetic", "synthetic": {"users": 100, "items": 150, "ratings": 3000}}


def _skipped(summary: dict) -> dict[str, bool]:
    return {k: v["skipped"] for k, v in summary["stages"].items()}


def test_a_stage_consuming_an_unproduced_artifact_fails_when_the_pipeline_is_built():
    a = Stage("a", lambda ctx: {}, reads=(), outputs=("x.txt",))
    b = Stage("b", lambda ctx: {}, reads=(), outputs=("y.txt",), inputs=(Artifact("a", "z.txt"),))
    with pytest.raises(PipelineError, match=r"consumes a/z\.txt, which no earlier stage produces"):
        Pipeline([a, b])
    with pytest.raises(PipelineError, match="declares no output"):
        a.out("nope.txt")


def test_second_run_skips_every_stage_and_keeps_the_metrics(tmp_path):
    cfg = tiny_config(tmp_path, SYN)
    first = run_command(str(cfg), [], str(tmp_path / "run"), False)
    second = run_command(str(cfg), [], str(tmp_path / "run"), False)
    assert not any(_skipped(first).values())
    assert all(_skipped(second).values())
    assert second["metrics"] == first["metrics"] and "rating/rmse" in first["metrics"]
    forced = run_command(str(cfg), [], str(tmp_path / "run"), True)
    assert not any(_skipped(forced).values())


@pytest.mark.parametrize(
    ("override", "rerun"),
    [
        ("model.params.reg_user=3", {"train", "evaluate"}),
        ("train.epochs=3", {"train", "evaluate"}),
        ("split.seed=5", {"split", "train", "evaluate"}),
        ("features.like_threshold=3.5", {"features", "split", "train", "evaluate"}),
        ("data.synthetic.seed=9", {"ingest", "features", "split", "train", "evaluate"}),
        ("name=renamed", set()),
    ],
)
def test_changing_one_key_reruns_exactly_the_stages_that_read_it_and_their_dependents(
    tmp_path, override, rerun
):
    cfg = tiny_config(tmp_path, SYN)
    run_command(str(cfg), [], str(tmp_path / "run"), False)
    again = run_command(str(cfg), [override], str(tmp_path / "run"), False)
    assert {k for k, skipped in _skipped(again).items() if not skipped} == rerun


def test_data_fingerprint_follows_file_contents_not_paths(tmp_path):
    src = tmp_path / "a" / "ml-100k"
    write(
        src / "u.data",
        "".join(
            f"{u}\t{i}\t{(u + i) % 5 + 1}\t{u * 10 + i}\n"
            for u in range(1, 30)
            for i in range(1, 20)
        ),
    )
    cfg = tiny_config(tmp_path, {"path": str(src)})
    run_command(str(cfg), [], str(tmp_path / "run"), False)
    moved = tmp_path / "b" / "ml-100k"
    shutil.copytree(src, moved)
    again = run_command(str(cfg), [f"data.path={moved}"], str(tmp_path / "run"), False)
    assert all(_skipped(again).values())
    with open(moved / "u.data", "a") as f:
        f.write("99\t1\t5\t1\n")
    changed = run_command(str(cfg), [f"data.path={moved}"], str(tmp_path / "run"), False)
    assert not _skipped(changed)["ingest"] and changed["data"]["rows_read"] == 29 * 19 + 1


def test_a_stale_stage_linked_from_another_run_is_replaced_and_the_shared_one_kept(tmp_path):
    """A run folder whose data stages are links to folders it shares (a study's trials link
    the study's) reruns a linked stage whose fingerprint no longer matches into a folder of
    its own, replacing the link: the shared folder is left as it was (it used to stop with
    "Cannot call rmtree on a symbolic link")."""
    cfg = tiny_config(tmp_path, SYN)
    run_command(str(cfg), [], str(tmp_path / "shared"), False)
    run = tmp_path / "run"
    run.mkdir()
    for stage in ("ingest", "features", "split"):
        os.symlink(os.path.relpath(tmp_path / "shared" / stage, run), run / stage)
    linked = run_command(str(cfg), [], str(run), False)
    assert _skipped(linked) == {"ingest": True, "features": True, "split": True,
                                "train": False, "evaluate": False}  # fmt: skip
    before = (tmp_path / "shared" / "split" / "_stage.json").read_bytes()
    again = run_command(str(cfg), ["split.seed=5"], str(run), False)
    assert not _skipped(again)["split"] and _skipped(again)["features"]
    assert not (run / "split").is_symlink() and (run / "split").is_dir()
    assert (run / "features").is_symlink()
    assert (tmp_path / "shared" / "split" / "_stage.json").read_bytes() == before


def test_a_failing_stage_leaves_no_stage_directory(tmp_path):
    def ok(ctx):
        ctx.output("x.txt").write_text("done")
        return {}

    def boom(ctx):
        ctx.output("y.txt").write_text("half")
        raise RuntimeError("stage failed")

    a = Stage("a", ok, reads=(), outputs=("x.txt",))
    b = Stage("b", boom, reads=(), outputs=("y.txt",), inputs=(a.out("x.txt"),))
    cfg = load_config(None, base={"data": {"format": "synthetic"}})
    with pytest.raises(RuntimeError, match="stage failed"):
        run_pipeline(Pipeline([a, b]), cfg, tmp_path)
    assert (tmp_path / "a" / "x.txt").read_text() == "done"
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".tmp-*"))


def _code_pipeline(code: tuple[str, ...], func=None) -> tuple[Pipeline, list[str]]:
    """Stage ``a`` (declaring ``code``) and stage ``b`` downstream of it; ``calls`` records runs."""
    calls: list[str] = []

    def make(name: str):
        def run(ctx):
            calls.append(name)
            ctx.output(f"{name}.txt").write_text(name)
            return {}

        return run

    a = Stage("a", func or make("a"), reads=(), outputs=("a.txt",), code=code)
    b = Stage("b", make("b"), reads=(), outputs=("b.txt",), inputs=(a.out("a.txt"),))
    return Pipeline([a, b]), calls


def _reran(pipeline: Pipeline, run_dir: Path) -> set[str]:
    code_digest.cache_clear()  # a new process would re-read the source; so must this one
    cfg = load_config(None, base={"data": {"format": "synthetic"}})
    return {k for k, v in run_pipeline(pipeline, cfg, run_dir).items() if not v["skipped"]}


def test_editing_a_package_a_stage_declares_reruns_it_and_unchanged_code_keeps_it_skipped(
    tmp_path, monkeypatch
):
    write(tmp_path / "src" / "rt_declared" / "__init__.py", "")
    write(tmp_path / "src" / "rt_declared" / "deep" / "__init__.py", "")
    model = write(tmp_path / "src" / "rt_declared" / "deep" / "model.py", "SCALE = 1\n")
    other = write(tmp_path / "src" / "rt_other" / "__init__.py", "SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    pipeline, calls = _code_pipeline(code=("rt_declared",))
    stage = pipeline.stages[0]
    cfg = load_config(None, base={"data": {"format": "synthetic"}})
    run_dir = tmp_path / "run"

    assert _reran(pipeline, run_dir) == {"a", "b"}
    before = json.loads((run_dir / "a" / "_stage.json").read_text())["fingerprint"]
    assert _reran(pipeline, run_dir) == set()  # same code: skipped
    other.write_text("SCALE = 2\n")  # a package the stage does not declare
    assert _reran(pipeline, run_dir) == set()
    assert fingerprint(stage, cfg, {}) == before

    model.write_text("SCALE = 2\n")  # a file deep inside the declared package
    assert _reran(pipeline, run_dir) == {"a", "b"}  # the stage and everything after it
    after = json.loads((run_dir / "a" / "_stage.json").read_text())["fingerprint"]
    assert after != before and fingerprint(stage, cfg, {}) == after
    assert calls == ["a", "b", "a", "b"]
    assert _reran(pipeline, run_dir) == set()

    write(tmp_path / "src" / "rt_declared" / "deep" / "extra.py", "")  # a new file counts too
    assert _reran(pipeline, run_dir) == {"a", "b"}


def test_the_module_defining_a_stage_function_enters_its_fingerprint_by_default(
    tmp_path, monkeypatch
):
    source = "def run(ctx):\n    ctx.output('a.txt').write_text('a')\n    return {}\n"
    module = write(tmp_path / "src" / "rt_own_stage.py", source)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    func = importlib.import_module("rt_own_stage").run
    monkeypatch.delitem(sys.modules, "rt_own_stage")
    pipeline, _ = _code_pipeline(code=(), func=func)
    assert stage_code(pipeline.stages[0]) == ("rt_own_stage",)
    assert stage_code(pipeline.stages[1]) == (__name__,)  # a function defined in this file
    run_dir = tmp_path / "run"
    assert _reran(pipeline, run_dir) == {"a", "b"}
    assert _reran(pipeline, run_dir) == set()
    module.write_text(source + "# edited\n")
    assert _reran(pipeline, run_dir) == {"a", "b"}


def test_a_stage_declaring_code_that_is_not_importable_fails_naming_it(tmp_path):
    pipeline, calls = _code_pipeline(code=("rt_no_such_package_anywhere",))
    with pytest.raises(PipelineError, match="stage 'a': code 'rt_no_such_package_anywhere'"):
        _reran(pipeline, tmp_path / "run")
    assert calls == [] and not (tmp_path / "run" / "a").exists()
    with pytest.raises(PipelineError, match="code must be a tuple"):
        Stage("s", lambda ctx: {}, reads=(), outputs=(), code="recsys_mtl.data")  # type: ignore


def _kill_when(cfg: Path, run_dir: Path, ready, settle: float = 0.0) -> tuple[list[str], dict]:
    """Start ``recsys-mtl run`` in a subprocess, SIGKILL it once ``ready()``; returns its command."""
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=run_dir.parent, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return cmd, env


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_from_the_last_complete_stage(tmp_path):
    big = {"format": "synthetic", "synthetic": {"users": 3000, "items": 2000, "ratings": 400_000}}
    # killed in the features stage: training and evaluation only need to be short
    cfg = tiny_config(
        tmp_path, big, features={"negatives_per_positive": 4}, train={"epochs": 1},
        evaluate={"full_ranking": False},
    )  # fmt: skip
    run_dir = tmp_path / "run"
    cmd, env = _kill_when(cfg, run_dir, lambda: (run_dir / ".tmp-features").exists())
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    assert (run_dir / "ingest" / "_stage.json").exists()
    assert not (run_dir / "features").exists()  # nothing half-written in a final place
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert _skipped(summary) == {
        "ingest": True,
        "features": False,
        "split": False,
        "train": False,
        "evaluate": False,
    }
    assert not list(run_dir.glob(".tmp-*")) and "ingest: unchanged, skipped" in done.stderr


def test_run_directory_defaults_to_runs_slash_config_name(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    code, out, _ = cli("run", cfg, "--json")
    assert code == 0 and json.loads(out)["run_dir"] == str(Path("runs") / "t")
    assert (tmp_path / "runs" / "t" / "summary.json").exists()


@pytest.mark.slow
def test_a_run_killed_during_training_resumes_from_the_last_epoch_checkpoint(tmp_path):
    data = {"format": "synthetic", "synthetic": {"users": 300, "items": 400, "ratings": 20_000}}
    cfg = tiny_config(
        tmp_path, data, model={"name": "bellkor", "params": {"dim": 16}}, tasks=["rating", "like"],
        train={"epochs": 15, "patience": 15, "batch_size": 256}, evaluate={"full_ranking": False},
    )  # fmt: skip
    run_dir = tmp_path / "run"
    # once the first epoch's checkpoint exists, let it train into the next epochs, then kill
    cmd, env = _kill_when(
        cfg, run_dir, lambda: bool(list(run_dir.glob(".checkpoints/train-*/last.pt"))), settle=0.5
    )
    assert not (run_dir / "train").exists(), "training finished before it could be killed"
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    marker = json.loads((run_dir / "train" / "_stage.json").read_text())
    assert marker["result"]["resumed_from_epoch"] >= 1
    assert marker["result"]["metrics"]["train/epochs"] == 15
    assert not list(run_dir.glob(".checkpoints/train-*"))  # removed once the stage completed


@pytest.mark.slow
def test_a_run_killed_during_the_refit_resumes_it_and_ends_with_the_uninterrupted_model(tmp_path):
    import torch

    data = {"format": "synthetic", "synthetic": {"users": 300, "items": 400, "ratings": 20_000}}
    cfg = tiny_config(
        tmp_path, data, model={"name": "bellkor", "params": {"dim": 16}}, tasks=["rating", "like"],
        train={"epochs": 12, "patience": 12, "batch_size": 256, "refit": True},
        evaluate={"full_ranking": False},
    )  # fmt: skip
    run_dir = tmp_path / "run"
    cmd, env = _kill_when(
        cfg,
        run_dir,
        lambda: bool(list(run_dir.glob(".checkpoints/train-*/refit/last.pt"))),
        settle=0.3,
    )
    assert not (run_dir / "train").exists(), "training finished before it could be killed"
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    marker = json.loads((run_dir / "train" / "_stage.json").read_text())
    assert marker["result"]["refit_epochs"] == marker["result"]["metrics"]["train/best_epoch"] + 1
    whole = tmp_path / "whole"
    subprocess.run([*cmd[:-1], str(whole)], cwd=tmp_path, env=env, capture_output=True, check=True)
    resumed = torch.load(run_dir / "train" / "model.pt", weights_only=True)
    uninterrupted = torch.load(whole / "train" / "model.pt", weights_only=True)
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), k
