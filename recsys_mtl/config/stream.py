"""The ``stream:`` section: a timestamped log cut into periods for continual training."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from recsys_mtl.config.base import Frozen

__all__ = ["PERIOD_UNITS", "StreamConfig", "parse_period"]

PERIOD_UNITS = {"d": 86_400, "w": 7 * 86_400}  # and M: calendar months
_PERIOD = re.compile(r"^(?:(\d+)([dwM])|count:(\d+))$")


def parse_period(text: str) -> tuple[str, int]:
    """``1d`` / ``2w`` / ``1M`` / ``count:N`` as (unit, n): unit ``d``, ``w``, ``M`` or
    ``count``. A bad spelling is a ``ValueError``."""
    m = _PERIOD.match(text.strip())
    if m is None or int(m.group(1) or m.group(3)) < 1:
        raise ValueError(
            f"period {text!r}: expected Nd, Nw, NM (days, weeks, calendar months) or count:N"
        )
    if m.group(3) is not None:
        return "count", int(m.group(3))
    return m.group(2), int(m.group(1))


class StreamConfig(Frozen):
    """A log as a stream of periods: a base model on the first periods, strategy settings
    chosen on the validation periods, then test periods; each update trains on period t and is
    evaluated on period t + 1."""

    period: str = Field(
        "1w",
        description="length of a period: Nd (days), Nw (weeks), NM (calendar months) counted "
        "from the log's first rating, or count:N (N ratings each, in time order)",
    )
    base: int = Field(10, ge=1, description="periods the first model is trained on")
    validation_periods: int = Field(
        6,
        ge=0,
        description="periods after the base on which strategy settings are chosen (updates "
        "there are measured but never reported as test results)",
    )
    test_periods: int | None = Field(
        None,
        ge=1,
        description="periods after the validation periods that are tested; null: every "
        "remaining period",
    )
    probe_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="seeded share of each period's ratings held out as its probe slice (the "
        "metric matrix and forgetting), never trained on",
    )
    seed: int = Field(0, description="seed of the probe slices")
    strategies: list[str] = Field(
        default_factory=lambda: ["full", "fine_tune", "replay"],
        min_length=1,
        description="continual strategies run over the stream (recsys-mtl stream), each a "
        "name from the strategy registry: full, full_warm, window, fine_tune, replay, ewc, "
        "distill, transfer",
    )
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-strategy settings, keyed by strategy name (e.g. replay: {share: 0.2, "
        "sample: reservoir}); each strategy validates its own keys",
    )

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        parse_period(v)
        return v

    @model_validator(mode="after")
    def _settings_name_strategies(self) -> StreamConfig:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"stream.strategies repeat a name: {self.strategies}")
        for name in self.settings:
            if name not in self.strategies:
                raise ValueError(
                    f"stream.settings names {name!r}, which is not in stream.strategies "
                    f"{self.strategies}"
                )
        return self
