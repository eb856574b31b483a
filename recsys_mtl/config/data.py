"""The data-side sections: ``data:`` (the log read), ``features:`` and ``split:``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from recsys_mtl.config.base import Frozen

__all__ = [
    "DATA_FORMATS",
    "ColdStartConfig",
    "ColumnsConfig",
    "DataConfig",
    "FeaturesConfig",
    "SplitConfig",
    "SyntheticConfig",
]

DATA_FORMATS = (
    "auto",
    "synthetic",
    "ml-100k",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-32m",
    "ml-latest",
    "ml-latest-small",
    "csv",
    "parquet",
)


class SyntheticConfig(Frozen):
    """The built-in MovieLens-shaped generator (used when ``data.format`` is ``synthetic``): it
    writes a GroupLens layout that the same readers as real data read."""

    users: int = Field(943, ge=2, description="number of users generated")
    items: int = Field(1682, ge=2, description="number of items generated")
    ratings: int = Field(
        100_000, ge=1, description="target number of distinct (user, item) ratings"
    )
    layout: Literal["ml-100k", "ml-1m", "ml-latest"] = Field(
        "ml-100k",
        description="GroupLens layout the files are written in: ml-100k (u.data, u.user, "
        "u.item), ml-1m (::-separated .dat files) or ml-latest (ratings.csv, movies.csv)",
    )
    factors: int = Field(
        8, ge=1, description="latent dimension of the true preference model the ratings follow"
    )
    noise: float = Field(
        0.5, ge=0.0, description="standard deviation of the Gaussian rating noise, in stars"
    )
    seed: int = Field(0, ge=0, description="generator seed: the same seed writes the same files")


# the names data.separator accepts for separators that are awkward to type or to quote
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "space": " ", "whitespace": "whitespace"}
# data.columns.ts (and .rating) values that mean "no such column": row order is time (ts),
# every row is a positive interaction (rating)
NO_TS = ("none", "null")


class ColumnsConfig(Frozen):
    """Column mapping of a generic CSV/Parquet log: each canonical field -> the file's column,
    by its name in the header or by its 0-based position."""

    user_id: str | int = Field(
        "user_id",
        description="the file's column holding the user id: its name in the header, or its "
        "0-based position (the way to name columns with data.header: false)",
    )
    item_id: str | int = Field(
        "item_id", description="the file's column holding the item id (a name or a position)"
    )
    rating: str | int | None = Field(
        "rating",
        description="the file's column holding the rating (a name or a position); none or null: "
        "a log without ratings (clicks, views, purchases), every row a positive interaction "
        "read as rating 1 on the scale [0, 1], repeated (user, item) pairs merged, tasks: "
        "[interaction] only",
    )
    ts: str | int | None = Field(
        "ts",
        description="the file's timestamp column (a name or a position; epoch numbers, ISO "
        "8601, or data.timestamp_format); none or null: no timestamp, row order is used as time",
    )

    @field_validator("user_id", "item_id", "rating", "ts", mode="before")
    @classmethod
    def _column(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, str | int | None):
            raise ValueError("a column is a name or a 0-based position")
        if isinstance(v, int) and v < 0:
            raise ValueError("a column position counts from 0")
        return v

    @field_validator("ts", "rating")
    @classmethod
    def _no_column(cls, v: str | int | None) -> str | int | None:
        return None if isinstance(v, str) and v.strip().lower() in NO_TS else v


class DataConfig(Frozen):
    """The rating log a run reads and how to read it. ``data.path`` is required unless
    ``data.format`` is ``synthetic``."""

    path: str | None = Field(
        None,
        description="a GroupLens folder (u.data, ratings.dat or ratings.csv inside) or a "
        "CSV/Parquet log file; relative paths are taken from the current directory; required "
        "unless data.format is synthetic",
    )
    format: Literal[DATA_FORMATS] = Field(  # type: ignore[valid-type]
        "auto",
        description="the log's layout: auto (detected from the files: u.data, ratings.dat with or "
        "without users.dat, ratings.csv, a .csv or .parquet file), synthetic (the built-in "
        "generator, data.synthetic), a GroupLens release (ml-100k, ml-1m, ml-10m, ml-20m, "
        "ml-25m, ml-32m, ml-latest, ml-latest-small; must agree with the files) or a generic "
        "log (csv, parquet; columns mapped by data.columns)",
    )
    rating_scale: tuple[float, float] | Literal["auto"] | None = Field(
        None,
        description="[low, high] of valid ratings, in stars, low below high; rows outside it "
        "are quarantined (rating_out_of_scale); null: per layout, 1-5 (ml-100k, ml-1m, generic) "
        "or 0.5-5 (ml-10m and later, half stars); auto: the lowest and highest rating in the "
        "log (ingest logs what it found); a log without ratings (data.columns.rating: none) is "
        "on [0, 1] (null or auto)",
    )
    columns: ColumnsConfig = Field(
        ColumnsConfig(),
        description="generic logs: the file's column for each field, by header name or 0-based "
        "position",
    )
    separator: str = Field(
        ",",
        description="generic CSV logs: the one-character field separator (surrounding double "
        "quotes are stripped from fields, and a separator inside them belongs to the field), or "
        "a name: tab, space, or whitespace (any run of spaces and tabs, edge ones ignored); \\t "
        "(backslash, t) is a tab",
    )
    header: bool = Field(
        True,
        description="generic CSV logs: the first line names the columns; false: every line is "
        "data and data.columns gives 0-based positions, by default user_id 0, item_id 1, "
        "rating 2 and ts 3 (row order as time when the lines have 3 fields)",
    )
    timestamp_format: str | None = Field(
        None,
        description="generic logs: strptime format of string timestamps, e.g. %Y-%m-%d %H:%M:%S; "
        "null: numbers are epoch seconds (decimals floored; a log whose every positive time is "
        "10^11 or more counts milliseconds, 10^14 microseconds, 10^17 nanoseconds), strings ISO "
        "8601 (with a UTC offset, converted to UTC; without one, read as UTC)",
    )
    synthetic: SyntheticConfig = Field(
        SyntheticConfig(), description="the built-in generator's settings (data.format: synthetic)"
    )
    memory_mb: int = Field(
        1024,
        ge=16,
        description="memory the data stages aim to stay within, in MB: the work that needs a "
        "user's whole log (duplicate pairs, negatives that avoid every rated item) runs per "
        "hash partition of the users, as many partitions as keep one within half of it; the "
        "negatives are also drawn in partitions of about 2M ratings on average, which draw faster (a "
        "log of up to 2M that fits stays one partition). Lower it on a small machine (more, "
        "smaller partitions: the same ingested tables; negatives drawn per partition, never a "
        "rated item)",
    )
    max_quarantine_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="ingest stops (exit 2) when a larger share of rating rows is quarantined, "
        "naming the top reason and the quarantine file; 1.0 accepts anything but an empty result",
    )

    @field_validator("separator", mode="before")
    @classmethod
    def _separator(cls, v: object) -> object:
        if v is None:
            raise ValueError(
                "the separator is null (YAML reads an empty value, and a bare space as in "
                "--set data.separator=' ', as null): write space, tab or whitespace"
            )
        if not isinstance(v, str):
            return v
        named = SEPARATOR_NAMES.get(v.lower() if len(v) > 1 else v, v)
        if len(named) != 1 and named != "whitespace":
            raise ValueError("expected one character, or tab, space or whitespace")
        return named

    @field_validator("rating_scale", mode="before")
    @classmethod
    def _scale_auto(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip().lower() != "auto":
                raise ValueError("expected [low, high] (two numbers), auto or null")
            return "auto"
        numbers = isinstance(v, list | tuple) and len(v) == 2
        numbers = numbers and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        if v is not None and not numbers:
            raise ValueError("expected [low, high] (two numbers), auto or null")
        return v

    @field_validator("rating_scale")
    @classmethod
    def _scale_ordered(
        cls, v: tuple[float, float] | str | None
    ) -> tuple[float, float] | str | None:
        if isinstance(v, tuple) and not v[0] < v[1]:
            raise ValueError(f"low must be below high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.format != "synthetic" and self.path is None:
            raise ValueError("data.path is required unless data.format is 'synthetic'")
        if self.columns.rating is None and isinstance(self.rating_scale, tuple):
            raise ValueError(
                "data.rating_scale: a log without ratings (data.columns.rating: none) is read "
                "on the scale [0, 1]; leave data.rating_scale null"
            )
        return self


class FeaturesConfig(Frozen):
    """The feature tables built from the log: sampled negatives, the like label, time and side
    features."""

    negatives_per_positive: int = Field(
        1,
        ge=0,
        le=100,
        description="items drawn per rating among those the user never rated, as negatives of "
        "the interaction task; 0 draws none",
    )
    like_threshold: float = Field(
        4.0,
        description="a rating at or above it is a like (like = rating >= like_threshold), in "
        "stars; also the relevance cut of cold-start ranking metrics",
    )
    time_bins: int = Field(
        30, ge=1, le=10_000, description="equal-width bins over the log's time span (time_bin)"
    )
    year_bucket: int = Field(
        5, ge=1, le=100, description="years of release per release-year bucket (an item feature)"
    )
    zip_prefix: int = Field(
        1, ge=1, le=5, description="leading zip-code characters kept as a user feature"
    )
    seed: int = Field(0, description="seed of the negative sampling")


class ColdStartConfig(Frozen):
    """``split.strategy: cold_start_users``: the held-out users and their support sets."""

    user_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="seeded share of users held out entirely (among those with more than "
        "support_size ratings)",
    )
    support_size: int = Field(
        10,
        ge=1,
        description="K: a held-out user's first K ratings by time are the support set "
        "(support.parquet), the rest the test set",
    )


class SplitConfig(Frozen):
    """How ratings are divided into train, validation and test parts. Validation is always
    carved from the training part."""

    strategy: Literal[
        "random", "temporal", "leave_last_out", "predefined", "cold_start_users", "kfold", "stream"
    ] = Field(
        "random",
        description="random (a seeded share of ratings), temporal (one global cut in time), "
        "leave_last_out (each user's latest rating), predefined (split.train / split.test "
        "files), cold_start_users (held-out users, split.cold_start), kfold (k-fold "
        "cross-validation, split.folds) or stream (the log as periods for continual training, "
        "the stream section)",
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of ratings in the test part (random, temporal)"
    )
    valid_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share of the training part kept for validation (early stopping, valid/ "
        "metrics): latest per user (leave_last_out), latest share (temporal), seeded random "
        "share (others); 0: no validation part (then train.patience must be null)",
    )
    seed: int = Field(0, description="seed of the random shares, user draws and fold partition")
    train: str | None = Field(
        None,
        description="predefined: the training file, in the log's own format (e.g. u1.base); "
        "required with that strategy",
    )
    test: str | None = Field(
        None,
        description="predefined: the test file, in the log's own format (e.g. u1.test); "
        "required with that strategy; a pair in both files exits 2",
    )
    cold_start: ColdStartConfig = Field(
        ColdStartConfig(), description="cold_start_users: the held-out users and K"
    )
    folds: int = Field(5, ge=2, le=100, description="kfold: number of folds")
    fold: int = Field(
        0,
        ge=0,
        description="kfold: the fold tested, below split.folds (recsys-mtl run runs every fold "
        "itself; set it only to run one)",
    )

    @model_validator(mode="after")
    def _predefined_files(self) -> SplitConfig:
        if self.strategy == "predefined" and (self.train is None or self.test is None):
            raise ValueError("strategy 'predefined' needs split.train and split.test")
        if self.fold >= self.folds:
            raise ValueError(f"split.fold must be below split.folds={self.folds}, got {self.fold}")
        return self
