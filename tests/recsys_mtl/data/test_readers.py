"""Every GroupLens layout and the generic readers, on tiny files written in tmp_path."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_mtl.config import ColumnsConfig, DataConfig
from recsys_mtl.data.grouplens import detect_layout
from recsys_mtl.data.ingest import ingest
from recsys_mtl.errors import UserError
from tests.conftest import write

EXPECTED = pl.DataFrame(
    {
        "user_id": [1, 1, 2],
        "item_id": [10, 20, 10],
        "rating": [4.0, 3.0, 5.0],
        "ts": [100, 200, 300],
    },
    schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "ts": pl.Int64},
)


def _ingest(tmp_path: Path, path: Path, **kw) -> tuple[dict, Path]:
    out = tmp_path / "out"
    return ingest(DataConfig(path=str(path), **kw), out).report, out


def ml100k_folder(root: Path) -> Path:
    write(root / "u.data", "1\t10\t4\t100\n1\t20\t3\t200\n2\t10\t5\t300\n")
    write(root / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = "|".join(["0"] * 19)
    write(root / "u.genre", "".join(f"g{k}|{k}\n" for k in range(19)))
    item = "10|Caf\xe9 Story (1995)|01-Jan-1995||http://x|" + "0|1" + "|0" * 17 + "\n"
    write(
        root / "u.item",
        (item + f"20|Other (1987)|01-Jan-1987||http://y|{flags}\n").encode("latin-1"),
    )
    return root


def test_ml100k_folder_is_read_with_demographics_genre_flags_and_latin1_titles(tmp_path):
    report, out = _ingest(tmp_path, ml100k_folder(tmp_path / "ml-100k"))
    assert report["dataset"] == "ml-100k"
    assert_frame_equal(pl.read_parquet(out / "interactions.parquet"), EXPECTED)
    users = pl.read_parquet(out / "users.parquet")
    assert users.row(0) == (1, 24, "M", "technician", "85711")
    items = pl.read_parquet(out / "items.parquet").sort("item_id")
    assert items["title"][0] == "Café Story (1995)"
    assert items["genres"].to_list() == [["g1"], []]
    assert items["year"].to_list() == [1995, 1987]
    assert len(report["genres"]) == 19


def test_ml1m_dat_files_split_on_double_colon_and_map_occupation_codes(tmp_path):
    root = tmp_path / "ml-1m"
    write(root / "ratings.dat", "1::10::4::100\n1::20::3::200\n2::10::5::300\n")
    write(root / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write(
        root / "movies.dat",
        "10::Toy Story: The Movie (1995)::Animation|Children's|Comedy\n20::Heat (1995)::Action\n".encode(
            "latin-1"
        ),
    )
    report, out = _ingest(tmp_path, root)
    assert report["dataset"] == "ml-1m" and report["rating_scale"] == [1.0, 5.0]
    assert_frame_equal(pl.read_parquet(out / "interactions.parquet"), EXPECTED)
    users = pl.read_parquet(out / "users.parquet")
    assert users.row(0) == (1, 1, "F", "K-12 student", "48067")
    items = pl.read_parquet(out / "items.parquet")
    assert items.row(0) == (
        10,
        "Toy Story: The Movie (1995)",
        1995,
        ["Animation", "Children's", "Comedy"],
    )


def test_ml10m_has_no_users_file_half_stars_and_tags(tmp_path):
    root = tmp_path / "ml-10M100K"
    write(root / "ratings.dat", "1::10::4.5::100\n1::20::0.5::200\n")
    write(root / "movies.dat", "10::A (2001)::Drama\n20::B (2002)::(no genres listed)\n")
    write(root / "tags.dat", "1::10::mind bending::150\n")
    report, out = _ingest(tmp_path, root)
    assert report["dataset"] == "ml-10m" and report["rating_scale"] == [0.5, 5.0]
    assert pl.read_parquet(out / "interactions.parquet")["rating"].to_list() == [4.5, 0.5]
    assert pl.read_parquet(out / "users.parquet")["user_id"].to_list() == [1]
    assert pl.read_parquet(out / "items.parquet")["genres"].to_list() == [["Drama"], []]
    assert pl.read_parquet(out / "tags.parquet")["tag"].to_list() == ["mind bending"]


@pytest.mark.parametrize("folder", ["ml-25m", "ml-latest-small", "ml-32m"])
def test_csv_layout_reads_header_quoted_titles_and_year(tmp_path, folder):
    root = tmp_path / folder
    write(
        root / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.0,200\n2,10,5.0,300\n",
    )
    write(
        root / "movies.csv",
        'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n20,Heat (1995),Action\n',
    )
    write(root / "tags.csv", 'userId,movieId,tag,timestamp\n1,10,"funny, smart",150\n')
    report, out = _ingest(tmp_path, root)
    assert report["dataset"] == folder and report["layout"] == "ml-csv"
    assert_frame_equal(pl.read_parquet(out / "interactions.parquet"), EXPECTED)
    items = pl.read_parquet(out / "items.parquet")
    assert items.row(0) == (
        10,
        "American President, The (1995)",
        1995,
        ["Comedy", "Drama", "Romance"],
    )
    assert pl.read_parquet(out / "tags.parquet")["tag"].to_list() == ["funny, smart"]


def test_generic_csv_maps_columns_string_ids_and_iso_timestamps(tmp_path):
    path = write(
        tmp_path / "log.csv",
        'who;what;stars;when\n"u1";"i9";4;2020-01-01T00:00:00\nu2;i9;2;2020-01-02T00:00:00\n',
    )
    cols = ColumnsConfig(user_id="who", item_id="what", rating="stars", ts="when")
    report, out = _ingest(tmp_path, path, columns=cols, separator=";")
    df = pl.read_parquet(out / "interactions.parquet")
    assert df["user_id"].to_list() == ["u1", "u2"]
    assert df["ts"].to_list() == [1577836800, 1577923200]
    assert report["interactions"]["rows_kept"] == 2


def test_generic_parquet_with_integer_ids_and_no_timestamp_uses_row_order(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame({"u": [5, 6], "i": [1, 2], "r": [1.0, 2.0]}).write_parquet(path)
    cols = ColumnsConfig(user_id="u", item_id="i", rating="r", ts=None)
    _, out = _ingest(tmp_path, path, columns=cols)
    df = pl.read_parquet(out / "interactions.parquet")
    assert df["user_id"].dtype == pl.Int64
    assert df["ts"].to_list() == [1, 2]


def test_a_folder_that_is_not_movielens_is_a_user_error_naming_it(tmp_path):
    write(tmp_path / "notes.txt", "hello")
    with pytest.raises(UserError, match=r"not a MovieLens folder .*found notes.txt"):
        detect_layout(tmp_path)


def test_declared_format_must_match_the_folder(tmp_path):
    root = ml100k_folder(tmp_path / "x")
    with pytest.raises(
        UserError, match=r"data\.format is 'ml-25m' but the folder holds a ml-100k log"
    ):
        detect_layout(root, "ml-25m")
