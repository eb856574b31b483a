"""The positive-only test-then-learn stream: popularity on a hand-made stream, and the model
with its popularity blend on the first events of ml-100k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipelines.continual.positive import BLEND, popularity_hits, positive_stream


def test_popularity_hits_rank_the_counts_so_far_minus_the_users_items() -> None:
    users = np.array([0, 1, 1, 2, 0, 2])
    items = np.array([0, 0, 1, 0, 1, 2])
    hits = popularity_hits(users, items, start=3, n_items=3, k=1)
    # event 3: user 2, counts (2, 1, 0): top 1 is item 0 -> hit
    # event 4: user 0 knows item 0; counts (3, 1, 0): top 1 outside it is item 1 -> hit
    # event 5: user 2 knows item 0; counts (3, 2, 0): top 1 is item 1, the event is item 2 -> miss
    assert hits.tolist() == [True, True, False]


def test_positive_stream_reports_popularity_and_the_model_with_its_blend(ml100k: Path) -> None:
    from recsys_mtl.config import load_config
    from recsys_mtl.continual import SideInfo

    cfg = load_config(
        str(Path(__file__).resolve().parents[3] / "configs" / "ml100k_bellkor.yaml"),
        ["model.params.dim=8", "train.epochs=1", "tracking.enabled=false"],
    )
    frame = pl.read_csv(ml100k / "u.data", separator="\t", has_header=False,
                        new_columns=["user_id", "item_id", "rating", "ts"])  # fmt: skip
    rows = positive_stream(cfg, frame, SideInfo.none(), ["fine_tune"], [0], quick=True)
    names = [r["labels"]["strategy"] for r in rows]
    assert names == ["popularity", "fine_tune", "fine_tune+popularity"]
    for r in rows:
        assert 0.0 <= r["metrics"]["recall@10"] <= 1.0 and r["metrics"]["events"] == 2800
    assert rows[2]["metrics"]["blend_weight"] in BLEND
    assert rows[2]["metrics"]["valid/recall@10"] >= rows[1]["metrics"]["valid/recall@10"]


def test_today_prefix_holds_each_users_earlier_known_items_of_the_slice() -> None:
    from pipelines.continual.positive import _today_prefix

    users = np.array([5, 7, 5, 5, 7, 9])
    rows = np.array([10, 11, 12, -1, 13, 14])  # -1: an item the model does not know
    items, mask = _today_prefix(users, rows)
    got = [items[e][mask[e]].tolist() for e in range(len(users))]
    assert got == [[], [], [10], [10, 12], [11], []]
