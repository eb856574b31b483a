"""Fresh MLflow SQLite stores without the wait: MLflow creates a store by running its schema
migrations, about a second per new file (more on a busy machine). :func:`fresh_store` copies a
store migrated once per test process instead, with its ``Default`` experiment set as a store
created there and then would have it. Tests about creating a store (the default
``./mlflow.db``, two first runs racing to create one, the migration log lines) keep creating
theirs."""

from __future__ import annotations

import atexit
import logging
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

_TEMPLATE: list[Path] = []


def _template() -> Path:
    """The migrated empty store of this process (made on first use, removed at exit)."""
    if not _TEMPLATE:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, True)
        db = folder / "mlflow.db"
        # quietly: the migrations' log lines would land in the output of the test asking
        loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # migrates it
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
        _TEMPLATE.append(db)
    return _TEMPLATE[0]


def fresh_store(db: Path) -> str:
    """A new, empty, migrated store at ``db``; returns its ``sqlite:///`` URI. Its ``Default``
    experiment is created now and keeps its artifacts in ``mlruns/0`` beside ``db`` (MLflow
    puts them in ``mlruns/0`` of the folder it works in)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), db)
    location = str(db.parent.resolve() / "mlruns" / "0")
    now = int(time.time() * 1000)
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ?, creation_time = ?,"
            " last_update_time = ? WHERE experiment_id = 0",
            (location, now, now),
        )
    con.close()
    return f"sqlite:///{db}"
