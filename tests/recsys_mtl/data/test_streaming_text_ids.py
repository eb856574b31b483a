"""Generic logs of string ids (``u12``, Amazon's ``B000FA64PK``, zero-padded numbers) and of ISO
times stream through the typed scan, each column read as the in-memory text reader reads it
(ids are integers only where every id of the column is an integer written plainly), and give
exactly its tables: decided from the first rows, or by a second pass when a later row needs it."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

import recsys_mtl.data.grouplens as grouplens
import recsys_mtl.data.stream as stream
from recsys_mtl.config import DataConfig
from recsys_mtl.data.ingest import ingest, resolve_layout
from recsys_mtl.data.stream import scan_generic
from tests.recsys_mtl.data.test_streaming import _both, _features_agree
from tests.recsys_mtl.data.test_streaming_generic import (
    BASE,
    COLUMNS,
    LATE,
    _lines,
    _log,
    _parquet,
)

HEADER = "user,item,rating,ts"


def _ids(lines: list[str], user: str = "u{}", item: str = "{}") -> list[str]:
    """The lines with their ids written through the formats."""
    out = []
    for line in lines:
        u, i, rest = line.split(",", 2)
        out.append(f"{user.format(u)},{item.format(i)},{rest}")
    return out


def _iso(lines: list[str], fmt: str = "%Y-%m-%dT%H:%M:%S") -> list[str]:
    out = []
    for line in lines:
        head, ts = line.rsplit(",", 1)
        when = dt.datetime.fromtimestamp(int(ts) * 37, dt.UTC).strftime(fmt)
        out.append(f"{head},{when}")
    return out


def _no_in_memory_reader(monkeypatch) -> None:
    def whole_file(*_a, **_k):
        raise AssertionError("the in-memory reader was used")

    monkeypatch.setattr(stream, "read_generic", whole_file)
    monkeypatch.setattr(grouplens, "read_generic", whole_file)


def _kept(tmp_path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "streamed" / "interactions.parquet")


ASIN = "B{:0>9}"  # Amazon's item ids: ten characters, most of them zero-padded digits
# every (user, item) pair once: the one-pass path, whose duplicate check gives the distinct ids
DISTINCT = [f"{k // 40},{k % 40 + k // 200},{k % 5 + 1},{1_000_000 + k}" for k in range(3000)]
CLEAN = {
    "string ids, no repeated pair": _ids(DISTINCT, "u{}", ASIN),
    "ISO times, no repeated pair": _iso(_ids(DISTINCT, "{}", "i{}")),
    "string users and items": _ids(BASE, "u{}", "i{}"),
    "Amazon-like ids": _ids(BASE, "A{:0>13}", ASIN),
    "zero-padded item ids": _ids(BASE, "{}", "{:0>6}"),
    "quoted and spaced string ids": _ids(BASE, '"u{}"', " i{} "),
    "ISO times": _iso(BASE),
    "ISO times with an offset": _iso(BASE, "%Y-%m-%d %H:%M:%S+02:00"),
    "ISO dates and string ids": _iso(_ids(BASE, "u{}", "i{}"), "%Y-%m-%d"),
    "string ids, a repeated pair": _ids([*BASE, BASE[10].rsplit(",", 1)[0] + ",5000000"]),
    "string ids, CRLF": [line + "\r" for line in _ids(BASE)],
    "a string id late": [*BASE[:LATE], "u5,6,4,100", *BASE[LATE:]],
    "a zero-padded id late": [*BASE[:LATE], "5,006,4,100", *BASE[LATE:]],
    "an ISO time late": [*BASE[:LATE], "5,6,4,2001-09-09T01:46:40", *BASE[LATE:]],
    "integer ids as pandas writes them": _ids(DISTINCT, "{}.0", "{}.00"),
    "a whole-decimal id late": [*BASE[:LATE], "5.0,6,4,100", *BASE[LATE:]],
    "a fraction among whole decimals": [*_ids(BASE, "{}.0"), "12.5,6,4,100"],
    "milliseconds": [
        f"{line.rsplit(',', 1)[0]},{int(line.rsplit(',', 1)[1]) * 1000 + 10**12}"
        for line in _ids(DISTINCT)
    ],
    "nanoseconds, a zero time": [
        "u0,1,4,0",
        *[
            f"{line.rsplit(',', 1)[0]},{int(line.rsplit(',', 1)[1]) * 10**9 + 10**18}"
            for line in _ids(BASE)
        ],
    ],
}


@pytest.mark.parametrize("case", CLEAN)
def test_string_ids_and_iso_times_stream_to_the_tables_of_the_text_reader(
    tmp_path, monkeypatch, case
):
    path = _log(tmp_path, CLEAN[case], HEADER + "\r" * ("CRLF" in case))
    report = _both(tmp_path, path, columns=COLUMNS, max_quarantine_share=1.0)
    _no_in_memory_reader(monkeypatch)  # and the streamed ingest never read the whole file
    cfg = DataConfig(path=str(path), columns=COLUMNS, max_quarantine_share=1.0)
    again = ingest(cfg, tmp_path / "again", streaming=True)
    assert again.report == report
    a = pl.read_parquet(tmp_path / "again" / "interactions.parquet")
    assert a.equals(_kept(tmp_path))


def test_each_id_column_is_read_as_the_text_reader_reads_it(tmp_path):
    """Per column: plain integer users stay integers beside string items; one later string id
    makes its whole column text, as in memory (``7`` and ``007`` are two ids)."""
    path = _log(tmp_path / "a", _ids(BASE, "{}", ASIN))
    _both(tmp_path / "a", path, columns=COLUMNS)
    kept = _kept(tmp_path / "a")
    assert kept.schema["user_id"] == pl.Int64 and kept.schema["item_id"] == pl.String
    assert kept["item_id"].str.len_chars().min() == 10
    late = [*BASE[:LATE], "007,6,4,100", "7,6,4,101", *BASE[LATE:]]
    path = _log(tmp_path / "b", late)
    _both(tmp_path / "b", path, columns=COLUMNS, max_quarantine_share=1.0)
    kept = _kept(tmp_path / "b")
    assert kept.schema["user_id"] == pl.String and kept.schema["item_id"] == pl.Int64
    assert {"007", "7"} <= set(kept["user_id"])


@pytest.mark.parametrize(
    "bad",
    [
        "u5,,4,100",
        "u5,6,4,",
        "u5,6,4,not a time",
        "u5,6,4,100.5",
        "u5,6,abc,100",
        "u5,6,4,1600000000123",
        "NA,6,4,100",
        "u5,nan,4,100",
        "u5,6,4,NULL",
    ],
)
def test_a_string_id_log_with_a_row_the_scan_does_not_read_gets_the_text_readers_tables(
    tmp_path, bad
):
    """An empty field, a time that is neither an integer nor ISO, a decimal time, a rating that
    is not a number, a millisecond time among seconds, a missing value spelled out: the text
    reader decides, with the same quarantine as in memory."""
    lines = _ids(BASE)
    path = _log(tmp_path, [*lines[:LATE], bad, *lines[LATE:]])
    report = _both(tmp_path, path, columns=COLUMNS, max_quarantine_share=1.0)
    assert sum(report["interactions"]["rows_quarantined"].values()) >= 1


def test_the_plan_reads_text_where_the_first_rows_ask(tmp_path):
    path = _log(tmp_path / "a", _iso(_ids(BASE, "{}", "i{}")))
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    plan = scan_generic(resolve_layout(cfg, tmp_path), cfg).scan
    assert plan.typed and plan.text_ids == {"item_id"} and plan.text_ts
    assert plan.ts_per_second == 1
    # milliseconds in the first lines: the whole log decides the unit; with a time in seconds
    # later, every time is seconds, so the first lines' are past the year 5138: the text reader
    millis = [f"{line.rsplit(',', 1)[0]},{10**12 + k}" for k, line in enumerate(BASE)]
    for late, unit in ((None, 1000), ("5,6,4,100", None)):
        lines = millis if late is None else [*millis[:LATE], late, *millis[LATE:]]
        path = _log(tmp_path / str(unit), lines)
        cfg = DataConfig(path=str(path), columns=COLUMNS)
        plan = scan_generic(resolve_layout(cfg, tmp_path), cfg).scan
        assert (plan.ts_per_second if plan.typed else None) == unit
        _both(tmp_path / str(unit), path, columns=COLUMNS, max_quarantine_share=1.0)


def test_features_of_a_string_id_log_agree_in_partitions(tmp_path):
    path = _log(tmp_path, _ids(_lines(20_000, seed=1), "u{}", ASIN))
    _both(tmp_path, path, columns=COLUMNS, memory_mb=16)
    _features_agree(tmp_path, memory_mb=1)


def _text_frame(lines: list[str]) -> pl.DataFrame:
    """The lines as a table whose ids are text."""
    rows = [line.split(",") for line in lines]
    return pl.DataFrame(
        {"user": [r[0] for r in rows], "item": [r[1] for r in rows],
         "rating": [float(r[2]) for r in rows], "ts": [int(r[3]) for r in rows]}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("users", "items", "text_ids"),
    [("u{}", ASIN, {"user_id", "item_id"}), ("{}", "{}", set()), ("{}", "{:0>5}", {"item_id"})],
)
def test_a_parquet_log_of_text_ids_streams_to_the_tables_of_the_in_memory_reader(
    tmp_path, monkeypatch, users, items, text_ids
):
    """Text columns of ids: kept as text, or as integers where every id is one written plainly
    (as the in-memory reader does); a categorical column alike."""
    frame = _text_frame(_ids(BASE, users, items))
    path = _parquet(tmp_path / "a", frame)
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    plan = scan_generic(resolve_layout(cfg, tmp_path), cfg).scan
    assert plan.typed and plan.text_ids == text_ids
    _both(tmp_path / "a", path, columns=COLUMNS)
    path = _parquet(tmp_path / "b", frame.with_columns(pl.col("item").cast(pl.Categorical)))
    _both(tmp_path / "b", path, columns=COLUMNS)
    empty = frame.with_columns(  # an empty id: the in-memory reader's tables
        pl.when(pl.int_range(pl.len()) == LATE).then(pl.lit("")).otherwise("user").alias("user")
    )
    report = _both(tmp_path / "c", _parquet(tmp_path / "c", empty), columns=COLUMNS,
                   max_quarantine_share=1.0)  # fmt: skip
    assert report["interactions"]["rows_quarantined"]["missing_user_id"] == 1
    millis = frame.with_columns(pl.col("ts") * 1000 + 10**12)  # milliseconds: streamed alike
    path_ms = _parquet(tmp_path / "e", millis)
    cfg = DataConfig(path=str(path_ms), columns=COLUMNS)
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.ts_per_second == 1000
    _both(tmp_path / "e", path_ms, columns=COLUMNS)
    _no_in_memory_reader(monkeypatch)
    ingest(DataConfig(path=str(path), columns=COLUMNS), tmp_path / "d", streaming=True)
    ingest(DataConfig(path=str(path_ms), columns=COLUMNS), tmp_path / "f", streaming=True)


@pytest.mark.parametrize(
    ("lines", "data"),
    [
        ([line.replace(",", "  ") for line in _ids(BASE)], {"separator": "whitespace"}),
        (_iso(BASE, "%d/%m/%Y %H:%M"), {"timestamp_format": "%d/%m/%Y %H:%M"}),
        ([line.rsplit(",", 1)[0] for line in BASE], {"columns": {**COLUMNS, "ts": None}}),
        ([*_ids(BASE)[:LATE], "u5,6,4,100.5", "u6,,4,1", *_ids(BASE)[LATE:]], {}),
    ],
    ids=["whitespace", "timestamp format", "row order as time", "dirty lines"],
)
def test_a_log_no_typed_scan_reads_streams_through_the_lazy_text_reader(
    tmp_path, monkeypatch, request, lines, data
):
    """Bounded memory for every generic text log: one the typed scan cannot read is read by
    the text reader's rules from a lazy scan of its lines (a few streaming passes), never by
    the in-memory validation of a whole table, and gives the in-memory path's tables."""
    import recsys_mtl.data.ingest as ingest_module

    header = HEADER.replace(",", " ") if data.get("separator") else HEADER
    if data.get("columns"):
        header = "user,item,rating"
    data = {"columns": COLUMNS, **data, "max_quarantine_share": 1.0}
    path = _log(tmp_path, lines, header)
    cfg = DataConfig(path=str(path), **data)
    typed = scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed
    assert typed is (request.node.callspec.id == "dirty lines")  # clean first lines: typed
    report = _both(tmp_path, path, **data)

    def whole_table(*_a, **_k):
        raise AssertionError("the in-memory validation was used")

    monkeypatch.setattr(ingest_module, "validate_interactions", whole_table)
    assert ingest(cfg, tmp_path / "again", streaming=True).report == report


