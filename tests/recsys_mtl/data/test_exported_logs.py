"""Logs as pandas, R, spreadsheets and database exports write them, read through
``recsys-mtl data ingest`` and :func:`recsys_mtl.data.ingest.ingest`: integer ids written as
decimals, missing values spelled out, a separator ending every line, RFC 4180 quotes, a date and
a time of day apart under a space separator, side tables with extra columns; and the temporal
split's rule for equal timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recsys_mtl.config import DataConfig, FeaturesConfig, SplitConfig
from recsys_mtl.data.features import build_features
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.splits import split_dataset
from tests.conftest import write
from tests.recsys_mtl.data.test_foreign_logs import synth_ml100k

HEADER = "user_id,item_id,rating,ts\n"


def _ingest(cli, log: Path, out: Path, *flags: str) -> tuple[pl.DataFrame, str]:
    code, _, err = cli("data", "ingest", log, "--out", out, "--max-quarantine-share", "1", *flags)
    assert code == 0 and "Traceback" not in err, err
    return pl.read_parquet(out / "interactions.parquet"), err


def _rejected(out: Path) -> list[tuple[int, str]]:
    q = pl.read_parquet(out / "quarantine.parquet").filter(pl.col("table") == "interactions")
    return q.sort("line").select("line", "reason").rows()


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_integer_ids_written_as_decimals_are_the_integers_they_spell(tmp_path, cli):
    # pandas writes 12.0 for an integer column that held a NaN: 12.0 and 12 are one user, and
    # (12.0, 3.0) and (12, 3) one pair (the later rating is kept)
    log = write(tmp_path / "pandas.csv", HEADER + "12.0,3.0,4,100\n13.00,3.0,5,200\n12,3,2,300\n")
    kept, err = _ingest(cli, log, tmp_path / "out")
    assert kept.schema["user_id"] == pl.Int64 and kept.schema["item_id"] == pl.Int64
    assert kept.rows() == [(13, 3, 5.0, 200), (12, 3, 2.0, 300)]
    assert _rejected(tmp_path / "out") == [(2, "duplicate_pair")]
    said = [ln for ln in err.splitlines() if "whole decimals" in ln]
    assert len(said) == 1 and "user_id and item_id are" in said[0], err

    # a fraction anywhere keeps every id as written: 12.5 and 12.0 are two users, 12.0 not 12
    frac = write(tmp_path / "frac.csv", HEADER + "12.5,3,4,100\n12.0,3,5,200\n12,3,1,300\n")
    kept, err = _ingest(cli, frac, tmp_path / "out-frac")
    assert kept["user_id"].to_list() == ["12.5", "12.0", "12"] and "whole decimals" not in err

    # a float id column in Parquet, with NaN and null cells (missing ids, not users)
    parquet = tmp_path / "floats.parquet"
    pl.DataFrame(
        {
            "user_id": [12.0, 13.0, float("nan"), None, 12.0],
            "item_id": [1, 2, 3, 4, 5],
            "rating": [4.0, 5.0, 3.0, 2.0, 1.0],
            "ts": [1, 2, 3, 4, 5],
        }
    ).write_parquet(parquet)
    kept, err = _ingest(cli, parquet, tmp_path / "out-parquet")
    assert kept.schema["user_id"] == pl.Int64 and kept["user_id"].to_list() == [12, 13, 12]
    assert _rejected(tmp_path / "out-parquet") == [(3, "missing_user_id"), (4, "missing_user_id")]
    assert "user_id is written as whole decimals" in err


def test_decimal_ids_past_the_streamed_head_read_as_the_in_memory_reader_reads_them(tmp_path):
    rows = [f"{u % 50},{u},4,{1000 + u}" for u in range(1200)]
    rows += [f"{u % 50}.0,{u}.0,4,{1000 + u}" for u in range(1200, 1300)] + ["NA,5,4,9999"]
    log = write(tmp_path / "late.csv", HEADER + "\n".join(rows) + "\n")
    cfg = DataConfig(path=str(log), format="csv", max_quarantine_share=1.0)
    a = ingest(cfg, tmp_path / "a")
    b = ingest(cfg, tmp_path / "b", streaming=False)
    assert a.report["interactions"] == b.report["interactions"]
    assert a.report["interactions"]["rows_quarantined"] == {"missing_user_id": 1}
    kept = pl.read_parquet(tmp_path / "a" / "interactions.parquet")
    assert kept.equals(pl.read_parquet(tmp_path / "b" / "interactions.parquet"))
    assert kept.schema["user_id"] == pl.Int64 and kept["item_id"].tail(1).item() == 1299


def test_missing_value_spellings_are_quarantined_never_ids(tmp_path, cli):
    log = write(
        tmp_path / "na.csv",
        HEADER
        + "1,2,4,100\nnan,2,4,100\nNA,3,4,100\n2,null,4,100\n3,None,5,1\n,4,5,1\n4,NaN,3,1\n"
        + "5,6,NA,1\n5,7,4,NA\n5,8,4,null\n6,#N/A,5,3\n<NA>,2,5,3\n5,9,nan,3\n6,2,5,3\n",
    )
    kept, _ = _ingest(cli, log, tmp_path / "out")
    assert kept.select("user_id", "item_id").rows() == [(1, 2), (6, 2)]  # integer ids again
    assert _rejected(tmp_path / "out") == [
        (3, "missing_user_id"), (4, "missing_user_id"), (5, "missing_item_id"),
        (6, "missing_item_id"), (7, "missing_user_id"), (8, "missing_item_id"),
        (9, "missing_rating"), (10, "missing_ts"), (11, "missing_ts"), (12, "missing_item_id"),
        (13, "missing_user_id"), (14, "rating_out_of_scale"),  # nan: a number, not finite
    ]  # fmt: skip
    # above data.max_quarantine_share: one line that names the reason and what it means
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "stop")
    stop = [ln for ln in err.splitlines() if ln.startswith("recsys-mtl:")]
    assert code == 2 and len(stop) == 1 and "Traceback" not in err, err
    assert (
        "top reason: missing_item_id (4 rows; an empty id, or one spelled as a missing" in stop[0]
    )


def test_a_separator_ending_every_data_line_opens_no_column(tmp_path, cli):
    log = write(tmp_path / "trail.csv", HEADER + "1,2,5,88,\n1,3,4,89,\n2,3,4,90,\n")
    kept, err = _ingest(cli, log, tmp_path / "out")  # every line was malformed_line
    assert kept.rows() == [(1, 2, 5.0, 88), (1, 3, 4.0, 89), (2, 3, 4.0, 90)]
    assert "every data line ends with the separator ','" in err and "empty last field" in err

    # a headerless file of three fields and a tab at the end: row order is time, not ts ""
    tabs = write(tmp_path / "trail.tsv", "1\t2\t5\t\n1\t3\t4\t\n")
    kept, _ = _ingest(cli, tabs, tmp_path / "out-tab", "--no-header", "--separator", "tab")
    assert kept.rows() == [(1, 2, 5.0, 1), (1, 3, 4.0, 2)]

    # only some lines end so: those have a field too many, as before
    some = write(tmp_path / "some.csv", HEADER + "1,2,5,88,\n1,3,4,89\n2,3,4,90\n")
    kept, err = _ingest(cli, some, tmp_path / "out-some")
    assert kept.height == 2 and _rejected(tmp_path / "out-some") == [(2, "malformed_line")]
    assert "empty last field" not in err


def test_quotes_doubled_inside_a_quoted_field_are_one_quote(tmp_path, cli):
    log = write(
        tmp_path / "rfc.csv",
        HEADER
        + '1,"a ""b, c"" d",5,88\n1,"x, ""y""",4,89\n2,"""q""",4,90\n2,"plain",3,91\n'
        + "3,plain,2,92\n",
    )
    kept, _ = _ingest(cli, log, tmp_path / "out")
    assert kept["item_id"].to_list() == ['a "b, c" d', 'x, "y"', '"q"', "plain", "plain"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rated_items"] == 4


@pytest.mark.parametrize("separator", ["whitespace", "space"])
def test_a_date_and_a_time_apart_under_a_space_separator_are_one_time(tmp_path, cli, separator):
    log = write(
        tmp_path / "dt.txt",
        "1 2 5 2020-01-01 12:00:00\n1 3 4 2020-01-02 13:00:00+02:00\n2 3 4 2020-01-03\n",
    )
    flags = ("--format", "csv", "--no-header", "--separator", separator)
    kept, err = _ingest(cli, log, tmp_path / "out", *flags)  # the time of day was dropped
    assert kept["ts"].to_list() == [
        _epoch("2020-01-01T12:00:00"), _epoch("2020-01-02T11:00:00"), _epoch("2020-01-03")
    ]  # fmt: skip
    assert "2 lines hold a date and a time of day apart" in err

    # with a header (every line had a field more than it) and a strptime format
    headed = write(tmp_path / "dt2.txt", "u i r when\n7 8 3 2021-05-06 07:08:09\n")
    flags = ("--format", "csv", "--separator", separator, "--user-col", "u", "--item-col", "i",
             "--rating-col", "r", "--ts-col", "when", "--timestamp-format", "%Y-%m-%d %H:%M:%S")  # fmt: skip
    kept, _ = _ingest(cli, headed, tmp_path / "out2", *flags)
    assert kept.rows() == [(7, 8, 3.0, _epoch("2021-05-06T07:08:09"))]


def test_side_tables_keep_their_layout_columns_and_ignore_added_ones(tmp_path, cli):
    folder = tmp_path / "ml-latest"
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4,100\n2,11,3,200\n")
    write(folder / "movies.csv",
          'movieId,title,genres,imdbId\n10,"Heat (1995)",Action|Crime,113277\n'
          '11,"Up, Up (2009)",Comedy,1\n')  # fmt: skip
    _, err = _ingest(cli, folder, tmp_path / "out")  # it exited 2 on the header
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort("item_id")
    assert items.rows() == [(10, "Heat (1995)", 1995, ["Action", "Crime"]),
                            (11, "Up, Up (2009)", 2009, ["Comedy"])]  # fmt: skip
    assert "movies.csv has 1 column more than its layout's 3" in err and "imdbId ignored" in err

    ml = tmp_path / "ml"
    users = synth_ml100k(cli, ml)
    (ml / "u.user").write_text("".join(f"{line}|extra|more\n" for line in users))
    _, err = _ingest(cli, ml, tmp_path / "out-ml")  # every rating was an unknown_user
    report = json.loads((tmp_path / "out-ml" / "report.json").read_text())
    assert report["side_tables"]["users"]["rows_kept"] == len(users)
    assert report["interactions"]["rows_quarantined"] == {}
    first = users[0].split("|")
    kept = pl.read_parquet(tmp_path / "out-ml" / "users.parquet").sort("user_id").row(0)
    assert kept == (int(first[0]), int(first[1]), first[2], first[3], first[4])
    assert "u.user has 2 columns more than its layout's 5" in err and "field 6, field 7" in err


def _temporal_test_items(tmp_path: Path, lines: list[str], name: str) -> tuple[list, list]:
    """The raw item ids of the test and validation parts of a temporal split of ``lines``."""
    root = tmp_path / name / "ml-100k"
    write(root / "u.data", "".join(lines))
    ingest(DataConfig(path=str(root)), root.parent / "i")
    build_features(root.parent / "i", FeaturesConfig(negatives_per_positive=0), root.parent / "f")
    cfg = SplitConfig(strategy="temporal", test_fraction=0.2, valid_fraction=0.25)
    split_dataset(root.parent / "f", cfg, root.parent / "s")
    ids = pl.read_parquet(root.parent / "f" / "item_features.parquet").select("iidx", "item_id")
    parts = {}
    for part in ("test", "valid"):
        df = pl.read_parquet(root.parent / "s" / f"{part}.parquet").join(ids, on="iidx")
        parts[part] = sorted(df["item_id"].to_list())
    return parts["test"], parts["valid"]


def test_a_temporal_cut_inside_equal_times_goes_by_position_in_the_log(tmp_path):
    # ten ratings, the last seven at one time: the test part is the last 2 of the (ts, line)
    # order, the validation part the last 2 of the 8 left (0.25)
    times = [1, 2, 3, 9, 9, 9, 9, 9, 9, 9]
    lines = [f"{1 + k % 3}\t{100 + k}\t4\t{t}\n" for k, t in enumerate(times)]
    test, valid = _temporal_test_items(tmp_path, lines, "a")
    assert test == [108, 109] and valid == [106, 107]  # the later lines of the run
    assert _temporal_test_items(tmp_path, lines, "b") == (test, valid)  # same file, same split
    # the tied lines in another order: the rows last in the file are the test part
    flipped = lines[:3] + lines[3:][::-1]
    assert _temporal_test_items(tmp_path, flipped, "c") == ([103, 104], [105, 106])
