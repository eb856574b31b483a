"""Fixtures of the pipeline suites: one real ``mlflow server`` for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture(scope="session")
def mlflow_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (its own SQLite store and artifacts), started once
    for every suite that tracks to a server: each keeps to experiments and registered model
    names of its own (``pyfunc`` / ``recs``, ``served``, ``tune-test`` / ``tuned``)."""
    with servers.mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as (uri, _):
        yield uri
