"""The metric code and the split conversion of ``benchmarks/sequential.py``, on hand-made cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sequential
from pages import sequential as sequential_page

sys.path.pop(0)


def test_sampled_rank_counts_higher_items_and_half_the_ties():
    scores = np.array(
        [
            [5.0, 1.0, 2.0, 3.0],  # rank 1: a hit, NDCG 1
            [1.0, 2.0, 3.0, 4.0],  # rank 4: a miss at k = 2
            [2.0, 2.0, 2.0, 2.0],  # rank 1 + 3 / 2 = 2.5: a miss at k = 2, a hit at k = 3
            [3.0, 4.0, 3.0, 0.0],  # rank 1 + 1 + 1 / 2 = 2.5
        ]
    )
    got = sequential.sampled_metrics(scores, k=2)
    assert got == pytest.approx({"hr@2": 1 / 4, "ndcg@2": 1 / 4})
    got = sequential.sampled_metrics(scores, k=3)
    assert got["hr@3"] == pytest.approx(3 / 4)
    assert got["ndcg@3"] == pytest.approx((1 + 2 / np.log2(3.5)) / 4)


def test_full_rank_leaves_out_the_excluded_items():
    scores = np.array(
        [
            [9.0, 8.0, 1.0, 0.5, 0.2],  # items 0 and 1 excluded: the target (2) ranks first
            [0.0, 5.0, 5.0, 5.0, 9.0],  # target 1 ties with 2 and 3; 4 is excluded: rank 2
        ]
    )
    exclude = np.array([[True, True, False, False, False], [False, False, False, False, True]])
    target = np.array([2, 1])
    got = sequential.full_metrics(scores, target, exclude, k=1)
    assert got == pytest.approx({"hr@1": 0.5, "ndcg@1": 0.5})
    got = sequential.full_metrics(scores, target, exclude, k=2)
    assert got == pytest.approx({"hr@2": 1.0, "ndcg@2": (1 + 1 / np.log2(3)) / 2})
    assert not exclude[1, 1]  # the input mask is left as it was


def test_full_rank_refuses_an_excluded_target_and_nan_scores():
    scores = np.zeros((1, 3))
    with pytest.raises(ValueError, match="excluded"):
        sequential.full_metrics(scores, np.array([0]), np.array([[True, False, False]]))
    scores[0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sequential.full_metrics(scores, np.array([0]), np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        sequential.sampled_metrics(np.array([[1.0, np.nan]]))


def _split(tmp_path: Path) -> tuple[Path, Path]:
    """User 0 rated items 5, 6 and 7 in the same second (rows 3, 1, 2) after item 4; user 1
    rated two items."""
    split, features = tmp_path / "split", tmp_path / "features"
    split.mkdir()
    features.mkdir()
    rows = {
        "train": [(0, 0, 4, 100), (1, 0, 6, 200), (4, 1, 4, 50)],
        "valid": [(2, 0, 7, 200)],
        "test": [(3, 0, 5, 200), (5, 1, 6, 60)],
    }
    for part, items in rows.items():
        r, u, i, ts = zip(*items, strict=True)
        pl.DataFrame(
            {"row": r, "uidx": u, "iidx": i, "ts": ts, "interaction": [1] * len(r)},
            schema={"row": pl.Int64, "uidx": pl.Int32, "iidx": pl.Int32, "ts": pl.Int64,
                    "interaction": pl.Int8},
        ).write_parquet(split / f"{part}.parquet")  # fmt: skip
    pl.DataFrame({"uidx": [0, 1], "user_id": [10, 11]}).write_parquet(
        features / "user_features.parquet"
    )
    pl.DataFrame({"iidx": list(range(8)), "item_id": list(range(100, 108))}).write_parquet(
        features / "item_features.parquet"
    )
    return split, features


def test_ties_in_time_follow_the_row_in_the_log(tmp_path: Path):
    split, _ = _split(tmp_path)
    pos = sequential.ordered_positives(split)
    user0 = pos.filter(pl.col("uidx") == 0)
    assert user0["iidx"].to_list() == [4, 6, 7, 5]  # same second: rows 1, 2, 3
    assert user0["part"].to_list() == ["train", "train", "valid", "test"]
    assert user0["seq"].to_list() == [1, 2, 3, 4]


def test_recbole_atomic_file_orders_each_user_as_the_split(tmp_path: Path):
    _split(tmp_path)
    path = sequential.recbole_atomic(tmp_path, tmp_path / "atomic")
    assert path == tmp_path / "atomic" / "llo" / "llo.inter"
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert lines[1:] == [
        "10\t104\t1.0", "10\t106\t2.0", "10\t107\t3.0", "10\t105\t4.0",
        "11\t104\t1.0", "11\t106\t2.0",
    ]  # fmt: skip


def _run_rows(method: str, hr: list[float], ndcg: list[float], seconds: float) -> list[dict]:
    return [
        {
            "labels": {"method": method, "seed": seed},
            "metrics": {"ranking/hr@10": h, "ranking_full/ndcg@10": n, "train/seconds": seconds,
                        "train/seconds_per_epoch": seconds / 10, "epoch_measured": True},
        }
        for seed, (h, n) in enumerate(zip(hr, ndcg, strict=True))
    ]  # fmt: skip


def test_page_judges_each_target_on_the_means_over_seeds(tmp_path: Path):
    assert "Not measured yet" in sequential_page.page(tmp_path)
    rows = (
        _run_rows("bellkor", [0.68, 0.66], [0.080, 0.076], 3.0)
        + _run_rows("sasrec", [0.75, 0.73], [0.100, 0.094], 100.0)
        + _run_rows("recbole-sasrec", [0.50, 0.52], [0.060, 0.062], 150.0)
    )
    doc = {
        "benchmark": "sequential", "machine": {"cpus": 2}, "versions": {"recbole": "1.2.1"},
        "budget_seconds": 150.0, "seeds": [0, 1], "seconds": 600.0, "rows": rows,
    }  # fmt: skip
    (tmp_path / "sequential.json").write_text(json.dumps(doc) + "\n")
    text = sequential_page.page(tmp_path)
    assert "| RecBole SASRec | 2 | 0.5100 ± 0.0141 |" in text
    assert "| sasrec: sampled HR@10 | 0.7400 | >= 0.72 | yes |" in text
    assert "| sasrec: full NDCG@10 over BellKor's (0.0780) | +24.4% | >= +20% | yes |" in text
    assert "| sasrec: full NDCG@10 vs RecBole SASRec | 0.0970 vs 0.0610 | higher | yes |" in text
    assert "10.0 vs 15.0 (0.667) | <= 0.2 | no |" in text


def test_a_product_method_without_its_recipe_or_ranker_is_skipped(monkeypatch: pytest.MonkeyPatch):
    assert sequential.skip_reason("recbole-sasrec") is None
    assert sequential.skip_reason("bellkor") is None
    monkeypatch.setitem(sequential.OURS, "sasrec", ("no_such_recipe.yaml", {}))
    assert sequential.skip_reason("sasrec") == "configs/no_such_recipe.yaml does not exist yet"
    assert sequential.skip_reason("sasrec-next-item") == sequential.skip_reason("sasrec")
    assert sequential.skip_reason("transfer") == sequential.skip_reason("sasrec")
    monkeypatch.setitem(sequential.OURS, "bert4rec", ("ml100k.yaml", {"model.name": "nope"}))
    assert sequential.skip_reason("bert4rec") == "the nope ranker is not registered"
