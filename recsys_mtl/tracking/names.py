"""Names MLflow records carry, and where the store is: tags, metric names, the tracking URI.

Every run carries ``recsys_mtl.kind`` (:data:`KIND_TAG`): ``pipeline``, ``stage``, ``trial``
or ``single_task_baseline``, so that tools can filter on it.

Metric names: ``summary.json`` and ``metrics.json`` spell cut-offs with ``@`` (``ranking/hr@10``),
which MLflow does not allow in a metric name. In MLflow the ``@K`` suffix is written ``_at_K``
(``ranking/hr_at_10``); :func:`mlflow_metric_name` and :func:`summary_metric_name` convert
either way, and :func:`canonical_metric_name` accepts either spelling.

The store is ``MLFLOW_TRACKING_URI`` when set, else a SQLite database ``mlflow.db`` in the
working directory. Creating that database runs MLflow's schema migrations, which race each
other when two processes start on a fresh folder at once: a file lock beside the database
(``mlflow.db.lock``, :func:`store_lock`) serializes opening the store.

A tracking server is asked whether it answers before any work starts (:func:`check_store`):
one that does not stops the command with one line naming its URI. MLflow's HTTP retries are
bounded (:func:`bound_http_retries`) so that a server that goes away later costs seconds, not
minutes; :func:`store_unreachable` tells such a failure from any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from recsys_mtl.errors import MachineError, UserError

__all__ = [
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "KINDS",
    "KIND_TAG",
    "STUDY_TAG",
    "TRIAL_STATE_TAG",
    "UNTRACKED_HINT",
    "bound_http_retries",
    "canonical_metric_name",
    "check_store",
    "default_tracking_uri",
    "git_commit",
    "mlflow_metric_name",
    "store_lock",
    "store_unreachable",
    "summary_metric_name",
]

KIND_TAG = "recsys_mtl.kind"
STUDY_TAG = "recsys_mtl.study"  # a tuning trial's (and its study's) study name
TRIAL_STATE_TAG = "trial_state"  # a trial's Optuna state: COMPLETE, PRUNED or FAIL
UNTRACKED_HINT = "or run without tracking: --set tracking.enabled=false"
# MLflow's HTTP client retries 7 times with a doubling back-off (over four minutes against a
# server that is down) and waits 120 s for an answer; these bounds apply unless the user set them
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
CHECK_TIMEOUT = 5.0  # seconds a tracking server has to answer before the work starts
KINDS = ("pipeline", "stage", "trial", "single_task_baseline")
# The MLflow 3 UI opens an experiment on its GenAI overview unless the experiment says it holds
# model training; the UI reads this experiment tag (values genai_development or
# custom_model_development).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ERROR_TAG = "recsys_mtl.error"
_AT = re.compile(r"@(\d+)$")
_AT_BACK = re.compile(r"_at_(\d+)$")


def mlflow_metric_name(name: str) -> str:
    """The MLflow spelling of a metric name: ``ranking/hr@10`` -> ``ranking/hr_at_10``."""
    return _AT.sub(r"_at_\1", name)


def summary_metric_name(name: str) -> str:
    """The ``summary.json`` spelling of an MLflow metric name: ``ranking/hr_at_10`` -> ``ranking/hr@10``."""
    return _AT_BACK.sub(r"@\1", name)


def canonical_metric_name(name: str) -> str:
    """A metric name as a user may type it (``hr@10`` or ``hr_at_10``), in the summary spelling."""
    return summary_metric_name(name.strip())


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///$PWD/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def bound_http_retries() -> None:
    """Bound MLflow's HTTP retries and request timeout (:data:`HTTP_BOUNDS`), each only when its
    environment variable is not set already."""
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


def check_store(uri: str, timeout: float = CHECK_TIMEOUT, hint: str = UNTRACKED_HINT) -> None:
    """Raise :class:`~recsys_mtl.errors.MachineError` (one line naming ``uri``, ending with
    ``hint``: what else the command can do) when the tracking server at an ``http(s)://`` URI
    does not answer within ``timeout`` seconds. Any HTTP answer counts (a server behind a login
    answers 401); other stores are opened by MLflow itself, but a file store MLflow would refuse
    (``file:`` or a plain path, without ``MLFLOW_ALLOW_FILE_STORE=true``) is a
    :class:`~recsys_mtl.errors.UserError` here, in one line, not MLflow's traceback later."""
    _check_file_store(uri)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # the server answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        cause = getattr(e, "reason", e)
        raise MachineError(
            f"the MLflow tracking server at {uri} does not answer ({cause}): start it, set "
            f"MLFLOW_TRACKING_URI to one that runs{', ' + hint if hint else ''}"
        ) from e


def _check_file_store(uri: str) -> None:
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme != "file" and len(scheme) > 1:  # a store of its own (c:\\... is a path)
        return
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1"):
        return
    raise UserError(
        f"the MLflow tracking store {uri} is a file store, which MLflow 3 no longer opens by "
        "default: use a database store (MLFLOW_TRACKING_URI=sqlite:///mlflow.db; "
        "`mlflow migrate-filestore` moves existing runs) or set MLFLOW_ALLOW_FILE_STORE=true"
    )


def store_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says the store cannot be reached: a
    refused or dropped connection, a timeout, retries exhausted."""
    words = ("max retries exceeded", "connection refused", "connection aborted", "timed out")
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        if type(e).__name__ in {"MaxRetryError", "NewConnectionError", "ConnectTimeout"}:
            return True
        if any(w in str(e).lower() for w in words):
            return True
        e = e.__cause__ or e.__context__
    return False


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``DB.lock`` beside a local SQLite store (no-op otherwise)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def git_commit(path: Path | None = None) -> str | None:
    """The git commit of the checkout holding this package (``None`` for an installed copy)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None
