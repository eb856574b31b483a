"""Edges of the input a log may have, each read alike streamed and in memory and without losing
a row: a header that ends with the separator, a header with a column of no name, missing values
spelled with spaces around them (CSV and Parquet), and the missing-value spellings of GroupLens
rating files (the reasons of generic logs, ``missing_<field>``)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from recsys_mtl.config import DataConfig
from recsys_mtl.data.ingest import ingest, resolve_layout
from recsys_mtl.data.stream import scan_generic
from recsys_mtl.errors import UserError
from tests.conftest import write

TABLES = ("interactions", "users", "items", "quarantine")
SAID = "the header ends with the separator"


def _both(tmp_path: Path, path: Path, **data) -> tuple[dict, pl.DataFrame, list[tuple]]:
    """Ingest ``path`` streamed and in memory (every row kept or quarantined); assert equal
    tables and reports. Returns the report, the kept rows and the quarantine's (line, reason)."""
    cfg = DataConfig(path=str(path), max_quarantine_share=1.0, **data)
    streamed = ingest(cfg, tmp_path / "streamed", streaming=True).report
    eager = ingest(cfg, tmp_path / "eager", streaming=False).report
    assert streamed == eager
    for name in TABLES:
        a = pl.read_parquet(tmp_path / "streamed" / f"{name}.parquet")
        assert a.equals(pl.read_parquet(tmp_path / "eager" / f"{name}.parquet")), name
    kept = pl.read_parquet(tmp_path / "eager" / "interactions.parquet")
    q = pl.read_parquet(tmp_path / "eager" / "quarantine.parquet")
    assert q.columns == ["table", "source", "line", "reason", "raw"]
    rejected = q.sort("line").select("line", "reason").rows()
    return streamed, kept, rejected


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if SAID in r.getMessage()]


