"""Bad input: each row-level problem is quarantined with its reason; structural ones exit 2."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from recsys_mtl.config import DataConfig
from recsys_mtl.data.ingest import ingest
from tests.conftest import write


def _csv_folder(tmp_path, ratings: bytes | str, movies: str | None = None):
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", ratings)
    if movies is not None:
        write(root / "movies.csv", movies)
    return root


def test_every_bad_row_is_quarantined_with_its_reason_and_counts_add_up(tmp_path):
    ratings = (
        b"userId,movieId,rating,timestamp\n"
        b"1,10,4.0,100\n"  # kept
        b"1,10,2.0,50\n"  # older duplicate of the line above: duplicate_pair
        b"2,10,9.0,100\n"  # rating_out_of_scale
        b"2,11,3.0,yesterday\n"  # invalid_ts
        b"2,12,3.0\n"  # malformed_line (3 fields)
        b"3,10,,100\n"  # missing_rating
        b"\xff\xfe,10,3.0,100\n"  # bad_encoding
        b"4,99,3.0,100\n"  # unknown_item (not in movies.csv)
        b"\n"  # blank line: not a row
        b"5,11,0.5,100\n"  # kept
    )
    movies = "movieId,title,genres\n10,A (1990),Drama\n11,B (1991),Comedy\n12,C (1992),Drama\n"
    report = ingest(
        DataConfig(path=str(_csv_folder(tmp_path, ratings, movies))), tmp_path / "out"
    ).report
    inter = report["interactions"]
    assert inter["rows_quarantined"] == {
        "bad_encoding": 1,
        "duplicate_pair": 1,
        "invalid_ts": 1,
        "malformed_line": 1,
        "missing_rating": 1,
        "rating_out_of_scale": 1,
        "unknown_item": 1,
    }
    assert inter["rows_read"] == inter["rows_kept"] + sum(inter["rows_quarantined"].values()) == 9
    assert inter["blank_lines"] == 1
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet").sort("line")
    assert q.filter(pl.col("reason") == "duplicate_pair")["raw"].to_list() == ["1,10,2.0,50"]
    assert q.filter(pl.col("reason") == "malformed_line")["line"].to_list() == [6]
    kept = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert kept.select("user_id", "item_id", "rating").rows() == [(1, 10, 4.0), (5, 11, 0.5)]


def test_duplicates_keep_the_latest_rating_and_on_equal_time_the_later_line(tmp_path):
    root = tmp_path / "ml-100k"
    write(root / "u.data", "1\t10\t1\t300\n1\t10\t2\t100\n1\t10\t3\t300\n")
    kept = ingest(DataConfig(path=str(root)), tmp_path / "out")
    df = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert df["rating"].to_list() == [3.0]
    assert kept.report["interactions"]["rows_quarantined"] == {"duplicate_pair": 2}


def test_ratings_of_users_missing_from_the_users_file_are_quarantined(tmp_path):
    root = tmp_path / "ml-1m"
    write(root / "ratings.dat", "1::10::4::100\n7::10::4::100\n")
    write(root / "users.dat", "1::F::1::10::48067\n1::M::18::2::11111\nbroken line\n")
    report = ingest(DataConfig(path=str(root)), tmp_path / "out").report
    assert report["interactions"]["rows_quarantined"] == {"unknown_user": 1}
    assert report["side_tables"]["users"]["rows_quarantined"] == {
        "duplicate_id": 1,
        "malformed_line": 1,
    }
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert set(q["table"]) == {"interactions", "users"}


def test_declared_rating_scale_overrides_the_layout_default(tmp_path):
    root = tmp_path / "ml-100k"
    write(root / "u.data", "1\t10\t5\t1\n1\t11\t10\t2\n")
    report = ingest(DataConfig(path=str(root), rating_scale=(1, 10)), tmp_path / "out").report
    assert report["interactions"]["rows_kept"] == 2


def test_structural_problems_exit_2_with_one_line_naming_the_file(tmp_path, cli):
    folder = _csv_folder(tmp_path, "user,item,score,time\n1,2,3,4\n")
    code, _, err = cli("data", "ingest", folder, "--out", tmp_path / "o")
    assert code == 2
    assert err.count("\n") == 1 and "ratings.csv:1: header is 'user,item,score,time'" in err
    code, _, err = cli("data", "ingest", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 2 and "data path does not exist" in err


def test_a_file_with_no_usable_ratings_exits_2_and_names_the_main_reason(tmp_path, cli):
    root = tmp_path / "ml-100k"
    write(root / "u.data", "a b c\nd e f\n")
    code, _, err = cli("data", "ingest", root, "--out", tmp_path / "o")
    assert code == 2 and "no usable ratings" in err and "malformed_line" in err


def test_missing_generic_column_exits_2_naming_the_config_key(tmp_path, cli):
    path = write(tmp_path / "log.csv", "user_id,item_id,score\n1,2,3\n")
    code, _, err = cli("data", "ingest", path, "--out", tmp_path / "o")
    assert code == 2
    assert "column 'rating' (--rating-col) not found" in err


@pytest.mark.slow
def test_the_installed_command_prints_no_traceback_for_bad_input(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "data",
            "ingest",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "data path does not exist" in proc.stderr


def test_clean_files_and_files_needing_line_mode_give_the_same_tables(tmp_path):
    lines = ["1::10::4::100", "1::20::3::200", "2::10::5::300"]
    clean = write(tmp_path / "a" / "ratings.dat", "\n".join(lines) + "\n")
    messy = write(
        tmp_path / "b" / "ratings.dat", "\n".join([*lines[:2], "", lines[2], "junk"]) + "\n"
    )
    ingest(DataConfig(path=str(clean.parent), format="ml-10m"), tmp_path / "oa")
    report = ingest(DataConfig(path=str(messy.parent), format="ml-10m"), tmp_path / "ob").report
    a = pl.read_parquet(tmp_path / "oa" / "interactions.parquet")
    b = pl.read_parquet(tmp_path / "ob" / "interactions.parquet")
    assert a.equals(b) and a.height == 3
    assert report["interactions"]["rows_quarantined"] == {"malformed_line": 1}
    q = pl.read_parquet(tmp_path / "ob" / "quarantine.parquet")
    assert q.select("line", "raw").rows() == [(5, "junk")]


def test_value_rejects_in_a_clean_file_keep_their_exact_line_text(tmp_path):
    root = tmp_path / "ml-100k"
    write(root / "u.data", "1\t10\t4\t100\n1\t11\t7\t100\n1\t10\t2\t50\n")
    ingest(DataConfig(path=str(root)), tmp_path / "o")
    q = pl.read_parquet(tmp_path / "o" / "quarantine.parquet").sort("line")
    assert q.select("line", "reason", "raw").rows() == [
        (2, "rating_out_of_scale", "1\t11\t7\t100"),
        (3, "duplicate_pair", "1\t10\t2\t50"),
    ]


def test_duplicates_with_string_ids_keep_the_latest(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,rating,ts\nu1,a,1,5\nu1,a,3,9\nu2,a,2,1\n")
    report = ingest(DataConfig(path=str(path)), tmp_path / "o").report
    df = pl.read_parquet(tmp_path / "o" / "interactions.parquet")
    assert df.rows() == [("u1", "a", 3.0, 9), ("u2", "a", 2.0, 1)]
    assert report["interactions"]["rows_quarantined"] == {"duplicate_pair": 1}
