"""Side tables that are not valid UTF-8 are read as Latin-1 / Windows-1252; no rating is lost."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_mtl.config import DataConfig
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.lines import decode_text
from tests.conftest import write
from tests.recsys_mtl.data.test_readers import ml100k_folder


def _ingest(tmp_path, root) -> dict:
    return ingest(DataConfig(path=str(root)), tmp_path / "out").report


def _titles(tmp_path) -> dict[int, str]:
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    return dict(items.select("item_id", "title").rows())


def test_a_latin1_title_in_movies_csv_is_decoded_and_none_of_its_ratings_is_quarantined(tmp_path):
    root = tmp_path / "ml-latest"
    write(
        root / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,10,3.5,200\n1,20,3.0,300\n",
    )
    write(
        root / "movies.csv",
        b'movieId,title,genres\n10,Am\xe9lie (2001),Comedy|Romance\n20,"Caf\xc3\xa9 Society, The (2016)",Comedy\n',
    )
    report = _ingest(tmp_path, root)
    assert report["interactions"]["rows_quarantined"] == {}
    assert report["interactions"]["rows_kept"] == 3
    items = report["side_tables"]["items"]
    assert items["rows_decoded_as_latin1"] == 1
    assert items["rows_kept"] == 2 and items["rows_quarantined"] == {}
    assert _titles(tmp_path) == {10: "Amélie (2001)", 20: "Café Society, The (2016)"}
    assert pl.read_parquet(tmp_path / "out" / "quarantine.parquet").height == 0


def test_a_movies_dat_mixing_utf8_and_latin1_lines_decodes_each_line_by_its_own_encoding(tmp_path):
    root = tmp_path / "ml-1m"
    write(root / "ratings.dat", "1::10::4::100\n1::20::3::200\n")
    write(root / "users.dat", b"1::F::1::10::4806\xe9\n")
    write(
        root / "movies.dat",
        b"10::Am\xe9lie (2001)::Comedy\n20::Caf\xc3\xa9 Society (2016)::Comedy\n",
    )
    report = _ingest(tmp_path, root)
    assert report["interactions"]["rows_quarantined"] == {}
    assert report["side_tables"]["items"]["rows_decoded_as_latin1"] == 1
    assert report["side_tables"]["users"]["rows_decoded_as_latin1"] == 1
    assert _titles(tmp_path) == {10: "Amélie (2001)", 20: "Café Society (2016)"}
    assert pl.read_parquet(tmp_path / "out" / "users.parquet")["zip"].to_list() == ["4806é"]


def test_the_ml100k_report_counts_the_latin1_lines_of_u_item(tmp_path):
    report = _ingest(tmp_path, ml100k_folder(tmp_path / "ml-100k"))
    assert report["side_tables"]["items"]["rows_decoded_as_latin1"] == 1
    assert report["side_tables"]["users"]["rows_decoded_as_latin1"] == 0
    assert _titles(tmp_path)[10] == "Café Story (1995)"


def test_a_latin1_tag_in_tags_csv_is_kept_and_counted(tmp_path):
    root = tmp_path / "ml-latest"
    write(root / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n")
    write(root / "tags.csv", b"userId,movieId,tag,timestamp\n1,10,na\xefve,150\n1,10,fun,160\n")
    report = _ingest(tmp_path, root)
    assert report["side_tables"]["tags"]["rows_decoded_as_latin1"] == 1
    assert report["side_tables"]["tags"]["rows_quarantined"] == {}
    assert pl.read_parquet(tmp_path / "out" / "tags.parquet")["tag"].to_list() == ["naïve", "fun"]


def test_a_rating_line_with_undecodable_bytes_is_still_quarantined_as_bad_encoding(tmp_path):
    root = tmp_path / "ml-latest"
    write(
        root / "ratings.csv", b"userId,movieId,rating,timestamp\n1,10,4.0,100\n2\xe9,10,3.0,200\n"
    )
    write(root / "movies.csv", b"movieId,title,genres\n10,Am\xe9lie (2001),Comedy\n")
    report = _ingest(tmp_path, root)
    assert report["interactions"]["rows_quarantined"] == {"bad_encoding": 1}
    assert report["side_tables"]["items"]["rows_decoded_as_latin1"] == 1


@pytest.mark.parametrize(
    ("data", "text", "count"),
    [
        (b"plain\nascii\n", "plain\nascii\n", 0),
        ("caf\xe9 \u2019\n".encode(), "caf\xe9 \u2019\n", 0),
        (
            b"ok\nAm\xe9lie \x92s \xe9t\xe9\nok\n",
            "ok\nAmélie ’s été\nok\n",
            1,
        ),  # one line, counted once
        (b"\xe9\r\n\xc3\xa9\r\n\xe8", "é\r\né\r\nè", 2),  # CRLF, last line without a newline
        (b"a\x81b\n", "a\x81b\n", 1),  # a byte Windows-1252 leaves undefined: Latin-1
    ],
)
def test_decode_text_decodes_only_the_lines_that_are_not_utf8_as_windows_1252(data, text, count):
    assert decode_text(data) == (text, count)
