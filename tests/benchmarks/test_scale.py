"""Part 5 of ``benchmarks/scale.py``: the medians of repeated runs and the ratios to
``read_csv``, on hand-made runs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale

sys.path.pop(0)


def _labels(tool: str) -> dict:
    return {"part": 5, "size": "25M", "tool": tool, "memory_mb": 1024}


def test_a_row_keeps_the_median_and_every_run():
    runs = [
        {"rows": 9, "seconds": 3.0, "ingest_seconds": 1.0, "peak_rss_mb": 700.4},
        {"rows": 9, "seconds": 9.0, "ingest_seconds": 5.0, "peak_rss_mb": 650.2},  # a noisy run
        {"rows": 9, "seconds": 4.0, "ingest_seconds": 2.0, "peak_rss_mb": 690.0},
    ]
    row = scale._median_row(_labels("ingest"), runs)
    assert row["metrics"] == {"seconds": 4.0, "ingest_seconds": 2.0, "peak_rss_mb": 690}
    assert row["repeats"]["seconds"] == [3.0, 9.0, 4.0]
    assert row["repeats"]["peak_rss_mb"] == [700, 650, 690]
    assert "rows" not in row["metrics"] and "error" not in row


def test_a_failed_run_is_named_and_left_out_of_the_median():
    runs = [{"seconds": 2.0, "peak_rss_mb": 10}, {"error": "killed"}]
    runs.append({"seconds": 4.0, "peak_rss_mb": 30})
    row = scale._median_row(_labels("ingest"), runs)
    assert row["metrics"] == {"seconds": 3.0, "peak_rss_mb": 20}
    assert (row["error"], row["failed_repeats"]) == ("killed", 1)
    assert scale._median_row(_labels("ingest"), [{"error": "x"}])["metrics"] == {}


def test_ratios_are_to_the_median_read_csv_of_the_same_size():
    rows = [
        scale._median_row(
            _labels("read_csv"), [{"seconds": 2.0}, {"seconds": 1.0}, {"seconds": 1.5}]
        ),
        scale._median_row(
            _labels("ingest+features"),
            [{"seconds": 6.0, "ingest_seconds": 3.0, "features_seconds": 3.0}],
        ),
    ]
    scale._ratios(rows)
    assert rows[0]["metrics"]["vs_read_csv"] == 1.0
    assert rows[1]["metrics"]["vs_read_csv"] == 4.0
    assert rows[1]["metrics"]["ingest_vs_read_csv"] == 2.0
