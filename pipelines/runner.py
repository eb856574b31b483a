"""The stage runner: typed artifact handles, content-hash caching, atomic stage directories.

A :class:`Stage` is a plain function plus a declaration of what it reads (dotted config keys),
which upstream artifacts it consumes and which files it writes. :class:`Pipeline` checks the
wiring when it is built: consuming an artifact that no earlier stage produces fails before
anything runs.

Each stage's fingerprint hashes the stage name and version, the package version, the source
code it runs (every ``.py`` file of the module defining its function and of the packages it
declares in ``code``; read once per process), the canonical JSON of the config keys it reads
(file paths replaced by the digest of the files' contents) and its upstream stages'
fingerprints. A stage whose fingerprint matches its completed directory is skipped. A stage
writes into ``RUN_DIR/.tmp-<stage>/`` and the directory is renamed into place only when the
stage has finished, so a killed run leaves either the previous complete stage directory or
none: a rerun resumes from the last complete stage.

Under ``torchrun`` rank 0 runs the pipeline; the other ranks run only the collective stages
it announces (:mod:`pipelines.ranks`).

A run folder is written by one process at a time: :func:`run_pipeline` holds its lock
(:func:`recsys_mtl.locks.folder_lock`; re-entrant, so a command holding the folder already runs
it without waiting on itself) and, once it holds it, removes what a killed run left: the
``.tmp-*`` stage folders and the hidden ``.NAME.*.tmp`` files of interrupted atomic writes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.ranks import announce_stage, keep_plan, stage_checkpoints, stage_ended, with_world
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig
from recsys_mtl.io import file_digest
from recsys_mtl.locks import folder_lock, this_command
from recsys_mtl.tracking import NullTracker

__all__ = [
    "Artifact",
    "Pipeline",
    "PipelineError",
    "Stage",
    "StageContext",
    "code_digest",
    "fingerprint",
    "remove_leftovers",
    "run_pipeline",
    "stage_code",
]

MARKER = "_stage.json"


class PipelineError(ValueError):
    """A pipeline wired wrongly (a programming error, raised when the graph is built)."""


@dataclass(frozen=True)
class Artifact:
    """A handle to one file that one stage writes."""

    stage: str
    name: str


@dataclass(frozen=True)
class Stage:
    name: str
    func: Callable[[StageContext], dict[str, Any]]
    reads: tuple[str, ...]
    outputs: tuple[str, ...]
    inputs: tuple[Artifact, ...] = ()
    version: int = 1
    # Config keys holding file paths: their files' contents enter the fingerprint, the path not.
    content_keys: Callable[[RunConfig], dict[str, str]] | None = None
    # Dotted packages/modules whose source the stage runs (e.g. "recsys_mtl.data"): every .py
    # file under them enters the fingerprint, so editing their code reruns the stage. The module
    # defining ``func`` is always included; list here what it calls into.
    code: tuple[str, ...] = ()
    # Files a stage may write besides ``outputs`` (a run with a refit keeps the selected model).
    optional: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.code, str):  # ("recsys_mtl.data") without the comma
            raise PipelineError(f"stage {self.name!r}: code must be a tuple of module names")

    def out(self, name: str) -> Artifact:
        if name not in self.outputs:
            raise PipelineError(f"stage {self.name!r} declares no output {name!r}")
        return Artifact(self.name, name)

    def outs(self, *names: str) -> tuple[Artifact, ...]:
        """Handles to the named outputs, or to every output when no name is given."""
        return tuple(self.out(n) for n in (names or self.outputs))


@dataclass
class StageContext:
    config: RunConfig
    run_dir: Path
    out_dir: Path
    stage: Stage
    tracker: NullTracker
    inputs: dict[Artifact, Path] = field(default_factory=dict)
    fingerprint: str = ""
    # Extra training callbacks from the caller (a tuning trial's pruning), for stages that train.
    callbacks: tuple[Any, ...] = ()

    @property
    def checkpoint_dir(self) -> Path:
        """A folder that survives a killed stage (unlike ``out_dir``), keyed by the fingerprint,
        for checkpoints to resume from; removed when the stage completes."""
        path = self.run_dir / ".checkpoints" / f"{self.stage.name}-{self.fingerprint[:16]}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def input(self, artifact: Artifact) -> Path:
        if artifact not in self.inputs:
            raise PipelineError(f"stage {self.stage.name!r} did not declare input {artifact}")
        return self.inputs[artifact]

    def output(self, name: str) -> Path:
        if name not in self.stage.outputs and name not in self.stage.optional:
            raise PipelineError(f"stage {self.stage.name!r} declares no output {name!r}")
        return self.out_dir / name


class Pipeline:
    """An ordered list of stages whose wiring is checked at construction."""

    def __init__(self, stages: list[Stage]) -> None:
        produced: set[Artifact] = set()
        names: set[str] = set()
        for s in stages:
            if s.name in names:
                raise PipelineError(f"stage name {s.name!r} used twice")
            for a in s.inputs:
                if a not in produced:
                    raise PipelineError(
                        f"stage {s.name!r} consumes {a.stage}/{a.name}, which no earlier stage produces"
                    )
            names.add(s.name)
            produced.update(Artifact(s.name, o) for o in s.outputs)
        self.stages = stages

    def __iter__(self):
        return iter(self.stages)


def _select(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PipelineError(f"config has no key {dotted!r}")
        node = node[part]
    return node


def _drop(doc: Any, dotted: str) -> None:
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _source_files(module: str) -> list[tuple[str, Path]]:
    """``(relative name, path)`` of the source of ``module``: every ``.py`` file under a
    package, sorted by relative path, or the module's own file."""
    if module == "__main__":  # a script run directly has no spec; hash its file
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        return [("__main__.py", Path(path))] if path else []
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise PipelineError(f"code {module!r} cannot be found ({e})") from e
    if spec is None:
        raise PipelineError(f"code {module!r} is not an importable module or package")
    if spec.submodule_search_locations:  # a package (namespace packages may have several)
        files: list[tuple[str, Path]] = []
        for n, location in enumerate(spec.submodule_search_locations):
            root = Path(location)
            files += sorted(
                ((f"{n}/{p.relative_to(root).as_posix()}", p) for p in root.rglob("*.py")),
                key=lambda rel_path: rel_path[0],
            )
        return files
    if spec.origin and spec.has_location:
        return [(Path(spec.origin).name, Path(spec.origin))]
    return []  # built-in or frozen: no source file of ours to hash


