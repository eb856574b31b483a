"""A generic text log streams through the typed scan when it parses cleanly, and every other
log (its first lines or a later one) gets exactly the tables of the in-memory text reader."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import recsys_mtl.data.grouplens as grouplens
import recsys_mtl.data.stream as stream
from recsys_mtl.config import DataConfig
from recsys_mtl.data.ingest import ingest, resolve_layout
from recsys_mtl.data.stream import partitions_for, scan_generic
from tests.conftest import write
from tests.recsys_mtl.data.test_streaming import _both, _features_agree

HEADER = "user,item,rating,ts"
COLUMNS = {"user_id": "user", "item_id": "item", "rating": "rating", "ts": "ts"}


def _lines(n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` ratings of 150 users on 120 items (some pairs repeat), times in epoch seconds."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 151, n), rng.integers(1, 121, n)
    ratings = rng.choice([1, 2, 3, 3.5, 4, 5], n)
    return [f"{u},{i},{r:g},{1_000_000 + k}" for k, (u, i, r) in
            enumerate(zip(users, items, ratings, strict=True))]  # fmt: skip


def _log(tmp_path, lines: list[str], header: str | None = HEADER, name: str = "log.csv"):
    text = "\n".join(([header] if header is not None else []) + lines) + "\n"
    return write(tmp_path / "in" / name, text)


BASE = _lines()
LATE = 2000  # a line past the first ones the typed scan looks at before it streams
# ratings the typed scan cannot parse: quoted, spaced, missing, nan, a quote inside, no number
LATE_RATINGS = ['5,6," 4 ",100', "5,7, NA ,101", "5,8,,102", "5,9,nan,103", '5,10,"4""",104',
                "5,11,4.5 ,105", '5,12,"  ",106', "5,13,abc,107"]  # fmt: skip
CASES = {
    "clean": BASE,
    "a repeated pair, later": [*BASE, BASE[10].rsplit(",", 1)[0] + ",5000000"],
    "a blank line": [*BASE[:100], "", *BASE[100:]],
    "a rating that is not a number": [*BASE[:LATE], "5,6,abc,100", *BASE[LATE:]],
    "ratings the text reader cleans or refuses, late": [*BASE[:LATE], *LATE_RATINGS, *BASE[LATE:]],
    "a string id, late": [*BASE[:LATE], "u5,6,4,100", *BASE[LATE:]],
    "a zero-padded id, late": [*BASE[:LATE], "007,6,4,100", *BASE[LATE:]],
    "a quoted id, late": [*BASE[:LATE], '"5",6,4,100', *BASE[LATE:]],
    "a decimal time, late": [*BASE[:LATE], "5,6,4,100.5", *BASE[LATE:]],
    "a millisecond time, late": [*BASE[:LATE], "5,6,4,1600000000123", *BASE[LATE:]],
    "out of scale, negative time": [*BASE[:LATE], "5,6,9,100", "5,7,4,-3", *BASE[LATE:]],
    "a line with a field more": [*BASE[:LATE], "5,6,4,100,9", *BASE[LATE:]],
    "a line with a field less": [*BASE[:LATE], "5,6,4", *BASE[LATE:]],
    "line ends with CR": [line + "\r" for line in BASE],
}


@pytest.mark.parametrize("case", CASES)
def test_a_generic_csv_streams_to_the_tables_of_the_text_reader(tmp_path, case):
    path = _log(tmp_path, CASES[case], HEADER + "\r" * (case == "line ends with CR"))
    _both(tmp_path, path, columns=COLUMNS, max_quarantine_share=1.0)


def test_other_shapes_stream_alike(tmp_path):
    moved = [",".join(["a", *line.split(","), "z"]) for line in BASE]  # columns found by name
    _both(tmp_path / "a", _log(tmp_path / "a", moved, "x,user,item,rating,ts,y"),
          columns=COLUMNS)  # fmt: skip
    semi = [line.replace(",", ";") for line in BASE]
    _both(tmp_path / "b", _log(tmp_path / "b", semi, HEADER.replace(",", ";")), separator=";",
          columns=COLUMNS)  # fmt: skip
    tabs = [line.replace(",", "\t") for line in BASE]  # no header: columns by position
    _both(tmp_path / "c", _log(tmp_path / "c", tabs, None, "log.tsv"), separator="\t",
          header=False)  # fmt: skip
    millis = [f"{line.rsplit(',', 1)[0]},{int(line.rsplit(',', 1)[1]) * 1000 + 10**12}"
              for line in BASE]  # fmt: skip
    _both(tmp_path / "d", _log(tmp_path / "d", millis), columns=COLUMNS)


