"""A ratings file with no rating row is a user error naming the file, not a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsys_mtl.config import DataConfig
from recsys_mtl.data.ingest import ingest
from recsys_mtl.errors import UserError
from tests.conftest import tiny_config, write

EMPTY = "the file is empty"
HEADER_ONLY = re.escape("has no rating rows (the file holds only a header)")

# (data path to ingest, ratings file the message names, what the message says about it)
CASES = {
    "generic csv with a header and no rows": (
        "log.csv",
        "log.csv",
        "user_id,item_id,rating,ts\n",
        HEADER_ONLY,
    ),
    "zero-byte generic csv": ("log.csv", "log.csv", "", EMPTY),
    "empty ml-100k u.data": ("ml-100k", "ml-100k/u.data", "", EMPTY),
    "empty ml-latest ratings.csv": ("ml-latest", "ml-latest/ratings.csv", "", EMPTY),
}


def _empty_log(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """Write the case's ratings file; returns (data path, ratings file, message pattern)."""
    data, ratings, text, says = CASES[case]
    return tmp_path / data, write(tmp_path / ratings, text), says


@pytest.mark.parametrize("case", list(CASES))
def test_an_empty_ratings_file_is_a_user_error_naming_its_absolute_path(tmp_path, case):
    data, ratings, says = _empty_log(tmp_path, case)
    # The path is given relative to the working folder (tmp_path); the message makes it absolute.
    relative = data.relative_to(tmp_path)
    expected = re.escape(str(ratings.resolve())) + ": " + says
    with pytest.raises(UserError, match=expected) as err:
        ingest(DataConfig(path=str(relative)), tmp_path / "out")
    assert "columns are" not in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", list(CASES))
def test_ingesting_an_empty_ratings_file_on_the_command_line_exits_2_with_one_error_line(
    tmp_path, cli, case
):
    data, ratings, says = _empty_log(tmp_path, case)
    code, out, err = cli("data", "ingest", data, "--out", tmp_path / "out")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("recsys-mtl: error: ")
    assert re.search(re.escape(str(ratings)) + ": " + says, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(CASES))
def test_running_a_config_whose_data_is_an_empty_ratings_file_exits_2(tmp_path, cli, case):
    data, ratings, says = _empty_log(tmp_path, case)
    config = tiny_config(tmp_path, {"path": str(data)})
    code, _, err = cli("run", config, "--out", tmp_path / "run")
    assert code == 2
    # Stage progress lines come first; the error is the one last line.
    last = err.splitlines()[-1]
    assert last.startswith("recsys-mtl: error: ") and err.count("recsys-mtl: error:") == 1
    assert re.search(re.escape(str(ratings)) + ": " + says, last)
    assert "Traceback" not in err


def test_a_ratings_file_of_blank_lines_only_has_no_rating_rows(tmp_path):
    path = write(tmp_path / "ml-100k" / "u.data", "\n\n")
    with pytest.raises(
        UserError,
        match=re.escape(f"{path}: has no rating rows (the file holds only 2 blank lines)"),
    ):
        ingest(DataConfig(path=str(path.parent)), tmp_path / "out")


def test_a_generic_csv_whose_first_line_is_blank_says_a_header_is_expected(tmp_path):
    path = write(tmp_path / "log.csv", "\n1,2,3,4\n")
    with pytest.raises(
        UserError,
        match=re.escape(
            f"{path}: the first line is empty; expected a header naming the columns user_id, item_id, rating, ts"
        ),
    ):
        ingest(DataConfig(path=str(path)), tmp_path / "out")


def test_a_parquet_log_with_zero_rows_has_no_rating_rows(tmp_path):
    import polars as pl

    path = tmp_path / "log.parquet"
    pl.DataFrame(
        schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "ts": pl.Int64}
    ).write_parquet(path)
    with pytest.raises(
        UserError, match=re.escape(f"{path}: has no rating rows (the Parquet file has 0 rows)")
    ):
        ingest(DataConfig(path=str(path)), tmp_path / "out")


def test_an_empty_movies_csv_is_a_user_error_naming_it(tmp_path):
    root = tmp_path / "ml-latest"
    write(root / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n")
    movies = write(root / "movies.csv", "")
    with pytest.raises(
        UserError,
        match=re.escape(
            f"{movies}: the file is empty (expected the header 'movieId,title,genres')"
        ),
    ):
        ingest(DataConfig(path=str(root)), tmp_path / "out")
