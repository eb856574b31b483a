"""The packaged model through real MLflow parts: a pipeline run against a real ``mlflow server``
logs a pyfunc model; the registry versions it; a fresh process and ``mlflow models serve`` on
127.0.0.1 answer like the run loaded in-process. One server for the session."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.cli import run_command
from recsys_mtl.runs.batch import recommend, score_pairs
from recsys_mtl.runs.load import load_run
from tests.conftest import REPO, tiny_config
from tests.servers import MLFLOW, free_port, process, wait_until_up

pytestmark = pytest.mark.slow

SYN = {"format": "synthetic", "synthetic": {"users": 40, "items": 60, "ratings": 900}}


@pytest.fixture(scope="module")
def server(mlflow_server_uri: str) -> str:
    return mlflow_server_uri


@pytest.fixture(scope="module")
def tracked(server, tmp_path_factory):
    """A pipeline run tracked on the server, and its model registered as ``recs`` version 1."""
    base = tmp_path_factory.mktemp("tracked")
    cfg = tiny_config(
        base,
        SYN,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=["rating", "interaction"],
        train={"epochs": 2, "patience": 1, "batch_size": 256, "lr": 0.02},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
        tracking={"enabled": True, "experiment": "pyfunc"},
    )
    with pytest.MonkeyPatch.context() as mp, contextlib.chdir(base):
        mp.setenv("MLFLOW_TRACKING_URI", server)
        summary = run_command(str(cfg), [], str(base / "run"), False)
        from recsys_mtl.tracking.model import register

        version = register(base / "run", "recs")
    return base / "run", summary, version


@pytest.fixture
def on_server(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    import mlflow

    mlflow.set_tracking_uri(server)
    return server


def _requests(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = run.user_ids.head(5).to_list()
    items = run.item_ids.head(5).to_list()
    pairs = pd.DataFrame({"user_id": [*users, 987654], "item_id": [*items[::-1], items[0]]})
    topk = pd.DataFrame({"user_id": [users[0], users[1], 987654], "k": [3, 2, 2]})
    return pairs, topk


def _expected(run, topk: pd.DataFrame) -> pl.DataFrame:
    want, _ = recommend(run, 3, users=pl.Series(topk["user_id"].tolist()))
    ks = pl.DataFrame({"user_id": topk["user_id"].tolist(), "k": topk["k"].tolist()})
    return want.join(ks, on="user_id").filter(pl.col("rank") <= pl.col("k")).drop("k")


def _same(got: pd.DataFrame, want: pl.DataFrame) -> None:
    got_pl = pl.from_pandas(got).select(want.columns).cast(want.schema)
    assert_frame_equal(got_pl, want, check_exact=False, abs_tol=1e-5)


def test_a_tracked_run_logs_a_pickle_free_pyfunc_model_that_predicts_like_the_run(
    tracked, on_server
):
    import mlflow

    run_dir, summary, _ = tracked
    run = load_run(run_dir)
    assert summary["mlflow"]["model_uri"].startswith("models:/m-")
    model = mlflow.pyfunc.load_model(f"runs:/{summary['mlflow']['run_id']}/model")
    pairs, topk = _requests(run)
    _same(
        model.predict(pairs),
        score_pairs(run, pl.Series(pairs["user_id"]), pl.Series(pairs["item_id"])),
    )
    _same(model.predict(topk), _expected(run, topk))
    blended = model.predict(pairs, params={"blend": "rating=1"})
    lo, hi = run.ctx.rating_scale
    assert blended["score"].to_numpy() == pytest.approx(
        (blended["score_rating"] - lo) / (hi - lo), abs=1e-5
    )
    sig = model.metadata.signature.to_dict()
    assert "user_id" in sig["inputs"] and "score_interaction" in sig["outputs"]
    local = Path(mlflow.artifacts.download_artifacts(summary["mlflow"]["model_uri"]))
    files = [p.name for p in local.rglob("*") if p.is_file()]
    assert "weights.pt" in files and not [f for f in files if f.endswith((".pkl", ".pickle"))]
    with pytest.raises(mlflow.exceptions.MlflowException, match="user_id and k"):
        model.predict(pd.DataFrame({"user_id": [1]}))
    for request in (pairs, topk):  # a bad blend names the pyfunc's parameter, not a CLI flag
        with pytest.raises(mlflow.exceptions.MlflowException) as bad:
            model.predict(request, params={"blend": "like=1"})
        assert str(bad.value).startswith("params['blend']: unknown task 'like'"), bad.value
    # an empty batch (a serving client's): no rows, the columns of its kind
    empty = model.predict(pairs.head(0))
    assert empty.empty and list(empty.columns) == list(model.predict(pairs).columns)
    empty = model.predict(topk.head(0))
    assert empty.empty and list(empty.columns) == list(model.predict(topk).columns)


def test_registered_versions_score_like_the_run_directory(tracked, on_server, cli, tmp_path):
    run_dir, _, first = tracked
    assert first["model_uri"] == "models:/recs/1"
    code, stdout, _ = cli("register", run_dir, "--name", "recs", "--alias", "champion")
    assert code == 0 and json.loads(stdout)["version"] == 2
    code, _, err = cli("score", "models:/recs/2", "--top-k", 4, "--out", tmp_path / "a.parquet")
    assert code == 0, err
    code, _, _ = cli("score", run_dir, "--top-k", 4, "--out", tmp_path / "b.parquet")
    assert code == 0
    assert_frame_equal(
        pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    )
    meta = pl.read_parquet_metadata(tmp_path / "a.parquet")
    assert meta["recsys_mtl.model_version"] == "recs/2"
    assert (
        meta["recsys_mtl.run_id"]
        == json.loads((run_dir / "summary.json").read_text())["mlflow"]["run_id"]
    )
    code, _, err = cli(
        "score", "models:/recs@champion", "--top-k", 4, "--out", tmp_path / "d.parquet"
    )  # an alias through the server resolves to the version it points at
    assert code == 0, err
    assert_frame_equal(
        pl.read_parquet(tmp_path / "d.parquet"), pl.read_parquet(tmp_path / "a.parquet")
    )
    assert pl.read_parquet_metadata(tmp_path / "d.parquet")["recsys_mtl.model_version"] == "recs/2"
    code, _, err = cli("score", "models:/recs/9", "--top-k", 4, "--out", tmp_path / "c.parquet")
    assert code == 2 and "models:/recs/9" in err and len(err.strip().splitlines()) == 1


def test_a_fresh_process_loads_the_registered_model_from_the_server(tracked, server, tmp_path):
    run_dir, _, _ = tracked
    run = load_run(run_dir)
    pairs, topk = _requests(run)
    pairs.to_json(tmp_path / "pairs.json", orient="split")
    topk.to_json(tmp_path / "topk.json", orient="split")
    script = (
        "import sys, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/recs/1')\n"
        "for name in ('pairs', 'topk'):\n"
        "    df = pd.read_json(f'{name}.json', orient='split')\n"
        "    m.predict(df).to_json(f'{name}.out.json', orient='split')\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    got_pairs = pd.read_json(tmp_path / "pairs.out.json", orient="split")
    got_topk = pd.read_json(tmp_path / "topk.out.json", orient="split")
    _same(got_pairs, score_pairs(run, pl.Series(pairs["user_id"]), pl.Series(pairs["item_id"])))
    _same(got_topk, _expected(run, topk))


def test_mlflow_models_serve_answers_the_same_over_http(tracked, server, tmp_path):
    run_dir, _, _ = tracked
    run = load_run(run_dir)
    pairs, topk = _requests(run)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PYTHONPATH": str(REPO)}
    # the server runs uvicorn from the environment's bin folder, as in an activated venv
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        MLFLOW, "models", "serve", "-m", "models:/recs/1", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port), "-w", "1",
    ]  # fmt: skip
    with process(cmd, tmp_path, env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", proc, "mlflow models serve", timeout=180)

        def ask(frame: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
            body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
            if params:
                body["params"] = params
            req = urllib.request.Request(
                f"{url}/invocations", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(req, timeout=60) as r:
                return pd.DataFrame(json.loads(r.read())["predictions"])

        _same(
            ask(pairs), score_pairs(run, pl.Series(pairs["user_id"]), pl.Series(pairs["item_id"]))
        )
        _same(ask(topk), _expected(run, topk))
        only_rating = ask(pairs, {"blend": "rating=1"})
        want = score_pairs(
            run, pl.Series(pairs["user_id"]), pl.Series(pairs["item_id"]), "rating=1"
        )
        _same(only_rating, want)
