"""Sharded scoring under ``torchrun``: ``torchrun --nproc_per_node N -m pipelines.cli score RUN
--top-k K --out DIR/`` splits the users across the N processes (contiguous, equal blocks of the
users asked for, or of every user of the model); each process writes ``DIR/part-<rank>.parquet``
and rank 0 writes ``DIR/manifest.json``: the parts, their users and rows, the users served by
the model or by popularity, and the files' metadata. The union of the parts holds the
one-process output's users, items and ranks row for row; scores agree to float32 rounding.

The manifest marks a complete output: each process removes the one a previous job left before
it writes its part, and rank 0 writes the new one once every part is written, removing the
parts a previous job of more processes left (``part-<rank>`` beyond this job's). A process
whose block is empty (fewer users than processes) writes an empty part.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipelines.ranks import torchrun_world
from recsys_mtl.errors import UserError
from recsys_mtl.io import write_json

__all__ = ["MANIFEST", "clear_manifest", "my_part", "my_users", "none_known", "write_manifest"]

MANIFEST = "manifest.json"


def _rank() -> int:
    # deferred: torch.distributed, under torchrun only
    from recsys_mtl.train.distributed import current

    d = current()
    return d.rank if d is not None else 0


def my_part(out: str, *unsupported: tuple[str, Any]) -> str:
    """Outside torchrun ``out`` itself; under it this process's ``DIR/part-<rank>.parquet``
    (``out`` is the folder). ``unsupported``: ``(option, value)`` pairs that one process only
    serves (new users' support rows)."""
    if torchrun_world() is None:
        return out
    for option, value in unsupported:
        if value:
            raise UserError(
                f"{option}: new users are scored in one process (recsys-mtl score without "
                "torchrun); under torchrun the model's users are split across processes"
            )
    folder = Path(out)
    if folder.suffix == ".parquet" or (folder.exists() and not folder.is_dir()):
        raise UserError(f"--out {out}: under torchrun --out is a folder (one part per process)")
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"--out {out}: {blocker} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"part-{_rank()}.parquet")


def none_known(users: str | None, listed: Any, n: int) -> str:
    """The error of a ``--users`` file none of whose ``n`` ids the model can serve."""
    first = f" (first: {listed[0]!r})" if listed is not None and listed.len() else ""
    return (
        f"--users {users}: none of its {n} user ids is a user of this model or has support "
        f"rows{first}; nothing written"
    )


def my_users(run: Any, listed: Any, users: str | None = None) -> Any:
    """This process's contiguous block of the distinct ids of ``listed`` (every user of the
    model when None); ``listed`` itself outside torchrun. Under torchrun a list none of whose ids is a user of
    the model is refused here, by every process alike (``users``: the file, for the message):
    one process's block may hold none of them while another's does."""
    world = torchrun_world()
    if world is None:
        return listed
    # deferred: polars, when scores are computed
    import polars as pl

    if listed is not None and not bool(run.user_index(listed)[1].any()):
        raise UserError(none_known(users, listed, listed.n_unique()))
    users = listed if listed is not None else pl.Series("user", run.user_ids)
    users = users.unique(maintain_order=True)  # a repeated id in two blocks: scored twice
    per = -(-users.len() // world)
    return users.slice(_rank() * per, per)


def clear_manifest(part: str) -> None:
    """Under torchrun, before this process writes ``part``: the manifest a previous job left
    beside it goes, so that a job killed midway leaves no manifest naming a mix of parts."""
    if torchrun_world() is not None:
        (Path(part).parent / MANIFEST).unlink(missing_ok=True)


def _drop_stale_parts(folder: Path, world: int) -> None:
    """The parts a previous job of more processes left in ``folder``."""
    for path in folder.glob("part-*.parquet"):
        m = re.fullmatch(r"part-(\d+)\.parquet", path.name)
        if m is not None and int(m.group(1)) >= world:
            path.unlink(missing_ok=True)


def write_manifest(result: dict[str, Any], metadata: dict[str, str]) -> None:
    """Under torchrun: gather every process's report; rank 0 writes ``manifest.json`` beside
    the parts."""
    if torchrun_world() is None:
        return
    import torch.distributed as dist  # deferred: under torchrun only

    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, result)  # the default group: the long timeout
    if _rank() != 0:
        return
    served: dict[str, int] = {}
    for r in reports:
        for name, count in r.get("served_by", {}).items():
            served[name] = served.get(name, 0) + int(count)
    parts = [{"file": Path(r["out"]).name, "users": r.get("users"), "rows": r.get("rows"),
              "seconds": r.get("seconds")} for r in reports]  # fmt: skip
    doc = {
        "parts": parts,
        "world_size": len(reports),
        "users": sum(int(r.get("users") or 0) for r in reports),
        "served_by": served,
        "metadata": {k: _plain(v) for k, v in metadata.items()},
    }
    folder = Path(reports[0]["out"]).parent
    _drop_stale_parts(folder, len(reports))
    write_json(doc, folder / MANIFEST)


def _plain(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
