"""What a person sees: the metrics table, ingest's counts and threshold, help, list, folds, cut-offs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from tests.conftest import REPO, tiny_config, write

SYN = {"format": "synthetic", "synthetic": {"users": 40, "items": 50, "ratings": 800}}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("recsys-mtl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _scaled_log(tmp_path, n=200, bad=0):
    """A generic CSV whose first ``bad`` ratings are 9 on a 1-5 scale."""
    rows = [f"{u % 20},{u % 23},{9 if u < bad else 1 + u % 5},{1000 + u}" for u in range(n)]
    return write(tmp_path / "log.csv", "user_id,item_id,rating,ts\n" + "\n".join(rows) + "\n")


def test_a_run_prints_a_metrics_table_and_json_only_when_asked(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    code, out, _ = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"run folder: {(tmp_path / 'r').resolve()} (5 of 5 stages run")
    header = next(
        i for i, ln in enumerate(lines) if ln.split() == ["task", "metric", "valid", "test"]
    )
    rmse = next(ln for ln in lines[header:] if ln.split()[:2] == ["rating", "rmse"])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    valid, test = summary["metrics"]["valid/rating/rmse"], summary["metrics"]["rating/rmse"]
    assert rmse.split()[2:] == [f"{valid:#.4g}", f"{test:#.4g}"]  # four significant digits
    code, out, _ = cli("run", cfg, "--out", tmp_path / "r", "--json")
    assert code == 0 and json.loads(out) == {
        "run_dir": str(tmp_path / "r"),
        "metrics": summary["metrics"],
    }


def test_ingest_says_what_it_read_kept_and_dropped_every_run(tmp_path, cli):
    log = _scaled_log(tmp_path, bad=4)
    code, out, err = cli("data", "ingest", log, "--out", tmp_path / "o")
    assert code == 0, err
    assert "ingest: 200 rows read, 196 kept, 4 quarantined (rating_out_of_scale: 4)" in err
    assert out.strip().startswith(
        f"{(tmp_path / 'o').resolve()}: csv log, 200 rows read, 196 kept, 4 quarantined"
    )


def test_a_run_stops_when_more_rows_are_quarantined_than_the_config_allows(tmp_path, cli):
    log = _scaled_log(tmp_path, bad=50)  # 25% of the rows, above the 5% default
    cfg = tiny_config(tmp_path, {"path": str(log)})
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    line = _one_error_line(err)
    kept = (tmp_path / "r" / "ingest.quarantine.parquet").resolve()
    assert code == 2
    assert (
        f"{log.resolve()}: 50 of 200 rating rows (25.0%) quarantined, above data.max_quarantine_share=0.05"
        in line
    )
    assert (
        "top reason: rating_out_of_scale (50 rows; the scale is 1-5: set data.rating_scale" in line
    )
    assert line.endswith(f"the rejected rows are in {kept}")
    assert pl.read_parquet(kept)["reason"].to_list() == ["rating_out_of_scale"] * 50
    assert not (tmp_path / "r" / "ingest").exists()  # no stage folder that looks complete
    # a higher threshold, or the right scale, lets it through
    code, _, err = cli(
        "run", cfg, "--out", tmp_path / "r", "--set", "data.max_quarantine_share=0.3"
    )
    assert code == 0, err
    code, _, err = cli("data", "ingest", log, "--out", tmp_path / "o", "--rating-scale", "1", "10")
    assert code == 0 and "200 kept, 0 quarantined" in err


def test_data_ingest_stops_above_the_threshold_and_keeps_the_quarantine(tmp_path, cli):
    log = _scaled_log(tmp_path, bad=30)
    code, _, err = cli(
        "data", "ingest", log, "--out", tmp_path / "o", "--max-quarantine-share", "0.1"
    )
    line = _one_error_line(err)
    assert code == 2 and "above --max-quarantine-share=0.1" in line
    assert line.endswith(f"{(tmp_path / 'o' / 'quarantine.parquet').resolve()}")
    code, _, err = cli(
        "data", "ingest", log, "--out", tmp_path / "o", "--max-quarantine-share", "2"
    )
    assert (
        code == 2
        and "--max-quarantine-share: data.max_quarantine_share: Input should be less than or equal to 1"
        in err
    )


def test_data_ingest_reads_any_log_with_flags_or_a_run_config(tmp_path, cli):
    log = write(
        tmp_path / "log.csv", "customer;product;stars;when\n1;2;4;100\n1;3;5;101\n2;2;3;102\n"
    )
    flags = ["--separator", ";", "--user-col", "customer", "--item-col", "product",
             "--rating-col", "stars", "--ts-col", "when"]  # fmt: skip
    code, out, err = cli("data", "ingest", log, "--out", tmp_path / "a", *flags)
    assert code == 0, err
    assert "3 rows read, 3 kept, 0 quarantined" in out
    got = pl.read_parquet(tmp_path / "a" / "interactions.parquet")
    assert got["user_id"].to_list() == [1, 1, 2] and got["ts"].to_list() == [100, 101, 102]
    # the same options from a run config's data section; a flag wins over the file
    cfg = tiny_config(tmp_path, {"path": str(log), "separator": ";", "columns": {
        "user_id": "customer", "item_id": "product", "rating": "stars", "ts": "when"}})  # fmt: skip
    code, out, _ = cli("data", "ingest", "--config", cfg, "--out", tmp_path / "b", "--json")
    assert code == 0 and json.loads(out)["rows_kept"] == 3
    code, _, err = cli(
        "data", "ingest", "--config", cfg, "--out", tmp_path / "c", "--item-col", "sku"
    )
    assert code == 2 and "column 'sku' (--item-col) not found" in _one_error_line(err)
    code, _, err = cli("data", "ingest", "--out", tmp_path / "d")
    assert code == 2 and "give a PATH, or --config FILE" in err


def test_tab_separated_logs_take_a_backslash_t_separator(tmp_path, cli):
    log = write(tmp_path / "u.tsv", "user_id\titem_id\trating\tts\n1\t2\t3\t4\n")
    code, out, err = cli("data", "ingest", log, "--out", tmp_path / "o", "--separator", "\\t")
    assert code == 0 and "1 rows read, 1 kept" in out, err


def test_a_run_that_fails_before_writing_anything_leaves_no_run_folder(tmp_path, cli):
    cfg = tiny_config(tmp_path, {"path": str(tmp_path / "missing.csv")})
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 2 and "data path does not exist" in err
    assert not (tmp_path / "r").exists()


def test_help_describes_the_tool_and_every_option_has_a_description_and_default(cli, capsys):
    from pipelines.cli import build_parser

    parser = build_parser()
    assert "Multi-task recommendation on rating logs" in parser.format_help()
    subs = [parser]
    for p in subs:
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                subs += list(action.choices.values())
            elif action.option_strings and action.dest not in ("help", "version"):
                assert action.help, f"{p.prog} {action.option_strings} has no help"
                text = p._get_formatter()._get_help_string(action)
                assert "default" in text or action.required, f"{p.prog} {action.option_strings}"
    assert len(subs) >= 6  # run, data, download, ingest, synth, list


def test_the_cli_module_imports_no_heavy_library():
    code = "import sys, pipelines.cli; print([m for m in ('torch', 'polars', 'mlflow', 'pipelines.stages') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout  # fmt: skip
    assert out.strip() == "[]"


def test_list_shows_the_registered_names(cli):
    code, out, _ = cli("list")
    assert code == 0
    assert "rankers (model.name):" in out and "bellkor" in out and "mmoe" in out
    assert "weightings (weighting.name):" in out and "uw" in out
    assert "tasks (tasks):\n  rating, interaction, like" in out
    assert (
        "split strategies (split.strategy):" in out and "kfold" in out and "leave_last_out" in out
    )


def test_kfold_reports_every_fold_and_the_mean_and_std_over_folds(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN, split={"strategy": "kfold", "folds": 3})
    code, out, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [f["fold"] for f in s["folds"]] == [0, 1, 2]
    per = [f["metrics"]["rating/rmse"] for f in s["folds"]]
    assert len(set(per)) == 3  # three different test parts
    mean = sum(per) / 3
    std = (sum((x - mean) ** 2 for x in per) / 2) ** 0.5
    assert s["metrics"]["rating/rmse"] == pytest.approx(mean)
    assert s["metrics_std"]["rating/rmse"] == pytest.approx(std)
    # the test parts of the folds partition the ratings
    tests = [
        pl.read_parquet(tmp_path / "r" / f"fold{f}" / "split" / "test.parquet") for f in range(3)
    ]
    rows = pl.concat([t.filter(pl.col("interaction") == 1)["row"] for t in tests])
    assert rows.n_unique() == rows.len() == s["data"]["rows_kept"]
    assert s["stages"]["fold1/ingest"]["skipped"] and s["stages"]["fold2/features"]["skipped"]
    assert "mean ± std over 3 folds:" in out and f"{mean:#.4g} ± {std:.2g}" in out


def test_evaluate_k_takes_a_list_of_cut_offs_scored_once(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN, evaluate={"k": [5, 10, 20], "sampled_negatives": 20})
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "summary.json").read_text())["metrics"]
    for part in ("ranking", "ranking_full"):
        hr = [m[f"{part}/hr@{k}"] for k in (5, 10, 20)]
        assert hr == sorted(hr) and hr[0] < hr[2]  # more cut-off, more hits
        assert f"{part}/mrr" in m
    single = tiny_config(tmp_path, SYN, evaluate={"k": 10, "sampled_negatives": 20})
    code, _, _ = cli("run", single, "--out", tmp_path / "s")
    m10 = json.loads((tmp_path / "s" / "summary.json").read_text())["metrics"]
    assert m10["ranking/hr@10"] == pytest.approx(m["ranking/hr@10"])
    assert m10["ranking_full/mrr"] == pytest.approx(m["ranking_full/mrr"])  # counted once
    code, _, err = cli("run", cfg, "--set", "evaluate.k=[5, 0]")
    assert code == 2 and "evaluate.k: cut-offs must be distinct integers >= 1" in err