@pytest.mark.parametrize(
    ("first", "streams"),
    [("7,6,4,100", True), ("u7,6,4,100", True), ("007,6,4,100", True),
     ("7,6,4,2020-01-01", True), ("7,6,4,1600000000000", False), ("7,6,4,100.5", False),
     (",6,4,100", False), ("7,6,abc,100", True), ("7,6,,100", True), ('7,6," NA ",100', True)],
)  # fmt: skip
def test_a_log_whose_first_lines_need_the_text_reader_goes_there_at_once(tmp_path, first, streams):
    """String ids and ISO times stream (read as text), and so do ratings that are no number,
    empty or spelled missing (read by the text reader's rules, quarantined); another time unit,
    a decimal time or an empty id send the log to the text reader before any pass."""
    path = _log(tmp_path, [first, *BASE])
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    assert (scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed) == streams
    _both(tmp_path, path, columns=COLUMNS, max_quarantine_share=1.0)


def test_features_of_a_streamed_generic_log_agree_in_partitions(tmp_path):
    path = _log(tmp_path, _lines(20_000, seed=1))
    _both(tmp_path, path, columns=COLUMNS, memory_mb=16)
    assert partitions_for(20_000, 1) > 1  # the draws run per partition of the users
    _features_agree(tmp_path, memory_mb=1)


def test_a_click_log_streams_to_the_tables_of_the_text_reader(tmp_path):
    """A log without ratings (clicks) streams too: every row rating 1, repeats merged alike."""
    clicks = [",".join(line.split(",")[:2] + line.split(",")[3:]) for line in BASE]
    path = _log(tmp_path, clicks, "user,item,ts")
    columns = {"user_id": "user", "item_id": "item", "rating": None, "ts": "ts"}
    cfg = DataConfig(path=str(path), columns=columns)
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed
    report = _both(tmp_path, path, columns=columns)
    assert report["interactions"]["ratings"] == "none"
    assert report["interactions"]["repeats_merged"] > 0
    headerless = tmp_path / "h"  # user, item, time by position
    _both(headerless, _log(headerless, clicks, None), columns={"rating": None}, header=False)


def _parquet(tmp_path, frame: pl.DataFrame):
    path = tmp_path / "in" / "log.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def _frame(lines: list[str]) -> pl.DataFrame:
    rows = [line.split(",") for line in lines]
    return pl.DataFrame(
        {"user": [int(r[0]) for r in rows], "item": [int(r[1]) for r in rows],
         "rating": [float(r[2]) for r in rows], "ts": [int(r[3]) for r in rows]}
    )  # fmt: skip