def test_a_header_ending_with_the_separator_opens_no_column(tmp_path, caplog):
    caplog.set_level(logging.INFO, "recsys_mtl.ingest")
    # the data lines do not end so: every line was malformed_line (no usable ratings, exit 2)
    rows = [f"{u % 40},{u},{1 + u % 5},{881250949 + u}" for u in range(1200)]
    log = write(tmp_path / "a" / "log.csv", "user_id,item_id,rating,ts,\n" + "\n".join(rows))
    _, kept, rejected = _both(tmp_path / "a", log)
    assert kept.height == 1200 and rejected == [] and kept.row(0) == (0, 0, 1.0, 881250949)
    said = _said(caplog)
    assert len(said) == 2 and "log.csv" in said[0] and "','" in said[0]  # once an ingest
    cfg = DataConfig(path=str(log))
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed  # it still streams typed

    # some lines end so and some not: both are read; a field after it is one too many, and a
    # line a field short (an empty time without the separator after it) misses its time
    caplog.clear()
    mixed = "user;item;stars;when;\n1;2;4;100\n2;3;5;101;\n3;3;5;102;x\n4;3;5;\n5;3;5;103\n"
    log = write(tmp_path / "b" / "log.csv", mixed)
    cols = {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"}
    _, kept, rejected = _both(tmp_path / "b", log, separator=";", columns=cols)
    assert kept.rows() == [(1, 2, 4.0, 100), (2, 3, 5.0, 101), (5, 3, 5.0, 103)]
    assert rejected == [(4, "malformed_line"), (5, "missing_ts")]
    assert len(_said(caplog)) == 2  # the streamed ingest fell back to the text reader: once

    # a header and every data line ending so: as before, with the line that says so
    caplog.clear()
    log = write(tmp_path / "c" / "log.csv", "user_id,item_id,rating,ts,\n1,2,4,100,\n2,3,5,101,\n")
    _, kept, rejected = _both(tmp_path / "c", log)
    assert kept.rows() == [(1, 2, 4.0, 100), (2, 3, 5.0, 101)] and rejected == []
    assert len(_said(caplog)) == 2


def test_a_header_column_without_a_name_stops_ingest_only_where_it_is_read(tmp_path):
    rows = "1,2,x,,4,100\n2,3,y,,5,101\n"
    # two columns of no name that no field reads: ignored (in memory, a polars error before)
    log = write(tmp_path / "a" / "log.csv", "user_id,item_id,,,rating,ts\n" + rows)
    _, kept, _ = _both(tmp_path / "a", log)
    assert kept.rows() == [(1, 2, 4.0, 100), (2, 3, 5.0, 101)]
    # read by position: the mapping names it
    log = write(tmp_path / "b" / "log.csv", "user_id,,rating,ts\n1,2,4,100\n2,3,5,101\n")
    _, kept, _ = _both(tmp_path / "b", log, columns={"item_id": 1})
    assert kept.rows() == [(1, 2, 4.0, 100), (2, 3, 5.0, 101)]
    # read by a name the header does not hold: one error naming the file, line 1 and the column
    for streaming in (True, False):
        cfg = DataConfig(path=str(log))
        with pytest.raises(UserError) as e:
            ingest(cfg, tmp_path / f"out-{streaming}", streaming=streaming)
        msg = str(e.value)
        assert msg.startswith(f"{log.absolute()}:1: the header's column 1 (0-based) has no name")
        assert "'user_id,,rating,ts'" in msg and "data.columns.item_id" in msg
        assert "\n" not in msg


def test_a_header_naming_a_read_column_twice_stops_ingest(tmp_path):
    """Two columns of the name a field reads: exit 2 naming both positions (the reader used
    to take one of them in silence); a position picks one, and a repeated name no field reads
    is no matter."""
    rows = "1,2,4,3,100\n2,3,5,1,101\n"
    log = write(tmp_path / "log.csv", "user_id,item_id,rating,rating,ts\n" + rows)
    for streaming in (True, False):
        with pytest.raises(UserError) as e:
            ingest(DataConfig(path=str(log)), tmp_path / f"out-{streaming}", streaming=streaming)
        msg = str(e.value)
        assert msg.startswith(f"{log.absolute()}:1: the header names 2 columns 'rating'")
        assert "(positions 2, 3, from 0)" in msg and "data.columns.rating" in msg
    _, kept, _ = _both(tmp_path / "b", log, columns={"rating": 3})
    assert kept.rows() == [(1, 2, 3.0, 100), (2, 3, 1.0, 101)]
    log = write(tmp_path / "c" / "log.csv", "user_id,item_id,x,rating,x,ts\n1,2,a,4,b,100\n")
    _, kept, _ = _both(tmp_path / "c", log)
    assert kept.rows() == [(1, 2, 4.0, 100)]


def test_missing_values_with_spaces_around_them_are_missing_never_ids(tmp_path):
    log = write(
        tmp_path / "a" / "log.csv",
        'user_id,item_id,rating,ts\n1,2,4,100\n" NA ",2,4,100\n1," null",4,100\n'
        '2,3," NA ",100\n2,4,4," null "\n 2 ,5, NA ,100\n3,3,4,100\n',
    )
    _, kept, rejected = _both(tmp_path / "a", log)
    # " NA " was the user " NA ", and made every user id a string
    assert kept.schema["user_id"] == pl.Int64 and kept.rows() == [
        (1, 2, 4.0, 100),
        (3, 3, 4.0, 100),
    ]
    assert rejected == [(3, "missing_user_id"), (4, "missing_item_id"), (5, "missing_rating"),
                        (6, "missing_ts"), (7, "missing_rating")]  # fmt: skip

    # a Parquet column of text ids: " NA " and " null" are no users
    parquet = tmp_path / "b" / "log.parquet"
    parquet.parent.mkdir()
    pl.DataFrame(
        {"user_id": ["u1", " NA ", "u2", " null"], "item_id": [1, 2, 3, 4],
         "rating": [4.0, 4.0, 3.0, 5.0], "ts": [1, 2, 3, 4]}
    ).write_parquet(parquet)  # fmt: skip
    report, kept, rejected = _both(tmp_path / "b", parquet)
    assert kept["user_id"].to_list() == ["u1", "u2"] and report["users"] == 2
    assert rejected == [(2, "missing_user_id"), (4, "missing_user_id")]

    # every column text: integer ids stay integers, ratings and times are missing too
    parquet = tmp_path / "c" / "log.parquet"
    parquet.parent.mkdir()
    pl.DataFrame(
        {"user_id": ["1", " NA ", "2", "3", "4"], "item_id": ["1", "2", " None", "4", "5"],
         "rating": ["4", "4", "4", " NA ", "4"], "ts": ["1", "2", "3", "4", " null "]}
    ).write_parquet(parquet)  # fmt: skip
    _, kept, rejected = _both(tmp_path / "c", parquet)
    assert kept.schema["user_id"] == pl.Int64 and kept.rows() == [(1, 1, 4.0, 1)]
    assert rejected == [(2, "missing_user_id"), (3, "missing_item_id"), (4, "missing_rating"),
                        (5, "missing_ts")]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "sep", "header"),
    [("u.data", "\t", ""), ("ratings.dat", "::", ""),
     ("ratings.csv", ",", "userId,movieId,rating,timestamp\n")],
)  # fmt: skip
def test_grouplens_files_say_missing_for_missing_values_as_generic_logs_do(
    tmp_path, name, sep, header
):
    lines = [["1", "2", "4", "100"], ["NA", "2", "4", "100"], ["1", "null", "4", "100"],
             ["2", "3", "NA", "100"], ["2", "4", "4", "nan"], ["", "5", "4", "100"],
             ["3", "3", "nan", "100"], ["3", "4", "5", "NULL"], ["3", "5", "5", "101"]]  # fmt: skip
    folder = tmp_path / "ml"
    write(folder / name, header + "".join(sep.join(f) + "\n" for f in lines))
    if name == "ratings.dat":  # ml-1m: users.dat beside it
        write(
            folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
        )
    report, kept, rejected = _both(tmp_path, folder)
    first = 1 + bool(header)
    assert kept.rows() == [(1, 2, 4.0, 100), (3, 5, 5.0, 101)]
    assert [(line - first + 1, reason) for line, reason in rejected] == [
        (2, "missing_user_id"), (3, "missing_item_id"), (4, "missing_rating"), (5, "missing_ts"),
        (6, "missing_user_id"), (7, "rating_out_of_scale"),  # nan: a number, not finite
        (8, "missing_ts"),
    ]  # fmt: skip
    assert not any(r.startswith("invalid_") for r in report["interactions"]["rows_quarantined"])


def test_grouplens_side_tables_say_missing_for_missing_ids(tmp_path):
    """u.user and u.item lines whose id (or age) spells a missing value are ``missing_<field>``
    in the quarantine, as in the rating files (they were ``invalid_<field>``)."""
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "1\t1\t4\t100\n2\t2\t5\t101\n")
    write(
        folder / "u.user", "1|24|M|technician|85711\nNA|53|F|other|94043\n2|null|M|writer|32067\n"
    )
    item = "|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    write(folder / "u.item", "1|A (1995)" + item + "NaN|B (1995)" + item + "2|C (1995)" + item)
    _both(tmp_path, folder)
    q = pl.read_parquet(tmp_path / "eager" / "quarantine.parquet")
    reasons = q.filter(pl.col("table") != "interactions").sort("table", "line")
    assert reasons.select("table", "line", "reason").rows() == [
        ("items", 2, "missing_item_id"), ("users", 2, "missing_user_id"), ("users", 3, "missing_age"),
    ]  # fmt: skip
