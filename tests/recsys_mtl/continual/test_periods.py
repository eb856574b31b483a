"""Periods, probe slices, id books and the stream section of the config."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_mtl.config import StreamConfig, load_config
from recsys_mtl.continual import IdBook, cut_periods
from recsys_mtl.errors import UserError
from tests.conftest import tiny_config

from .conftest import WEEK


def test_weekly_periods_count_from_the_first_rating(log: pl.DataFrame) -> None:
    plog = cut_periods(log, StreamConfig(period="1w", base=2, validation_periods=1))
    f = plog.frame
    assert f["ts"].is_sorted()
    expected = (f["ts"] - f["ts"].min()) // WEEK
    assert (f["period"].cast(pl.Int64) == expected).all()
    assert plog.n_periods == int(expected.max()) + 1


def test_day_month_and_count_periods() -> None:
    day = 86_400
    ts = [0, day - 1, day, 40 * day, 70 * day]  # 1970-01-01 .. 1970-03-12
    df = pl.DataFrame({"user_id": [1] * 5, "item_id": list(range(5)), "rating": [3.0] * 5,
                       "ts": ts})  # fmt: skip
    one = dict(base=1, validation_periods=0, probe_fraction=0.0)
    assert cut_periods(df, StreamConfig(period="1d", **one)).frame["period"].to_list() == [
        0, 0, 1, 40, 70]  # fmt: skip
    assert cut_periods(df, StreamConfig(period="1M", **one)).frame["period"].to_list() == [
        0, 0, 0, 1, 2]  # fmt: skip
    assert cut_periods(df, StreamConfig(period="count:2", **one)).frame["period"].to_list() == [
        0, 0, 1, 1, 2]  # fmt: skip


def test_probe_slices_are_seeded_and_a_tenth_of_each_period(log: pl.DataFrame) -> None:
    cfg = StreamConfig(base=2, validation_periods=1, seed=3)
    a, b = cut_periods(log, cfg), cut_periods(log, cfg)
    assert a.frame["probe"].to_list() == b.frame["probe"].to_list()
    sizes = a.sizes()
    assert (sizes["probe_rows"] == (sizes["rows"] * 0.1).round().cast(pl.UInt32)).all()
    other = cut_periods(log, cfg.model_copy(update={"seed": 4}))
    assert other.frame["probe"].to_list() != a.frame["probe"].to_list()
    trainable = a.rows([0, 1])
    assert not trainable["probe"].any()
    assert a.rows([0, 1], probe=None).height == trainable.height + a.rows([0, 1], True).height


def test_too_few_periods_is_one_line_user_error(log: pl.DataFrame) -> None:
    with pytest.raises(UserError, match=r"fewer than stream\.base"):
        cut_periods(log, StreamConfig(base=40))


def test_a_log_whose_ratings_share_one_time_is_told_to_cut_by_count() -> None:
    df = pl.DataFrame({"user_id": list(range(50)), "item_id": [1] * 50, "rating": [3.0] * 50,
                       "ts": [0] * 50})  # fmt: skip
    with pytest.raises(UserError, match=r"every rating has the same time 0.*count:N"):
        cut_periods(df, StreamConfig(period="1w", base=2, validation_periods=1))
    plog = cut_periods(df, StreamConfig(period="count:10", base=2, validation_periods=1))
    assert plog.n_periods == 5


def test_ids_get_rows_in_order_of_first_appearance() -> None:
    book = IdBook()
    assert book.add(pl.Series([5, 3, 5, 9])) == 3
    assert book.rows(pl.Series([9, 5, 3, 7])).tolist() == [2, 0, 1, -1]
    assert book.add(pl.Series([7, 3])) == 1
    assert book.rows(pl.Series([7])).tolist() == [3]
    strings = IdBook()
    strings.add(pl.Series(["b", "a"]))
    assert strings.rows(pl.Series(["a", "z"])).tolist() == [1, -1]


def test_stream_section_errors_name_the_key(tmp_path) -> None:
    bad = tiny_config(tmp_path, {"format": "synthetic"}, stream={"period": "3x"})
    with pytest.raises(UserError, match=r"stream\.period"):
        load_config(bad)
    unknown = tiny_config(tmp_path, {"format": "synthetic"},
                          stream={"strategies": ["full"], "settings": {"replay": {}}})  # fmt: skip
    with pytest.raises(UserError, match="stream"):
        load_config(unknown)
    ok = tiny_config(tmp_path, {"format": "synthetic"}, split={"strategy": "stream"},
                     stream={"period": "count:500"})  # fmt: skip
    assert load_config(ok).stream.period == "count:500"
    assert np.isclose(load_config(ok).stream.probe_fraction, 0.1)
