"""``recsys-mtl update`` on a run whose log has no times (``data.columns.ts: none``: row order
is time): the new log's rows follow the run's, and rows sent again are dropped."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tests.conftest import tiny_config, write


def _rows(pairs: list[tuple[int, int, int]]) -> str:
    return "user_id,item_id,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in pairs)


def test_update_of_a_run_without_times_drops_rows_sent_again_and_puts_new_ones_last(
    cli, tmp_path: Path
) -> None:
    pairs = [(u, i, 1 + (u + 2 * i) % 5) for u in range(20) for i in range(15) if (u + i) % 3]
    log = write(tmp_path / "log.csv", _rows(pairs))
    cfg = tiny_config(
        tmp_path,
        {"path": str(log), "columns": {"ts": "none"}},
        model={"name": "bellkor", "params": {"dim": 4}},
        tasks=["rating"],
        train={"epochs": 1, "patience": None},
    )
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 0, err

    again = write(tmp_path / "again.csv", _rows(pairs[-40:]))
    code, _, err = cli("update", tmp_path / "run", "--data", again, "--out", tmp_path / "u1")
    # their times restarted at 1, so no row matched the run's: 40 rows trained on twice
    assert code == 2 and "every one of its 40 rows is already in the run" in err, err

    new = [(0, 0, 5), (1, 0, 4), (2, 3, 5), (3, 0, 4)]
    mixed = write(tmp_path / "mixed.csv", _rows(pairs[-10:] + new))
    code, out, err = cli("update", tmp_path / "run", "--data", mixed, "--out", tmp_path / "u2",
                         "--holdout", "0.25")  # fmt: skip
    assert code == 0, err
    data = json.loads(out.strip().splitlines()[-1])["data"]
    assert data["time"] == "row_order"
    assert data["rows_already_seen"] == 10 and data["rows_new"] == 4
    child = pl.read_parquet(tmp_path / "u2" / "features" / "interactions.parquet")
    child = child.filter(pl.col("interaction") == 1)
    parent = pl.read_parquet(tmp_path / "run" / "features" / "interactions.parquet")
    last = parent.filter(pl.col("interaction") == 1)["ts"].max()
    assert child.height == parent.filter(pl.col("interaction") == 1).height + 4
    assert (child.sort("ts").tail(4)["ts"] > last).all()  # the new rows come after the run's
