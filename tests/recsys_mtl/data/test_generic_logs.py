"""Generic logs as they are published: no header row, columns by position, whitespace between
fields, no timestamp, a rating scale of their own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_mtl.config import DataConfig, load_config
from recsys_mtl.data.ingest import ingest
from recsys_mtl.errors import UserError
from tests.conftest import tiny_config, write


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("recsys-mtl:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_headerless_tab_log_is_read_by_position_with_exact_counts(tmp_path):
    log = write(
        tmp_path / "ratings.tsv",
        "1\t10\t4\t100\n"
        "1\t20\t3\t200\n"
        "\n"
        "2\t10\t5\t300\n"
        "2\t30\tx\t400\n"  # invalid_rating
        "3\t10\t2\n"  # malformed_line: three fields in a four-field file
        "3\t20\t1\t500\n"
        "3\t30\t9\t600\n",  # rating_out_of_scale (1-5)
    )
    cfg = DataConfig(path=str(log), header=False, separator="tab")
    report = ingest(cfg, tmp_path / "out").report
    inter = report["interactions"]
    assert inter["rows_read"] == 7 and inter["rows_kept"] == 4 and inter["blank_lines"] == 1
    assert inter["rows_quarantined"] == {
        "invalid_rating": 1,
        "malformed_line": 1,
        "rating_out_of_scale": 1,
    }
    kept = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert kept.rows() == [
        (1, 10, 4.0, 100),
        (1, 20, 3.0, 200),
        (2, 10, 5.0, 300),
        (3, 20, 1.0, 500),
    ]
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert quarantine["line"].to_list() == [5, 6, 8]  # the file's own line numbers


def test_a_whitespace_log_without_timestamps_keeps_row_order_as_time(tmp_path, cli):
    log = write(
        tmp_path / "ratings.txt",
        "u1  i1\t4.5\n"
        "   u1 i2 3   \n"  # edge spaces
        "\t\n"  # a line of whitespace is blank
        "u2\t\ti1     2\n"
        "u2 i3\n"  # malformed_line
        "u3 i2 5\n",
    )
    code, out, err = cli(
        "data", "ingest", log, "--out", tmp_path / "out", "--no-header",
        "--separator", "whitespace", "--max-quarantine-share", "0.5",
    )  # fmt: skip
    assert code == 0, err
    assert "5 rows read, 4 kept, 1 quarantined (malformed_line: 1)" in out
    assert "ratings.txt has 3 fields a line and no timestamp: row order is time" in err
    kept = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert kept.rows() == [("u1", "i1", 4.5, 1), ("u1", "i2", 3.0, 2), ("u2", "i1", 2.0, 4),
                           ("u3", "i2", 5.0, 6)]  # fmt: skip
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["interactions"]["blank_lines"] == 1


def test_columns_by_position_in_any_order_with_or_without_a_header(tmp_path):
    text = "10;4;1;100\n20;3;1;200\n10;5;2;300\n"
    cols = {"user_id": 2, "item_id": 0, "rating": 1, "ts": 3}
    plain = write(tmp_path / "plain.csv", text)
    cfg = load_config(None, [], base={"data": {"path": str(plain), "header": False,
                                               "separator": ";", "columns": cols}})  # fmt: skip
    ingest(cfg.data, tmp_path / "a")
    headed = write(tmp_path / "headed.csv", "item;stars;who;when\n" + text)
    cfg = load_config(None, [], base={"data": {"path": str(headed), "separator": ";",
                                               "columns": cols}})  # fmt: skip
    ingest(cfg.data, tmp_path / "b")
    table = tmp_path / "log.parquet"
    pl.read_csv(plain, separator=";", has_header=False).write_parquet(table)  # column_1, ...
    ingest(DataConfig(path=str(table), columns=cols), tmp_path / "c")
    for out in ("a", "b", "c"):
        kept = pl.read_parquet(tmp_path / out / "interactions.parquet")
        assert kept.rows() == [(1, 10, 4.0, 100), (1, 20, 3.0, 200), (2, 10, 5.0, 300)]


def test_a_column_outside_the_lines_or_named_in_a_headerless_file_is_one_line(tmp_path, cli):
    log = write(tmp_path / "log.tsv", "1\t10\t4\n")
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "o", "--no-header",
                       "--separator", "tab", "--ts-col", "3")  # fmt: skip
    assert code == 2
    assert "--ts-col is position 3, but the file has 3 columns" in _one_line(err)
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "o", "--no-header",
                       "--separator", "tab", "--user-col", "customer")  # fmt: skip
    assert code == 2
    assert "'customer', a name, but --no-header is given" in _one_line(err)
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "o", "--no-header")
    assert code == 2
    assert 'looks tab-separated with no header line: set --separator "\\t"' in _one_line(err)
    assert not (tmp_path / "o" / "interactions.parquet").exists()


def test_a_headerless_file_read_with_a_header_points_at_data_header_false(tmp_path, cli):
    log = write(tmp_path / "log.tsv", "1\t10\t4\t100\n2\t10\t3\t200\n")
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "o", "--separator", "tab")
    assert code == 2
    hint = "the first line looks like data, not a header naming the columns: set --no-header"
    assert hint in _one_line(err)


def test_movielens_u_data_reads_as_a_generic_headerless_log(ml100k, tmp_path, cli):
    code, out, err = cli("data", "ingest", ml100k / "u.data", "--out", tmp_path / "o",
                         "--no-header", "--separator", "whitespace")  # fmt: skip
    assert code == 0, err
    assert "csv log, 100,000 rows read, 100,000 kept, 0 quarantined; 943 users, 1,682 items" in out
    kept = pl.read_parquet(tmp_path / "o" / "interactions.parquet")
    assert kept.row(0) == (196, 242, 3.0, 881250949)  # u.data's first line


def test_ts_none_means_row_order_in_a_config_and_on_the_command_line(tmp_path, cli):
    log = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,10,4\n2,10,3\n")
    cfg = tiny_config(tmp_path, {"path": str(log), "columns": {"ts": "none"}})
    code, _, err = cli("data", "ingest", "--config", cfg, "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "b", "--ts-col", "none")
    assert code == 0, err
    for out in ("a", "b"):
        kept = pl.read_parquet(tmp_path / out / "interactions.parquet")
        assert kept["ts"].to_list() == [2, 3]  # the rows' line numbers


def _half_star_log(path: Path) -> Path:
    """A generic log of 60 users and 50 items rated 0.5-4 in half stars."""
    rng = np.random.default_rng(0)
    pairs = rng.choice(60 * 50, size=1500, replace=False)
    stars = rng.integers(1, 9, pairs.size) / 2
    lines = ["user,item,stars,when"] + [
        f"{p // 50},{p % 50},{s:g},{1_000_000 + k}"
        for k, (p, s) in enumerate(zip(pairs, stars, strict=True))
    ]
    return write(path, "\n".join(lines) + "\n")


def test_auto_rating_scale_is_found_in_the_log_and_used_by_training_and_scoring(tmp_path, cli):
    # deferred: scoring loads torch
    from recsys_mtl.runs.batch import score_pairs
    from recsys_mtl.runs.load import load_run

    log = _half_star_log(tmp_path / "log.csv")
    data = {
        "path": str(log),
        "rating_scale": "auto",
        "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"},
    }
    cfg = tiny_config(tmp_path, data, model={"name": "bellkor", "params": {"dim": 4}},
                      tasks=["rating"], train={"epochs": 2, "batch_size": 256},
                      evaluate={"sampled_negatives": 10, "full_ranking": False})  # fmt: skip
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 0, err
    assert "ingest: data.rating_scale auto: the log's ratings span [0.5, 4]" in err
    report = json.loads((tmp_path / "run" / "ingest" / "report.json").read_text())
    assert report["rating_scale"] == [0.5, 4.0] and report["rating_scale_from"] == "data"
    assert report["interactions"]["rows_kept"] == 1500
    spec = json.loads((tmp_path / "run" / "features" / "spec.json").read_text())
    assert spec["rating_scale"] == [0.5, 4.0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert np.isfinite(summary["metrics"]["rating/rmse"])
    run = load_run(tmp_path / "run")
    assert run.ctx.rating_scale == (0.5, 4.0)
    scores = score_pairs(run, pl.Series(list(range(60))), pl.Series([0] * 60))
    assert scores["score_rating"].min() >= 0.5 and scores["score_rating"].max() <= 4.0


def test_ratings_outside_the_configured_scale_name_the_range_found(tmp_path, cli):
    log = _half_star_log(tmp_path / "log.csv")
    flags = ["--user-col", "user", "--item-col", "item", "--rating-col", "stars",
             "--ts-col", "when"]  # fmt: skip
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "o", *flags,
                       "--rating-scale", "1", "5")  # fmt: skip
    assert code == 2
    line = _one_line(err)
    assert "top reason: rating_out_of_scale" in line
    hint = "the scale is 1-5: set --rating-scale to the log's, which spans 0.5-4 (--rating-scale 0.5 4, or auto)"
    assert hint in line
    code, out, err = cli("data", "ingest", log, "--out", tmp_path / "p", *flags,
                         "--rating-scale", "auto")  # fmt: skip
    assert code == 0, err
    assert out.rstrip().endswith("rating scale 0.5-4 (found in the data)")


def test_auto_scale_on_a_log_with_one_rating_value_is_one_line(tmp_path):
    log = write(tmp_path / "log.csv", "user_id,item_id,rating,ts\n1,1,4,1\n2,1,4,2\n")
    with pytest.raises(UserError, match=r"every rating in the log is 4; set data\.rating_scale"):
        ingest(DataConfig(path=str(log), rating_scale="auto"), tmp_path / "o")


def test_a_shipped_recipe_without_the_data_says_how_to_get_it(tmp_path, cli):
    recipe = Path(__file__).resolve().parents[3] / "configs" / "ml100k.yaml"
    code, _, err = cli("run", recipe, "--out", tmp_path / "run")  # cwd: tmp_path, no ../shared
    assert code == 2
    line = _one_line(err)
    assert "shared/data/ml-100k: data path does not exist" in line
    assert line.endswith(
        "to get it: recsys-mtl data download ml-100k --to data/, then run with "
        "--set data.path=data/ml-100k"
    )
    assert not (tmp_path / "run").exists()


def test_a_few_ratings_outside_the_scale_are_kept_aside_with_the_span_logged(tmp_path, cli):
    rows = "".join(f"{u},1,3,{u}\n" for u in range(1, 41))
    log = write(tmp_path / "log.csv", "user_id,item_id,rating,ts\n" + rows + "99,1,7,41\n")
    code, out, err = cli("data", "ingest", log, "--out", tmp_path / "o")
    assert code == 0, err
    assert "41 rows read, 40 kept, 1 quarantined (rating_out_of_scale: 1)" in out
    assert "1 rows outside data.rating_scale 1-5 quarantined; the log's ratings span 3-7" in err
