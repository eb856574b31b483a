"""A stream over a log with a gap longer than a period (a holiday, an outage, a log in another
time unit): the empty periods are reported as empty, and the figures pooled over periods stay
numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.continual.metrics import transfer_metrics
from tests.conftest import write

WEEK = 7 * 86_400


def _gappy_log(path: Path) -> Path:
    """12 weeks of ratings, then 3 weeks without any, then 6 weeks more."""
    rng = np.random.default_rng(0)
    rows, seen = [], set()
    weeks = [*range(12), *range(15, 21)]
    for n in range(900):
        u, i = int(rng.integers(30)), int(rng.integers(40))
        if (u, i) in seen:
            continue
        seen.add((u, i))
        t = 1_600_000_000 + weeks[n * len(weeks) // 900] * WEEK + int(rng.integers(WEEK))
        rows.append((u, i, int(rng.integers(1, 6)), t))
    rows.sort(key=lambda r: r[3])
    return write(path, "user_id,item_id,rating,ts\n" + "".join(f"{u},{i},{r},{t}\n"
                                                            for u, i, r, t in rows))  # fmt: skip


@pytest.mark.filterwarnings("error:All-NaN slice:RuntimeWarning")
def test_a_stream_over_a_log_with_empty_periods_runs_and_reports_them_empty(cli, tmp_path):
    doc = {
        "name": "gap",
        "data": {"path": str(_gappy_log(tmp_path / "gap.csv"))},
        "model": {"name": "bellkor", "params": {"dim": 4}},
        "tasks": ["rating"],
        "train": {"epochs": 1, "patience": None, "refit": False},
        "split": {"strategy": "stream"},
        "stream": {"period": "1w", "base": 8, "validation_periods": 2,
                   "strategies": ["fine_tune"]},
        "tracking": {"enabled": False},
    }  # fmt: skip
    cfg = write(tmp_path / "gap.yaml", yaml.safe_dump(doc))
    code, _, err = cli("stream", cfg, "--out", tmp_path / "s", "--no-ranking")
    # the fast path of an empty period was a numpy broadcast error: a traceback, exit 1
    assert code == 0 and "Traceback" not in err, err
    record = json.loads((tmp_path / "s" / "stream.json").read_text())
    periods = record["chains"]["fine_tune"]["0"]["periods"]
    empty = [p["period"] for p in periods if p["metrics"].get("rows/all", 0) == 0]
    assert empty == [12, 13, 14]  # the three weeks without a rating
    # the probe slices of those weeks have no value: the forgetting pooled over the others is
    # a number, not NaN
    forgetting = record["strategies"]["fine_tune"]["probe/rating/rmse/forgetting"]
    assert forgetting is not None and math.isfinite(forgetting)


def test_transfer_metrics_pool_over_the_probe_periods_that_have_a_value() -> None:
    nan = float("nan")
    m = [[0.90, nan, 1.00], [0.95, nan, 0.92], [1.00, nan, 0.93]]  # period 1's probe is empty
    out = transfer_metrics(m, [0, 1, 2], [0, 1, 2], "rating/rmse")
    assert out["per_period"]["forgetting"][0] == pytest.approx(0.10)
    assert math.isnan(out["per_period"]["forgetting"][1])
    assert out["forgetting"] == pytest.approx(0.10) and out["bwt"] == pytest.approx(-0.10)
    none = transfer_metrics([[nan, nan], [nan, nan]], [0, 1], [0, 1], "rating/rmse")
    assert math.isnan(none["forgetting"]) and math.isnan(none["bwt"])
