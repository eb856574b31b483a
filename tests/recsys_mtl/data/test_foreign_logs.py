"""Rating logs the project was not written against, read through ``recsys-mtl data ingest`` and
``recsys-mtl run``: ids that are not plain integers, timestamps with offsets or in other units,
quoted fields holding the separator, a scale of their own, users who rated every item."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tests.conftest import tiny_config, write

HEADER = "user_id,item_id,rating,ts\n"


def _ingest(cli, log: Path, out: Path, *flags: str) -> tuple[pl.DataFrame, str]:
    code, _, err = cli("data", "ingest", log, "--out", out, *flags)
    assert code == 0, err
    return pl.read_parquet(out / "interactions.parquet"), err


def _one_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("recsys-mtl:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ids_with_leading_zeros_are_kept_as_written_not_merged(tmp_path, cli):
    log = write(
        tmp_path / "zeros.csv",
        HEADER + "007,0042,4,100\n7,42,2,200\n8,0042,5,300\n",
    )
    kept, _ = _ingest(cli, log, tmp_path / "out")
    # read as integers, 007 and 7 (and 0042 and 42) were one id: the second row was quarantined
    # as a duplicate pair of the first
    assert kept.schema["user_id"] == pl.String and kept.schema["item_id"] == pl.String
    assert kept.select("user_id", "item_id").rows() == [("007", "0042"), ("7", "42"), ("8", "0042")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rated_users"] == 3 and report["interactions"]["rows_quarantined"] == {}

    parquet = tmp_path / "zeros.parquet"
    pl.DataFrame(
        {"user_id": ["001", "1"], "item_id": [5, 6], "rating": [4.0, 3.0], "ts": [1, 2]}
    ).write_parquet(parquet)
    kept, _ = _ingest(cli, parquet, tmp_path / "out-parquet")
    assert kept["user_id"].to_list() == ["001", "1"]

    plain = write(tmp_path / "plain.csv", HEADER + "-3,0,4,100\n12,9223372036854775807,2,200\n")
    kept, _ = _ingest(cli, plain, tmp_path / "out-plain")  # integers written plainly stay so
    assert kept.schema["user_id"] == pl.Int64 and kept.schema["item_id"] == pl.Int64
    assert kept.select("user_id", "item_id").rows() == [(-3, 0), (12, 2**63 - 1)]


def test_iso_times_with_a_utc_offset_are_read_in_utc(tmp_path, cli):
    log = write(
        tmp_path / "iso.csv",
        HEADER
        + "1,1,4,2020-09-13T12:26:40Z\n"
        + "1,2,4,2020-09-13T14:26:40+02:00\n"
        + "1,3,4,2020-09-13T07:26:40.5-0500\n"
        + "2,1,3,2020-09-13 12:26:40\n"
        + "2,2,3,2020-09-13\n",
    )
    kept, _ = _ingest(cli, log, tmp_path / "out")  # it was a traceback, exit 1
    assert kept["ts"].to_list() == [1_600_000_000] * 4 + [1_599_955_200]


def test_epoch_milliseconds_and_decimal_seconds_are_read_as_seconds(tmp_path, cli):
    ms = write(tmp_path / "ms.csv", HEADER + "1,1,4,1600000000123\n1,2,4,1600086400999\n")
    kept, err = _ingest(cli, ms, tmp_path / "out-ms")
    # read as seconds, these were times in the year 52,000: a day feature 1000x too large
    assert kept["ts"].to_list() == [1_600_000_000, 1_600_086_400]
    assert "every positive timestamp is 10^11 or more" in err and "read as milliseconds" in err

    us = tmp_path / "us.parquet"
    pl.DataFrame(
        {"user_id": [1, 2], "item_id": [1, 1], "rating": [4.0, 3.0],
         "ts": [1_600_000_000_000_000, 1_600_000_001_000_000]}
    ).write_parquet(us)  # fmt: skip
    kept, err = _ingest(cli, us, tmp_path / "out-us")
    assert kept["ts"].to_list() == [1_600_000_000, 1_600_000_001] and "microseconds" in err

    decimal = write(tmp_path / "decimal.csv", HEADER + "1,1,4,1600000000.75\n1,2,4,99.5\n")
    kept, err = _ingest(cli, decimal, tmp_path / "out-decimal")  # all invalid_ts before
    assert kept["ts"].to_list() == [1_600_000_000, 99] and "read as" not in err


def test_quoted_fields_keep_the_separator_they_hold(tmp_path, cli):
    log = write(
        tmp_path / "quoted.csv",
        HEADER + '"Smith, J",item 1,4,100\n"Doe, A","x,y",5,200\nplain,"z",3,300\nshort,1,4\n',
    )
    code, out, err = cli(
        "data", "ingest", log, "--out", tmp_path / "out", "--max-quarantine-share", "0.5"
    )
    assert code == 0, err
    assert "4 rows read, 3 kept, 1 quarantined (malformed_line: 1)" in out
    kept = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert kept.select("user_id", "item_id").rows() == [
        ("Smith, J", "item 1"),
        ("Doe, A", "x,y"),
        ("plain", "z"),
    ]
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert quarantine.select("line", "raw").rows() == [(5, "short,1,4")]

    bare = write(tmp_path / "bare.csv", '"Smith, J",1,4,100\n"Doe, A",2,5,200\nplain,3,3,300\n')
    kept, _ = _ingest(cli, bare, tmp_path / "out-bare", "--no-header")  # fields counted whole
    assert kept.rows() == [
        ("Smith, J", 1, 4.0, 100),
        ("Doe, A", 2, 5.0, 200),
        ("plain", 3, 3.0, 300),
    ]

    semi = write(tmp_path / "semi.csv", 'user_id;item_id;rating;ts\n"a;b";1;4;100\nc;1;5;200\n')
    kept, _ = _ingest(cli, semi, tmp_path / "out-semi", "--separator", ";")
    assert kept["user_id"].to_list() == ["a;b", "c"]


def test_ingest_stops_name_what_to_set_for_missing_times_and_repeated_pairs(tmp_path, cli):
    no_ts = write(tmp_path / "no_ts.csv", "user_id,item_id,rating\n1,1,4\n")
    code, _, err = cli("data", "ingest", no_ts, "--out", tmp_path / "a")
    assert "set --ts-col to none (row order is time)" in _one_line(code, err)

    clicks = write(tmp_path / "clicks.csv", "user_id,item_id,ts\n1,1,100\n")
    code, _, err = cli("data", "ingest", clicks, "--out", tmp_path / "d")
    assert "set --rating-col to none (every row a positive interaction)" in _one_line(code, err)

    twice = write(tmp_path / "twice.csv", HEADER + "1,1,4,100\n1,1,5,200\n2,1,3,300\n")
    code, _, err = cli("data", "ingest", twice, "--out", tmp_path / "b")
    line = _one_line(code, err)
    assert "duplicate_pair (1 rows; the latest rating of each (user, item) is kept" in line
    assert "raise --max-quarantine-share" in line
    assert "for clicks without ratings, set --rating-col to none" in line

    old = write(tmp_path / "old.csv", HEADER + "1,1,4,-100\n1,2,5,-200\n")
    code, _, err = cli("data", "ingest", old, "--out", tmp_path / "c")
    assert "set --timestamp-format" in _one_line(code, err)


def _plus_minus_log(path: Path) -> Path:
    rows = [f"{u},{i},{1 if (u + i) % 3 else -1},{1000 + 10 * u + i}" for u in range(12)
            for i in range(10) if (u * 7 + i) % 4]  # fmt: skip
    return write(path, HEADER + "\n".join(rows) + "\n")


def test_a_like_threshold_outside_the_log_s_scale_is_one_line_not_a_silent_task(tmp_path, cli):
    log = _plus_minus_log(tmp_path / "votes.csv")
    data = {"path": str(log), "rating_scale": [-1, 1]}
    small = {
        "model": {"name": "bellkor", "params": {"dim": 4}},
        "train": {"epochs": 1},
        "tasks": ["rating", "like"],
    }
    cfg = tiny_config(tmp_path, data, **small)
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    # with the default threshold of 4 every like label was 0: a task that learned nothing and
    # whose metrics were dropped without a word
    line = _one_line(code, err)
    assert "features.like_threshold is 4, outside the log's rating scale -1 to 1" in line
    assert "no rating is a like" in line

    code, out, err = cli("run", cfg, "--out", tmp_path / "run",
                         "--set", "features.like_threshold=1", "--json")  # fmt: skip
    assert code == 0, err
    assert "like/auc" in json.loads(out)["metrics"]


def test_a_like_threshold_outside_the_scale_stops_a_cold_start_run_not_its_metrics(tmp_path, cli):
    # the cold-start ranking metrics count a query item relevant at or above the threshold:
    # with the default of 4 on a -1/+1 log none was, and HR@10 and NDCG@10 were NaN, exit 0
    log = _plus_minus_log(tmp_path / "votes.csv")
    meta = {"protocol": "first_k", "holdout": 0.2, "ks": [5], "epochs": 1,
            "learners": [{"name": "ridge", "label": "closed_form"}]}  # fmt: skip
    cfg = tiny_config(
        tmp_path, {"path": str(log), "rating_scale": [-1, 1]}, meta=meta,
        model={"name": "bellkor", "params": {"dim": 4}}, train={"epochs": 1},
        tasks=["rating", "interaction"], split={"valid_fraction": 0.2},
    )  # fmt: skip
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")  # the scale given: no stage runs
    line = _one_line(code, err)
    assert "features.like_threshold is 4, outside the log's rating scale -1 to 1" in line
    assert "cold-start ranking metrics (HR@K, NDCG@K) have no relevant item" in line
    assert not (tmp_path / "run" / "ingest").exists()
    # the scale the log has (auto): known once ingest ran, the features stage stops
    code, _, err = cli("run", cfg, "--set", "data.rating_scale=auto", "--out", tmp_path / "auto")
    assert "outside the log's rating scale -1 to 1" in _one_line(code, err)
    assert [p.name for p in (tmp_path / "auto").iterdir() if p.is_dir()] == ["ingest"]
    # so does a like task's, before any training (it stopped at the train stage)
    like = ["--set", "tasks=[rating, like]", "--set", "meta=null"]
    code, _, err = cli(
        "run", cfg, *like, "--set", "data.rating_scale=auto", "--out", tmp_path / "l"
    )
    assert "so the like task has one label" in _one_line(code, err)
    assert [p.name for p in (tmp_path / "l").iterdir() if p.is_dir()] == ["ingest"]


def test_users_who_rated_every_item_leave_the_negatives_short_with_a_warning(tmp_path, cli):
    rows = [f"{u},{i},{1 + (u * i) % 5},{1000 + 10 * u + i}" for u in range(6) for i in range(5)]
    log = write(tmp_path / "full.csv", HEADER + "\n".join(rows) + "\n")
    cfg = tiny_config(tmp_path, {"path": str(log)}, model={"name": "bias"}, train={"epochs": 1})
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 0, err
    assert "features: 30 of 30 negatives (features.negatives_per_positive=1 a rating) could " \
           "not be drawn" in err and "the interaction task has no negative" in err  # fmt: skip


def test_predefined_split_files_meet_a_log_with_string_ids_as_written(tmp_path, cli):
    rows = [("u1", 1, 4, 100), ("u1", 2, 3, 200), ("2", 1, 5, 300), ("2", 2, 2, 400),
            ("2", 3, 4, 500), ("u1", 3, 1, 600), ("007", 1, 3, 700)]  # fmt: skip
    text = lambda rs: HEADER + "".join(",".join(map(str, r)) + "\n" for r in rs)  # noqa: E731
    log = write(tmp_path / "log.csv", text(rows))
    train = write(tmp_path / "train.csv", text(rows[:4] + rows[5:]))
    test = write(tmp_path / "test.csv", text([rows[4], (7, 1, 3, 700)]))  # plain integers only
    split = {"strategy": "predefined", "train": str(train), "test": str(test),
             "valid_fraction": 0.0}  # fmt: skip
    cfg = tiny_config(tmp_path, {"path": str(log)}, split=split, model={"name": "bias"},
                      train={"epochs": 1, "patience": None})  # fmt: skip
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    # the test file's ids were integers, the log's strings: a polars join error, a traceback
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "split" / "report.json").read_text())
    assert report["parts"]["test"]["ratings"] == 1  # user 2's item 3
    assert report["predefined_test"]["pairs_not_in_log"] == 1  # 7 is not the log's 007
    assert report["parts"]["train"]["ratings"] == 6


def test_a_split_with_an_empty_test_part_is_one_line_not_a_run_without_metrics(tmp_path, cli):
    rows = "".join(f"{u},{u % 7},{1 + u % 5},{1000 + u}\n" for u in range(40))
    log = write(tmp_path / "once.csv", HEADER + rows)  # every user rated one item
    split = {"strategy": "leave_last_out"}
    cfg = tiny_config(tmp_path, {"path": str(log)}, split=split, model={"name": "bias"},
                      train={"epochs": 1, "patience": None})  # fmt: skip
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    # it trained, then wrote "metrics": {} with exit 0
    line = _one_line(code, err)
    assert "split.strategy leave_last_out: the test part is empty (40 ratings in the log" in line
    assert not (tmp_path / "run" / "summary.json").exists()

    two = write(tmp_path / "two.csv", HEADER + "1,1,4,100\n1,2,3,200\n")
    cfg = tiny_config(tmp_path, {"path": str(two)}, model={"name": "bias"},
                      train={"epochs": 1, "patience": None})  # fmt: skip
    code, _, err = cli("run", cfg, "--out", tmp_path / "run2")
    assert "split.test_fraction=0.2 of them rounds to none" in _one_line(code, err)


def test_a_grouplens_folder_with_string_ids_points_at_reading_the_file_itself(tmp_path, cli):
    folder = tmp_path / "mine"
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\nu1,m1,4.0,100\nu2,m1,3.5,200\n")
    write(folder / "movies.csv", 'movieId,title,genres\n1,"A (1999)",Drama\n')
    code, _, err = cli("data", "ingest", folder, "--out", tmp_path / "out")
    line = _one_line(code, err)
    assert "most common reason: invalid_user_id" in line
    assert (
        "the ml-latest layout has integer ids: for a log of its own, give the file itself" in line
    )
    code, _, err = cli("data", "ingest", folder / "ratings.csv", "--out", tmp_path / "out2",
                       "--user-col", "userId", "--item-col", "movieId", "--ts-col", "timestamp",
                       "--rating-scale", "0.5", "5")  # fmt: skip
    assert code == 0, err

    other = write(tmp_path / "other" / "ratings.csv", HEADER + "1,1,4,100\n")
    code, _, err = cli("data", "ingest", other.parent, "--out", tmp_path / "out3")
    assert "for a log of its own, give the file itself as data.path" in _one_line(code, err)


def test_a_parquet_column_of_lists_or_durations_is_named_not_a_traceback(tmp_path, cli):
    base = {"user_id": [1, 2], "item_id": [1, 2], "rating": [4.0, 3.0], "ts": [1, 2]}
    for name, column in (("user_id", [[1], [2]]), ("ts", pl.Series([1, 2]).cast(pl.Duration))):
        path = tmp_path / f"{name}.parquet"
        pl.DataFrame({**base, name: column}).write_parquet(path)
        code, _, err = cli("data", "ingest", path, "--out", tmp_path / name)
        line = _one_line(code, err)  # polars' cast error, a traceback, before
        assert f"column {name!r} (--" in line and "expected numbers, text, dates or times" in line


def test_ratings_with_a_decimal_comma_are_read_as_numbers(tmp_path, cli):
    semi = write(tmp_path / "semi.csv", "user_id;item_id;rating;ts\n1;10;4,5;100\n2;10;3;200\n")
    kept, _ = _ingest(cli, semi, tmp_path / "out", "--separator", ";")
    assert kept["rating"].to_list() == [4.5, 3.0]  # invalid_rating before: ingest stopped
    quoted = write(tmp_path / "quoted.csv", HEADER + '1,10,"0,5",100\n2,10,"1,5",200\n')
    kept, _ = _ingest(cli, quoted, tmp_path / "out2", "--rating-scale", "0.5", "5")
    assert kept["rating"].to_list() == [0.5, 1.5]


def synth_ml100k(cli, folder) -> list[str]:
    """A small synthetic ml-100k folder written by ``recsys-mtl data synth``; its u.user lines."""
    code, _, err = cli("data", "synth", "--out", folder, "--users", "40", "--items", "30",
                       "--ratings", "600", "--layout", "ml-100k")  # fmt: skip
    assert code == 0, err
    return (folder / "u.user").read_text().splitlines()


def test_ratings_of_users_absent_from_a_broken_side_table_name_the_table(tmp_path, cli):
    folder = tmp_path / "ml"
    users = synth_ml100k(cli, folder)
    # a column missing (a column added is ignored: test_exported_logs)
    (folder / "u.user").write_text("".join(f"{line.rsplit('|', 1)[0]}\n" for line in users))
    code, _, err = cli("data", "ingest", folder, "--out", tmp_path / "out")
    # it said only "most common reason: unknown_user", of users that are all in u.user
    line = _one_line(code, err)
    assert "most common reason: unknown_user" in line
    assert f"u.user itself kept 0 of its {len(users)} lines (malformed_line: {len(users)})" in line
    assert "(more are ignored, fewer are not)" in line

    (folder / "u.user").write_text("".join(f"{line}\n" for line in users[:20]))
    code, _, err = cli("data", "ingest", folder, "--out", tmp_path / "out2")
    assert "their ids are not among the 20 rows of u.user" in _one_line(code, err)


def test_a_parquet_log_read_as_csv_names_the_format_not_the_suffix_it_has(tmp_path, cli):
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [1], "rating": [4.0], "ts": [1]}).write_parquet(path)
    code, _, err = cli("data", "ingest", path, "--out", tmp_path / "out", "--format", "csv")
    line = _one_line(code, err)  # it said "name it with the .parquet suffix"
    assert "a Parquet file: read it with --format parquet (or auto)" in line
