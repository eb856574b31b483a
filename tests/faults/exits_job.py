"""One process of a 2-process torchrun job that ends a chosen way, for the exit-path tests of
tests/faults/test_distributed.py: ``python -m tests.faults.exits_job COMMAND CONFIG HOW RANK``.

The command's handler (``run``: rank 0's, the others wait for its announcements; ``score``:
every process's, which first use the training group together) is replaced by one that on
process ``RANK`` returns (``ok``), raises a user's error (``user``) or another exception
(``crash``); with ``stopped`` process ``RANK`` raises a user's error while the others wait
until torchrun stops them; with ``everyone`` every process raises the same user's error;
with ``blocked`` rank 0 waits in a collective that process ``RANK`` never joins, while
``RANK`` writes ``ready`` and sleeps, both until torchrun is stopped.
Everything else is the command line's own path (:func:`pipelines.cli.main`). At
its exit each process prints how many gloo threads it still has: leaving the job must have
ended them all."""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path


def _gloo_threads() -> int:
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()]
    return sum(1 for n in names if "gloo" in n)


def _report() -> None:
    print(f"rank {os.environ['RANK']}: gloo threads at exit: {_gloo_threads()}", file=sys.stderr,
          flush=True)  # fmt: skip


def main() -> int:
    import torch
    from torch.distributed.elastic.multiprocessing.errors import record

    from pipelines import cli
    from recsys_mtl.errors import UserError
    from recsys_mtl.train import distributed

    command, config, how, rank = sys.argv[1:5]
    argv = ["run", config] if command == "run" else ["score", config, "--top-k", "5", "--out", "s/"]
    args = cli.build_parser().parse_args(argv)

    def handler(_: object) -> int:
        if command == "score":  # every process: the training group in use
            distributed.all_sum(torch.ones(1))
        if how == "blocked":  # rank 0 in a collective, RANK in Python: until the SIGTERM
            if os.environ["RANK"] == rank:
                Path("ready").touch()
                time.sleep(120)
            distributed.all_sum(torch.ones(1))
            return 0
        if how == "everyone":
            raise UserError("a user's error on every rank")
        if os.environ["RANK"] != rank or how == "ok":
            if how == "stopped":  # until torchrun's SIGTERM
                time.sleep(120)
            return 0
        if how in ("user", "stopped"):
            raise UserError(f"a user's error on rank {rank}")
        raise RuntimeError(f"an unexpected error on rank {rank}")

    args.handler = handler
    atexit.register(_report)
    cli.setup_logging()
    return record(cli._in_job)(args)


if __name__ == "__main__":
    sys.exit(main())