@functools.cache  # per process, keyed by the tuple (an unbounded lru_cache)
def code_digest(modules: tuple[str, ...]) -> str:
    """Digest of the source files of ``modules`` (dotted names), by name and content.

    Cached per process and per tuple, so a pipeline reads each stage's files once; call
    ``code_digest.cache_clear()`` to see source edited while the process runs.
    """
    h = hashlib.blake2b(digest_size=16)
    for module in modules:
        h.update(f"module:{module}\n".encode())
        for rel, path in _source_files(module):
            h.update(f"{rel}\0{file_digest(path)}\n".encode())
    return h.hexdigest()


def stage_code(stage: Stage) -> tuple[str, ...]:
    """The modules whose source enters ``stage``'s fingerprint: its function's module and
    its declared ``code``, deduplicated and sorted (one cache key per set)."""
    func: Any = stage.func
    while isinstance(func, functools.partial):
        func = func.func
    own = getattr(func, "__module__", None)
    return tuple(sorted({*stage.code, *([own] if own else [])}))


def fingerprint(stage: Stage, config: RunConfig, upstream: dict[str, str]) -> str:
    """Hex digest over the stage identity, code, the config it reads, contents, upstream keys."""
    try:
        code = code_digest(stage_code(stage))
    except PipelineError as e:
        raise PipelineError(f"stage {stage.name!r}: {e}") from e
    doc = config.model_dump(mode="json")
    content = stage.content_keys(config) if stage.content_keys else {}
    for key in content:
        _drop(doc, key)
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "package": __version__,
        "code": code,
        "config": {k: _select(doc, k) for k in stage.reads},
        "content": content,
        "upstream": {s: upstream[s] for s in sorted({a.stage for a in stage.inputs})},
    }
    try:
        text = json.dumps(payload, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:  # an unhashable value must never fall back to random
        raise PipelineError(f"stage {stage.name!r}: config is not canonical JSON ({e})") from e
    return hashlib.sha256(text.encode()).hexdigest()


def _complete(stage: Stage, final: Path, marker: dict[str, Any] | None, key: str) -> bool:
    """Whether a stage's folder holds a finished run of this fingerprint (it is skipped)."""
    return (
        marker is not None
        and marker.get("fingerprint") == key
        and all((final / o).exists() for o in stage.outputs)
    )


def _read_marker(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


log = logging.getLogger("recsys_mtl.pipeline")


def _log(msg: str) -> None:
    log.info(msg)


def run_pipeline(
    pipeline: Pipeline,
    config: RunConfig,
    run_dir: str | Path,
    *,
    force: bool = False,
    tracker: NullTracker | None = None,
    callbacks: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{stage: {"seconds", "skipped", "result"}}``.

    ``callbacks`` reach the training stages (:class:`recsys_mtl.train.callbacks.Callback`).
    The run folder is held for the whole call (:func:`recsys_mtl.locks.folder_lock`): another
    process writing it is a UserError naming that process.
    """
    with folder_lock(run_dir, this_command()) as run:
        remove_leftovers(run)
        return _run_stages(pipeline, config, run, force, tracker or NullTracker(), callbacks)


def remove_leftovers(run: Path) -> None:
    """What a killed run left in ``run``: ``.tmp-*`` stage folders and the hidden temporary
    files of atomic writes (at the root and among the checkpoints). Call only while holding
    the folder's lock: another live writer's files look the same."""
    for stale in run.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for half in [*run.glob(".*.tmp"), *(run / ".checkpoints").rglob(".*.tmp")]:
        if half.is_file():
            half.unlink(missing_ok=True)


def _run_stages(
    pipeline: Pipeline,
    config: RunConfig,
    run: Path,
    force: bool,
    tracker: NullTracker,
    callbacks: tuple[Any, ...],
) -> dict[str, Any]:
    keys: dict[str, str] = {}
    outcome: dict[str, dict[str, Any]] = {}
    total = len(pipeline.stages)
    for n, stage in enumerate(pipeline, start=1):
        plain = fingerprint(stage, config, keys)  # names the checkpoint folder
        key = with_world(stage.name, plain)
        keys[stage.name] = key
        final = run / stage.name
        marker = _read_marker(final)
        complete = _complete(stage, final, marker, key)
        params = {"stage.version": stage.version, "stage.fingerprint": key[:16]}
        if complete and not force:
            assert marker is not None
            _log(f"[{n}/{total}] {stage.name}: unchanged, skipped")
            outcome[stage.name] = {"seconds": 0.0, "skipped": True, "result": marker["result"]}
            tracker.stage_run(stage.name, params, _numeric(marker["result"]), True, 0.0)
            continue
        _log(f"[{n}/{total}] {stage.name}: running")
        tmp = run / f".tmp-{stage.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        inputs = {a: run / a.stage / a.name for a in stage.inputs}
        ctx = StageContext(config, run, tmp, stage, tracker, inputs, plain, tuple(callbacks))
        t0 = time.perf_counter()
        try:
            if key != plain:  # the other processes of the job run it too
                announce_stage(stage.name, config, run, plain)
            result = stage.func(ctx) or {}
            if key != plain:
                stage_ended()  # the others, past its last collective, wait for rank 0 again
                keep_plan(ctx.checkpoint_dir, ctx.out_dir, ctx.tracker)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - t0
        missing = [o for o in stage.outputs if not (tmp / o).exists()]
        if missing:
            raise PipelineError(f"stage {stage.name!r} did not write {missing}")
        marker_doc = {
            "fingerprint": key,
            "seconds": seconds,
            "finished_at": time.time(),
            "result": result,
        }
        (tmp / MARKER).write_text(json.dumps(marker_doc, indent=2, default=str))
        if final.exists() or final.is_symlink():  # a link (a study's shared data) is unlinked
            final.unlink() if final.is_symlink() else shutil.rmtree(final)
        os.replace(tmp, final)
        for done in (run / ".checkpoints").glob(f"{stage.name}-*"):
            shutil.rmtree(done, ignore_errors=True)
        _log(f"[{n}/{total}] {stage.name}: done in {seconds:.2f}s")
        outcome[stage.name] = {"seconds": seconds, "skipped": False, "result": result}
        tracker.stage_run(stage.name, params, _numeric(result), False, seconds)
    return outcome


def _numeric(result: dict[str, Any]) -> dict[str, float]:
    metrics = result.get("metrics", {}) if isinstance(result, dict) else {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def stage_status(
    pipeline: Pipeline, config: RunConfig, run_dir: str | Path
) -> dict[str, dict[str, Any]]:
    """What :func:`run_pipeline` would do, without running anything: for each stage its
    fingerprint, whether its completed folder matches it (``complete``: it would be skipped
    unless forced), the checkpoints a killed run left for it that this process resumes from and
    (``unread_checkpoints``) those of the other trainer (:func:`pipelines.ranks.stage_checkpoints`)."""
    run = Path(run_dir)
    keys: dict[str, str] = {}
    status: dict[str, dict[str, Any]] = {}
    for stage in pipeline:
        plain = fingerprint(stage, config, keys)
        key = with_world(stage.name, plain)
        keys[stage.name] = key
        final = run / stage.name
        marker = _read_marker(final)
        complete = _complete(stage, final, marker, key)
        folder = run / ".checkpoints" / f"{stage.name}-{plain[:16]}"
        checkpoints, unread = stage_checkpoints(stage.name, folder)
        status[stage.name] = {"fingerprint": key, "complete": complete,
                              "checkpoints": checkpoints, "unread_checkpoints": unread}  # fmt: skip
    return status