@pytest.mark.parametrize(
    "ts",
    [
        pl.col("ts").cast(pl.Datetime("ms")),  # pandas' datetime64 columns
        pl.col("ts").cast(pl.Datetime("us", "Europe/Paris")),
        (pl.col("ts") * 1000).cast(pl.Datetime("ms")).cast(pl.Date),
        pl.when(pl.int_range(pl.len()) == LATE).then(None).otherwise(pl.col("ts")).cast(pl.Float64),
    ],
    ids=["datetime", "datetime with a zone", "date", "floats with a null"],
)
def test_a_parquet_log_of_other_time_types_streams_through_the_lazy_reader(
    tmp_path, monkeypatch, ts
):
    """Times a typed scan does not read (dates, datetimes, floats) go through the in-memory
    reader's rules from a lazy scan of the Parquet file: the same tables, in bounded memory."""
    import recsys_mtl.data.ingest as ingest_module

    frame = _text_frame(_ids(BASE)).with_columns(ts.alias("ts"))
    path = _parquet(tmp_path, frame)
    cfg = DataConfig(path=str(path), columns=COLUMNS, max_quarantine_share=1.0)
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed is False
    report = _both(tmp_path, path, columns=COLUMNS, max_quarantine_share=1.0)
    bad = report["interactions"]["rows_quarantined"]
    assert set(bad) <= {"duplicate_pair", "missing_ts"} and bad.get("missing_ts", 0) <= 1

    def whole_table(*_a, **_k):
        raise AssertionError("the in-memory validation was used")

    monkeypatch.setattr(ingest_module, "validate_interactions", whole_table)
    assert ingest(cfg, tmp_path / "again", streaming=True).report == report


