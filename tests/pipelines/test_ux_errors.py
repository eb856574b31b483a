"""Errors that help: one line, exit 2, and what to try (config keys, data files, file modes)."""

from __future__ import annotations

import os
import stat

import pytest

from recsys_mtl.config import load_config
from recsys_mtl.errors import UserError
from tests.conftest import tiny_config, write

SYN = {"format": "synthetic", "synthetic": {"users": 40, "items": 50, "ratings": 800}}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("recsys-mtl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_unknown_key_suggests_the_closest_known_key(tmp_path):
    cfg = write(tmp_path / "c.yaml", "data:\n  format: synthetic\ntrain:\n  epoch: 3\n")
    with pytest.raises(
        UserError, match=r"c.yaml:4: train.epoch: unknown key \(did you mean 'train.epochs'\?\)"
    ):
        load_config(cfg)


def test_a_section_key_written_at_the_top_names_the_sections_that_have_it(tmp_path):
    cfg = write(tmp_path / "c.yaml", "data:\n  format: synthetic\nseed: 1\n")
    with pytest.raises(
        UserError, match=r"seed: unknown key \(did you mean .*'split.seed' or 'train.seed'"
    ):
        load_config(cfg)


def test_every_validation_error_is_shown_on_one_line(tmp_path, cli):
    cfg = write(
        tmp_path / "c.yaml",
        "data:\n  format: synthetic\ntrain:\n  seed: 1.5\n  epochs: x\ntracking:\n  enabled: false\n",
    )
    code, _, err = cli("run", cfg, "--set", "split.sed=2")
    line = _one_error_line(err)
    assert code == 2
    assert "c.yaml:4: train.seed: Input should be a valid integer" in line
    assert "c.yaml:5: train.epochs: Input should be a valid integer" in line
    assert "--set split.sed: split.sed: unknown key (did you mean 'split.seed'?)" in line
    assert "more)" not in line


def test_one_task_may_be_written_without_a_list(tmp_path):
    cfg = write(tmp_path / "c.yaml", "data:\n  format: synthetic\ntasks: rating\n")
    assert load_config(cfg).tasks == ["rating"]
    assert load_config(cfg, ["tasks=interaction"]).tasks == ["interaction"]


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("customer;product;stars;when\n1;2;3;4\n", "the header looks ';'-separated: try --separator \";\" and --user-col, --item-col, --rating-col and --ts-col to the file's names (customer, product, stars, when)"),
        ("1\t2\t3\t881250949\n2\t3\t4\t881250950\n", 'the file looks tab-separated with no header line: set --separator "\\t"'),
        ("user_id|item_id|rating|ts\n1|2|3|4\n", "the header looks '|'-separated: try --separator \"|\""),
    ],
)  # fmt: skip
def test_a_header_in_another_separator_suggests_the_separator_flag(tmp_path, cli, text, hint):
    log = write(tmp_path / "log.csv", text)
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "out")
    line = _one_error_line(err)
    assert code == 2
    assert line.startswith(f"recsys-mtl: error: {log.resolve()}: column 'user_id' (--user-col)")
    assert hint in line and "data." not in line


def test_a_runs_config_is_told_the_data_keys(tmp_path, cli):
    log = write(tmp_path / "log.csv", "customer;product;stars;when\n1;2;3;4\n")
    cfg = tiny_config(tmp_path, {"format": "csv", "path": str(log)})
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    line = _one_error_line(err)
    assert code == 2
    assert 'try data.separator: ";" and data.columns.* to the file\'s names' in line


def _gzip(text: bytes) -> bytes:
    import gzip

    return gzip.compress(text)


def _parquet(text: bytes) -> bytes:
    import io

    import polars as pl

    buf = io.BytesIO()
    pl.DataFrame({"user_id": [1], "item_id": [2], "rating": [3.0], "ts": [4]}).write_parquet(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (_gzip, "it starts like gzip-compressed data: decompress it first"),
        (_parquet, "it starts like a Parquet file: name it with the .parquet suffix"),
        (lambda _: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
         "binary data (a NUL byte at byte 9) where lines of text were expected (text in UTF-16 "
         "or UTF-32: save it as UTF-8)"),
        (lambda text: text.decode().encode("utf-16"), "it starts like UTF-16 text: save it as UTF-8"),
    ],
)  # fmt: skip
def test_a_log_that_is_not_text_is_named_for_what_it_is_not_echoed(tmp_path, cli, make, said):
    log = tmp_path / "log.csv"
    log.write_bytes(make(b"user_id,item_id,rating,ts\n" + b"1,2,3,881250949\n" * 500))
    for flags in ((), ("--no-header",)):
        code, _, err = cli("data", "ingest", log, *flags, "--out", tmp_path / "out")
        line = _one_error_line(err)
        assert code == 2 and line == f"recsys-mtl: error: {log.resolve()}: not a text log; {said}"
    assert not (tmp_path / "out" / "interactions.parquet").exists()


def test_ingest_artifacts_and_the_summary_get_the_mode_of_any_new_file(tmp_path, cli):
    old = os.umask(0o022)
    try:
        cfg = tiny_config(tmp_path, SYN)
        code, _, _ = cli("run", cfg, "--out", tmp_path / "run")
        assert code == 0
        os.umask(0o027)
        from recsys_mtl.io import write_json

        strict = write_json({}, tmp_path / "strict.json")
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for f in ("summary.json", "evaluate/metrics.json", "ingest/report.json", "train/model.pt"):
        assert stat.S_IMODE((run / f).stat().st_mode) == 0o644, f
    assert stat.S_IMODE(strict.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["update", "RUN", "--data", "x.csv", "--holdout", "abc"],
         "recsys-mtl update: error: argument --holdout: invalid float value: 'abc'"),
        (["frobnicate"], "recsys-mtl: error: argument COMMAND: invalid choice: 'frobnicate'"),
        (["update", "RUN", "--data", "x.csv", "--bogus"],
         "recsys-mtl update: error: unrecognized arguments: --bogus"),
        (["data", "ingest", "log.csv", "--out", "o", "--delimiter", ";"],
         "recsys-mtl data ingest: error: unrecognized arguments: --delimiter ;"),
        (["score"], "recsys-mtl score: error: the following arguments are required: SOURCE"),
        (["data", "ingest", "log.csv"],
         "recsys-mtl data ingest: error: the following arguments are required: --out"),
    ],
)  # fmt: skip
def test_a_command_line_mistake_is_one_line_naming_the_command_and_its_help(args, said, capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(said) and err.rstrip().endswith(f"(see {said.split(':')[0]} --help)")


def test_run_refuses_the_stream_protocol_before_any_stage(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN, split={"strategy": "stream"})
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    line = _one_error_line(err)
    assert code == 2 and "run it with recsys-mtl stream CONFIG" in line
    assert not (tmp_path / "run" / "ingest").exists()  # refused before the first stage


def test_data_ingest_hints_name_flags_but_leave_paths_alone():
    from pipelines.commands.data import as_flags

    said = as_flags("/srv/data.format/u.data.csv: column 'x' (data.columns.item_id) not found; "
                    "set data.rating_scale: [low, high]")  # fmt: skip
    assert said == ("/srv/data.format/u.data.csv: column 'x' (--item-col) not found; "
                    "set --rating-scale LOW HIGH")  # fmt: skip
