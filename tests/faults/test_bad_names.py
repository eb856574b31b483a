"""A name or a file the user gives that the registry or the model cannot take: one line naming
the option (and the file and line), exit 2, nothing registered and nothing written. Through the
real ``recsys-mtl`` entry point, on a real trained run and a real MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write
from tests.pipelines.test_register import tiny_run
from tests.stores import fresh_store


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("bad_names"))


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    db = tmp_path / "registry.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(db))
    return db


def _one_line(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith("recsys-mtl: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _registered(db: Path) -> list[str]:
    if not db.exists():
        return []
    from mlflow import MlflowClient

    return [m.name for m in MlflowClient(tracking_uri=f"sqlite:///{db}").search_registered_models()]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--name", "a?b#c"], ["--name 'a?b#c'", "letters, digits"]),
        (["--name", "team/recs"], ["--name 'team/recs'", "letters, digits"]),
        (["--name", "recs:v1"], ["--name 'recs:v1'"]),
        (["--name", ""], ["--name ''"]),
        (["--name", " recs"], ["--name ' recs'"]),
        (["--name", "recs "], ["--name 'recs '"]),
        (["--name", "a\tb"], ["--name 'a\\tb'"]),
        (["--name", "x" * 257], ["at most 256"]),
        (["--name", "recs", "--alias", "latest"], ["--alias 'latest'", "reserved"]),
        (["--name", "recs", "--alias", "LATEST"], ["--alias 'LATEST'", "reserved"]),
        (["--name", "recs", "--alias", "v3"], ["--alias 'v3'", "reserved"]),
        (["--name", "recs", "--alias", "best model"], ["--alias 'best model'", "letters"]),
        (["--name", "recs", "--alias", "champ!"], ["--alias 'champ!'", "'_' and '-'"]),
        (["--name", "recs", "--alias", ""], ["--alias ''"]),
        (["--name", "recs", "--tag", "owner"], ["--tag 'owner'", "KEY=VALUE"]),
        (["--name", "recs", "--tag", "=x"], ["--tag '=x'", "KEY=VALUE"]),
        (["--name", "recs", "--tag", "a?b=1"], ["--tag a?b=1", "tag key"]),
        (["--name", "recs", "--tag", "../up=1"], ["--tag ../up=1", "relative path"]),
        (["--name", "recs", "--tag", "/abs=1"], ["--tag /abs=1", "tag key"]),
    ],
)
def test_a_name_mlflow_cannot_resolve_is_refused_before_registering(
    cli, run_dir, store, args, needles
):
    code, stdout, err = cli("register", run_dir, *args)
    _one_line(code, err, *needles)
    assert stdout == ""
    assert _registered(store) == []


def test_a_good_name_with_every_allowed_character_registers_and_resolves(
    cli, run_dir, store, tmp_path
):
    name = "Recs_v2-final.1 beta"
    code, _, err = cli("register", run_dir, "--name", name, "--alias", "Champion_2-b")
    assert code == 0, err
    assert _registered(store) == [name]
    for uri in (f"models:/{name}/1", f"models:/{name}@Champion_2-b"):
        code, _, err = cli("score", uri, "--top-k", 2, "--out", tmp_path / "r.parquet")
        assert code == 0, (uri, err)


@pytest.mark.parametrize(
    ("files", "args", "needles"),
    [
        # ids of the wrong type: the option, the file and line, the id and the expected type
        ({"u.txt": "3\n\nabc\n7\n"}, ["--users", "u.txt"], ["--users", "u.txt:3", "'abc'",
                                                           "an integer", "1 such id"]),
        ({"u.txt": "user_id\n3\nx1\nx2\n"}, ["--users", "u.txt"], ["u.txt:3", "'x1'", "2 such"]),
        ({"u.csv": "user_id\n3\n4.5\n"}, ["--users", "u.csv"], ["--users", "u.csv:3", "'4.5'"]),
        ({"s.csv": "user,item,rating\n9001,1,5\nbob,2,4\n"}, ["--support", "s.csv"],
         ["--support", "s.csv:3", "user id 'bob'", "an integer"]),
        ({"s.csv": "user,item,rating\n9001,1,5\n9001,film,4\n"}, ["--support", "s.csv"],
         ["--support", "s.csv:3", "item id 'film'", "item ids"]),
        # files that are not there or not readable, named with their option
        ({}, ["--users", "missing.csv"], ["--users", "missing.csv", "no such users file"]),
        ({}, ["--support", "missing.csv"], ["--support", "missing.csv", "no such support file"]),
        ({"u.csv": "id\n3\n"}, ["--users", "u.csv"], ["--users", "u.csv", "no user_id column"]),
        ({"u.parquet": b"not parquet"}, ["--users", "u.parquet"], ["--users", "u.parquet",
                                                                   "cannot read"]),
        ({"s.csv": "user,item\n1,2\n"}, ["--support", "s.csv"], ["--support", "s.csv",
                                                                 "no rating column"]),
        ({}, ["--learner-dir", "nowhere"], ["--learner-dir", "nowhere", "no such folder"]),
        # an empty id names no one to serve: the option, the file and the line
        ({"s.csv": "user,item,rating\n9001,1,5\n  ,2,4\n,3,4\n"}, ["--support", "s.csv"],
         ["--support", "s.csv:3", "the user id is empty", "2 such rows"]),
        ({"s.csv": "user,item,rating\n9001,,5\n"}, ["--support", "s.csv"],
         ["--support", "s.csv:2", "the item id is empty", "1 such row"]),
        ({"m.csv": "user_id,age\n9001,30\n,40\n"}, ["--users-meta", "m.csv"],
         ["--users-meta", "m.csv:3", "the user id is empty"]),
        ({"i.csv": "item_id,genres,year\n,Drama,1999\n"}, ["--items-meta", "i.csv"],
         ["--items-meta", "i.csv:2", "the item id is empty"]),
        # a folder where a file is expected
        ({"d/x.csv": "x"}, ["--support", "d"], ["--support", "is a folder, not a support file"]),
        ({"d/x.csv": "x"}, ["--users", "d"], ["--users", "is a folder, not a users file"]),
        ({"d/x.csv": "x"}, ["--items-meta", "d"], ["--items-meta", "is a folder, not an items"]),
        ({"ml/x.txt": "x"}, ["--learner-dir", "ml"], ["--learner-dir", "not a trained"]),
    ],
)  # fmt: skip
def test_a_file_an_option_reads_is_named_with_the_option(
    cli, run_dir, tmp_path, files, args, needles
):
    for name, text in files.items():
        write(tmp_path / name, text)
    args = [str(tmp_path / a) if not a.startswith("--") else a for a in args]
    out = tmp_path / "recs.parquet"
    code, _, err = cli("score", run_dir, "--top-k", 3, *args, "--out", out)
    _one_line(code, err, *needles)
    assert not out.exists()


def test_wrong_typed_ids_in_a_parquet_file_are_named_by_row(cli, run_dir, tmp_path):
    import polars as pl

    users = tmp_path / "u.parquet"
    pl.DataFrame({"user_id": ["3", "7", "alice"]}).write_parquet(users)
    code, _, err = cli(
        "score", run_dir, "--top-k", 3, "--users", users, "--out", tmp_path / "r.parquet"
    )
    _one_line(code, err, "--users", f"{users} row 3", "'alice'")


def test_an_out_path_that_cannot_be_a_file_is_named(cli, run_dir, tmp_path):
    blocker = write(tmp_path / "file", "x")
    code, _, err = cli("score", run_dir, "--top-k", 3, "--out", blocker / "r.parquet")
    _one_line(code, err, "--out", f"{blocker} is a file")
    (tmp_path / "dir.parquet").mkdir()
    code, _, err = cli("score", run_dir, "--top-k", 3, "--out", tmp_path / "dir.parquet")
    _one_line(code, err, "--out", "is a folder")