def test_a_parquet_text_column_of_whole_decimals_streams_as_integers(tmp_path, caplog):
    """``12.0`` in a text column of ids (as a CSV read by pandas and saved as Parquet gives):
    integers, as the in-memory reader reads them, and ingest says so once."""
    frame = _text_frame(_ids(BASE, "{}.0"))
    path = _parquet(tmp_path, frame)
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    plan = scan_generic(resolve_layout(cfg, tmp_path), cfg).scan
    assert plan.typed and plan.decimal_ids == {"user_id"} and not plan.text_ids
    caplog.clear()
    with caplog.at_level("INFO", logger="recsys_mtl.ingest"):
        _both(tmp_path, path, columns=COLUMNS)
    said = [r.message for r in caplog.records if "whole decimals" in r.message]
    assert len(said) == 2 and "user_id is written" in said[0]  # the streamed and eager ingest
    assert _kept(tmp_path).schema["user_id"] == pl.Int64


def test_a_line_short_of_a_trailing_column_no_field_is_read_from_is_the_text_readers(tmp_path):
    """A column after the last one read (a note) that a line lacks: the text reader counts the
    line's fields (``malformed_line``); the typed scan cannot, so such a log is the text
    reader's, with the same tables. Every line with the column still streams typed."""
    noted = [f"{line},n{k}" for k, line in enumerate(BASE)]
    path = _log(tmp_path / "a", noted, HEADER + ",note")
    cfg = DataConfig(path=str(path), columns=COLUMNS)
    assert scan_generic(resolve_layout(cfg, tmp_path), cfg).scan.typed
    _both(tmp_path / "a", path, columns=COLUMNS)
    short = [*noted[:LATE], BASE[LATE], *noted[LATE + 1 :]]
    report = _both(tmp_path / "b", _log(tmp_path / "b", short, HEADER + ",note"),
                   columns=COLUMNS, max_quarantine_share=1.0)  # fmt: skip
    assert report["interactions"]["rows_quarantined"]["malformed_line"] == 1
    # no header: a separator ending the first lines, not every line
    ragged = [f"{line}," for line in BASE[:LATE]] + BASE[LATE:]
    report = _both(tmp_path / "c", _log(tmp_path / "c", ragged, None), header=False,
                   max_quarantine_share=1.0)  # fmt: skip
    assert report["interactions"]["rows_quarantined"]["malformed_line"] == len(BASE) - LATE
