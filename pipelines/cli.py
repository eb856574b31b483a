"""The ``recsys-mtl`` command: the top-level parser, built from :mod:`pipelines.commands`.

Exit codes: 0 ok; 2 bad input or bad config (one line naming the file, line or key); 1 the
machine's state (a full disk, a read-only folder: one line naming the path and the cause) or
anything else. A user's mistake or the machine's state never prints a traceback. Each command imports what it works with only
when it runs (torch, polars, mlflow, the stages), so that ``--help`` answers at once.

Under ``torchrun`` (``run`` and ``score``) every process joins the job's process groups first
(:mod:`recsys_mtl.train.distributed`) and leaves them through its ``teardown`` on every exit;
the entry point is wrapped in torchrun's ``@record``, so an unexpected error's traceback
reaches torchrun's report naming the failed rank; SIGTERM (torchrun stopping the job) ends the
MLflow run FAILED with the reason and exits 143. An error every process ends with (a config
key, an option, a file they all read) is printed once, by rank 0; an error one process alone
sees is printed by that process (:mod:`recsys_mtl.train.endings`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback
from typing import Any, NoReturn

from pipelines.commands import COMMANDS
from pipelines.commands.common import Help
from pipelines.commands.run import run_command  # re-exported: scripts and tests run configs
from pipelines.process import setup_logging
from pipelines.ranks import torchrun_world
from recsys_mtl import __version__
from recsys_mtl.errors import UserError
from recsys_mtl.io import machine_error

__all__ = ["build_parser", "main", "run_command"]

DESCRIPTION = """\
Multi-task recommendation on rating logs (MovieLens and anything shaped like it).

A run is a staged batch pipeline, ingest -> features -> split -> train -> evaluate, configured by
one YAML file: unchanged stages are reused, a killed run resumes, and every run is tracked in
MLflow (./mlflow.db unless MLFLOW_TRACKING_URI is set) for comparison in the MLflow UI."""
EPILOG = """\
examples:
  recsys-mtl run configs/quickstart.yaml                   # synthetic data, no download
  recsys-mtl run configs/ml100k.yaml --set data.path=data/ml-100k --set model.name=bellkor
  recsys-mtl data ingest ratings.csv --out checked/ --separator ";" --user-col customer
  recsys-mtl list                                          # rankers, weightings, tasks, splits

exit codes: 0 ok; 2 bad input or bad config, with one line naming the file, line or key and what
is wrong (no traceback); 1 the machine's state (a full disk, a read-only folder, a tracking server
or download that does not answer), also one line naming the path or address; 1 with a traceback
only for a bug."""


class _TopHelp(Help, argparse.RawDescriptionHelpFormatter):
    """The top-level help keeps the description's line breaks."""


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (exit 2), as every other mistake is: the
    command, what is wrong and where the help is, not the usage block before it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """As argparse's, but arguments no parser knows are named by the command they follow."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self._innermost(parsed).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def _innermost(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub)command parser that ``parsed`` reached."""
        parser: argparse.ArgumentParser = self
        while True:
            sub = next((a for a in parser._actions
                        if isinstance(a, argparse._SubParsersAction)), None)  # fmt: skip
            name = getattr(parsed, sub.dest, None) if sub is not None and sub.dest else None
            if sub is None or name not in sub.choices:
                return parser
            parser = sub.choices[name]


def build_parser() -> argparse.ArgumentParser:
    """``recsys-mtl`` and every command of :data:`pipelines.commands.COMMANDS`."""
    p = _Parser(prog="recsys-mtl", description=DESCRIPTION, epilog=EPILOG, formatter_class=_TopHelp)
    p.add_argument("--version", action="version", version=f"recsys-mtl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command's handler, map its errors to an exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    if torchrun_world() is not None:
        # deferred: torch.distributed's error recording, under torchrun only
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_in_job)(args)
    return _handle(args)


def _handle(args: argparse.Namespace, job: bool = False) -> int:
    """The command's handler, its errors mapped to an exit code (``job``: under torchrun,
    where an unexpected error propagates to ``@record``)."""
    try:
        return args.handler(args)
    except UserError as e:
        return _say(f"recsys-mtl: error: {e}", e.exit_code, job)
    except KeyboardInterrupt:
        return _say("recsys-mtl: interrupted", 130, job)
    except Exception as e:
        machine = machine_error(e)  # a refused write no writer translated: still one line
        if machine is not None:
            return _say(f"recsys-mtl: error: {machine}", machine.exit_code, job)
        if not job:
            traceback.print_exc()
            return 1
        # deferred: the process groups, under torchrun only
        from recsys_mtl.train.endings import stop_line
        from recsys_mtl.train.groups import stopped_during

        if type(e).__name__ == "Terminated":
            return _say(stop_line(str(e)), 143, job)
        stopped = stopped_during(e, wait=0.0)  # a peer gone because the job was stopped
        if stopped is not None:
            return _say(stop_line(str(stopped)), 143, job)
        raise


def _say(line: str, code: int, job: bool = False) -> int:
    """Print ``line`` (to stderr) and return ``code``; in a torchrun job (``job``) only once
    for an error every process ended with (:func:`recsys_mtl.train.endings.first_to_say`)."""
    if job:
        # deferred: the job's store (torch.distributed), under torchrun only
        from recsys_mtl.train.distributed import teardown
        from recsys_mtl.train.endings import STOPPED, first_to_say

        if code in STOPPED:
            # a stopped process leaves its groups before it waits for rank 0's line: rank 0
            # may be in a collective with it, where its own SIGTERM waits until the collective
            # fails
            teardown(clean=False, release=False)
        if not first_to_say(line, code):
            return code
    print(line, file=sys.stderr)
    return code


def _in_job(args: argparse.Namespace) -> int:
    """One process of a torchrun job: join it, run (rank 0) or follow (the others), leave."""
    if args.command not in ("run", "score"):
        return _say(f"recsys-mtl: error: {args.command}: not a command for torchrun (run, score)",
                    2, job=True)  # fmt: skip
    # deferred: torch.distributed and the config, under torchrun only
    from pipelines.execute import follow
    from recsys_mtl.config import load_config
    from recsys_mtl.config.train import DistributedConfig
    from recsys_mtl.train import distributed, endings

    try:
        settings = (
            load_config(args.config, args.overrides).train.distributed
            if args.command == "run" else DistributedConfig()
        )  # fmt: skip
        job = distributed.setup(settings)  # a backend this machine lacks: the user's error
    except UserError as e:  # the same config in every process: printed once (rank 0)
        return _say(f"recsys-mtl: error: {e}", e.exit_code, job=True)
    code: int | None = None
    try:
        if args.command == "run" and not job.leader:
            code = _handle(argparse.Namespace(handler=lambda _: follow()), job=True)
        else:
            code = _handle(args, job=True)
        return code
    finally:
        # every exit (a result, a user's error, an exception, SIGTERM) leaves the job here; a
        # SIGTERM from now on must not cut the leaving short
        with contextlib.suppress(ValueError):  # not the main thread: nothing to change
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if code is None:  # an unexpected error (to @record): the others' SIGTERM names this rank
            code = 1
            endings.record(code, "an unexpected error")
        stopped = code in endings.STOPPED  # torchrun (or the user) stops every process
        distributed.teardown(clean=code == 0, release=args.command == "run" and not stopped)


if __name__ == "__main__":
    sys.exit(main())