def test_a_parquet_log_streams_to_the_tables_of_the_in_memory_reader(tmp_path, monkeypatch):
    frame = _frame(BASE)
    path = _parquet(tmp_path / "a", frame)
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed
    _both(tmp_path / "a", path, columns=COLUMNS, max_quarantine_share=1.0)
    # rejected rows (a null id, out of scale, a negative time, a millisecond time late) alike,
    # each with its fields as text in the quarantine
    dirty = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == LATE).then(None).otherwise("user").alias("user"),
        pl.when(pl.int_range(pl.len()) == LATE + 1).then(9.0).otherwise("rating").alias("rating"),
        pl.when(pl.int_range(pl.len()) == LATE + 2).then(-3).otherwise("ts").alias("ts"),
    )
    path = _parquet(tmp_path / "b", dirty)
    report = _both(tmp_path / "b", path, columns=COLUMNS, max_quarantine_share=1.0)
    assert report["interactions"]["rows_quarantined"]["rating_out_of_scale"] == 1
    quarantine = pl.read_parquet(tmp_path / "b" / "streamed" / "quarantine.parquet")
    assert quarantine["raw"].null_count() == 0
    millis = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == LATE).then(10**12).otherwise("ts").alias("ts")
    )
    _both(tmp_path / "c", _parquet(tmp_path / "c", millis), columns=COLUMNS)
    # float times: the in-memory reader at once, the same tables
    strings = frame.with_columns(pl.col("user").cast(pl.String), pl.col("ts").cast(pl.Float64))
    path = _parquet(tmp_path / "d", strings)
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed is False
    _both(tmp_path / "d", path, columns=COLUMNS)
    clicks = frame.drop("rating")  # a log without ratings
    columns = {**COLUMNS, "rating": None}
    _both(tmp_path / "e", _parquet(tmp_path / "e", clicks), columns=columns)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_clean_generic_log_never_goes_through_the_in_memory_reader(tmp_path, monkeypatch, kind):
    """Bounded memory: the in-memory reader holds the whole file; a log the typed scan reads
    never reaches it."""
    path = _log(tmp_path, BASE) if kind == "csv" else _parquet(tmp_path, _frame(BASE))

    def whole_file(*_a, **_k):
        raise AssertionError("the in-memory reader was used")

    monkeypatch.setattr(stream, "read_generic", whole_file)
    monkeypatch.setattr(grouplens, "read_generic", whole_file)
    report = ingest(DataConfig(path=str(path), columns=COLUMNS), tmp_path / "o").report
    assert report["interactions"]["rows_read"] == len(BASE)
    assert report["interactions"]["rows_kept"] + sum(
        report["interactions"]["rows_quarantined"].values()
    ) == len(BASE)


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
def test_the_text_of_rejected_lines_is_found_in_blocks_as_the_line_scan_reads_it(tmp_path, block):
    """The quarantine's text of a streamed log's rejected rows: read a block at a time (not
    the whole file), the same lines as the lazy line scan gives, at any block size."""
    from recsys_mtl.data.lines import _lines_at, scan_lines

    path = write(tmp_path / "log.csv", b"a,b\r\nc\xff\xfed\r\n\r\nx,y\n\nlast")
    every = scan_lines(path).collect()
    found = _lines_at(path, np.arange(1, 7), block)
    assert found.equals(every) and every.height == 6
    some = _lines_at(path, np.array([2, 3, 6, 9]), block)  # 9: past the end
    assert some.equals(every.filter(pl.col("line").is_in([2, 3, 6])))


def test_a_rating_the_typed_scan_cannot_parse_keeps_the_log_on_it(tmp_path, monkeypatch):
    """A late rating that is no number (or spelled missing, empty, quoted) is quarantined by a
    second typed pass that reads ratings by the text reader's rules: the log never goes to the
    text reader (about 9x slower at 25M ratings), and its tables are that reader's."""
    import recsys_mtl.data.onepass as onepass

    lines = [*BASE[:LATE], "5,6,abc,100", "5,7, NA ,101", "5,8,,102", '5,9," 4 ",103',
             "5,10,nan,104", *BASE[LATE:]]  # fmt: skip
    path = _log(tmp_path, lines)
    _both(tmp_path / "both", path, columns=COLUMNS, max_quarantine_share=1.0)

    def text_reader(*args, **kwargs):
        raise AssertionError("the log went to the text reader")

    monkeypatch.setattr(onepass, "_text_pass", text_reader)
    cfg = DataConfig(path=str(path), columns=COLUMNS, max_quarantine_share=1.0)
    report = ingest(cfg, tmp_path / "typed", streaming=True).report["interactions"]
    q = pl.read_parquet(tmp_path / "typed" / "quarantine.parquet").sort("line")
    q = q.filter(pl.col("reason") != "duplicate_pair")  # the pairs BASE repeats
    first = LATE + 2  # the header is line 1
    assert q.select("line", "reason").rows() == [
        (first, "invalid_rating"), (first + 1, "missing_rating"), (first + 2, "missing_rating"),
        (first + 4, "rating_out_of_scale"),
    ]  # fmt: skip
    kept = pl.read_parquet(tmp_path / "typed" / "interactions.parquet")
    assert kept.filter(pl.col("ts") == 103).rows() == [(5, 9, 4.0, 103)]  # ' "4" ' is 4
    assert report["rows_quarantined"]["invalid_rating"] == 1
