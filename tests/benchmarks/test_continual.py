"""The tuning chain and the settings rule of ``benchmarks/continual.py`` (its ``tune`` part,
``continual_tune``), on hand-made cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import continual
import continual_tune

sys.path.pop(0)

WEEK = 7 * 86_400


def _log(weeks: int = 20, per_week: int = 30) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    n = weeks * per_week
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, 40, n),
            "item_id": rng.integers(0, 25, n),
            "rating": rng.integers(1, 6, n).astype(np.float32),
            "ts": np.repeat(np.arange(weeks) * WEEK, per_week)
            + np.tile(np.arange(per_week), weeks),
        }
    )


def test_tune_chain_stops_at_the_validation_weeks_and_pools_them_after_chained_updates():
    cfg = continual._cfg(["als_rows"])  # base weeks 0-9, validation weeks 10-15
    plog, proto, pooled = continual_tune.tune_chain(cfg, _log(), tune_base=2)
    assert plog.frame["period"].max() == 15  # weeks 16-19 dropped before any training
    assert plog.n_periods == 16
    assert (proto.base, proto.validation, proto.test) == (2, 14, 0)
    assert not proto.tested
    assert pooled.tolist() == [10, 11, 12, 13, 14, 15]  # week 10 comes after 8 updates here

    _, proto, pooled = continual_tune.tune_chain(cfg, _log())  # the stream's own base
    assert (proto.base, proto.validation) == (10, 6)
    assert pooled.tolist() == [11, 12, 13, 14, 15]  # week 10: the base model, not updated
    with pytest.raises(ValueError, match="tune base"):
        continual_tune.tune_chain(cfg, _log(), tune_base=11)


def _row(settings: dict, slow: float, fast: float, cost: float = 0.1) -> dict:
    name = "full" if settings is None else "als_rows"
    return {
        "labels": {"strategy": name, "settings": settings or {}},
        "metrics": {
            "valid/slow/warm/rmse": slow,
            "valid/fast/warm/rmse": fast,
            "cost/rows_epochs_ratio": 1.0 if name == "full" else cost,
            "cost/cpu_seconds_ratio": 1.0 if name == "full" else cost,
        },
    }


def test_chosen_settings_ranks_by_the_criterion_and_applies_the_cap():
    rows = [
        _row(None, 1.00, 0.98),
        _row({"a": 1}, 0.99, 0.995),  # best slow, served 0.015 behind full
        _row({"a": 2}, 1.004, 0.985),  # worst gap 0.005: best on both paths together
        _row({"a": 3}, 1.02, 0.97),  # best served
        _row({"a": 4}, 0.95, 0.95, cost=0.25),  # best everywhere, over the cap
    ]
    assert continual_tune.chosen_settings(rows) == {"als_rows": {"a": 1}}
    assert continual_tune.chosen_settings(rows, criterion="fast") == {"als_rows": {"a": 3}}
    assert continual_tune.chosen_settings(rows, criterion="both") == {"als_rows": {"a": 2}}
    assert continual_tune.chosen_settings(rows, cap=0.3, criterion="both") == {"als_rows": {"a": 4}}
    with pytest.raises(ValueError, match="needs the full"):
        continual_tune.chosen_settings(rows[1:], criterion="both")
