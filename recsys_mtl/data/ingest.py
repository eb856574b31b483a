"""Ingest: a raw rating log -> canonical Parquet tables, with every rejected row kept aside.

Outputs (in ``out_dir``):

* ``interactions.parquet``: ``user_id, item_id, rating (f32), ts (i64, epoch seconds)`` in log
  order (the order later breaks ties between equal timestamps);
* ``users.parquet``: ``user_id, age, gender, occupation, zip`` (nulls where the log has none);
* ``items.parquet``: ``item_id, title, year, genres (list[str])``;
* ``tags.parquet`` when the log has tags;
* ``quarantine.parquet``: ``table, source, line, reason, raw`` for every rejected row;
* ``report.json``: rows read = rows kept + rows quarantined (per reason), per table.

Duplicate (user, item) pairs: the latest rating is kept (by timestamp, then by position in the
log); the others are quarantined as ``duplicate_pair``. ``data.rating_scale: auto`` takes the
scale from the log (its lowest and highest parsed rating) and logs what it found.

A log without ratings (``data.columns.rating: none``: clicks, views, purchases) has rating 1 on
every row, on the scale :data:`NO_RATING_SCALE`; a repeated pair is a repeat, not an error: the
latest is kept as above and the others, still quarantined as ``duplicate_pair`` (rows read =
kept + quarantined), are "merged", not counted against ``data.max_quarantine_share``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.grouplens import detect_layout, read_layout
from recsys_mtl.data.hints import stop_hint
from recsys_mtl.data.lines import QUARANTINE_SCHEMA, quarantine_frame, reason_counts
from recsys_mtl.data.onepass import stream_interactions
from recsys_mtl.data.parquet_scan import rejected_text
from recsys_mtl.data.raw import Layout, RawTables
from recsys_mtl.data.stream import STREAMED_KINDS, discard, pair_key, scan_generic
from recsys_mtl.data.synthetic import write_synthetic
from recsys_mtl.errors import UserError
from recsys_mtl.io import write_json, write_parquet

__all__ = [
    "NO_RATING_SCALE",
    "Checked",
    "IngestResult",
    "ingest",
    "resolve_layout",
    "validate_interactions",
]

DUPLICATE_POLICY = "keep_latest"
# the rating scale of a log without ratings: every row is an interaction (1), an item never
# interacted with is 0 (the negatives of the interaction task); a range that divides
NO_RATING_SCALE = (0.0, 1.0)
log = logging.getLogger("recsys_mtl.ingest")


@dataclass(frozen=True)
class IngestResult:
    report: dict[str, Any]
    out_dir: Path


def resolve_layout(cfg: DataConfig, work_dir: Path) -> Layout:
    """The layout to read; for ``synthetic`` the generator first writes its files in ``work_dir``."""
    if cfg.format == "synthetic":
        raw_dir = write_synthetic(cfg.synthetic, work_dir / "raw")
        return detect_layout(raw_dir)
    assert cfg.path is not None  # enforced by DataConfig
    return detect_layout(Path(cfg.path).expanduser(), cfg.format)


class Checked(NamedTuple):
    """What :func:`validate_interactions` found."""

    kept: pl.DataFrame  # user_id, item_id, rating (f32), ts
    rejects: pl.DataFrame  # line, reason, raw
    scale: tuple[float, float]  # the scale applied
    observed: tuple[float, float] | None  # lowest and highest finite parsed rating, if any


def validate_interactions(
    lf: pl.LazyFrame,
    scale: tuple[float, float] | None,
    known_users: pl.Series | None,
    known_items: pl.Series | None,
    default_scale: tuple[float, float] = (1.0, 5.0),
) -> Checked:
    """Apply the value rules to parsed rows: the kept rows and the rejected ones with reasons.

    ``lf`` has ``line, raw, reason, user_id, item_id, rating, ts``. Rules, first match wins:
    a parse-level reason; ``rating_out_of_scale`` (also NaN/inf); ``invalid_ts`` (negative);
    ``unknown_user`` / ``unknown_item`` (id absent from a side table); ``duplicate_pair``.
    ``scale`` None is the observed one (``default_scale`` when no rating parsed).
    """
    df = lf.collect()
    r = pl.col("rating")
    parsed = r.filter(pl.col("reason").is_null() & r.is_finite())
    span = df.select(parsed.min().alias("lo"), parsed.max().alias("hi")).row(0)
    observed = None if span[0] is None else (float(span[0]), float(span[1]))
    scale = scale if scale is not None else observed or default_scale
    lo, hi = scale
    rule = pl.when(pl.col("reason").is_not_null()).then("reason")
    rule = rule.when(~r.is_finite() | (r < lo) | (r > hi)).then(pl.lit("rating_out_of_scale"))
    rule = rule.when(pl.col("ts") < 0).then(pl.lit("invalid_ts"))
    if known_users is not None:
        rule = rule.when(~pl.col("user_id").is_in(known_users.implode())).then(
            pl.lit("unknown_user")
        )
    if known_items is not None:
        rule = rule.when(~pl.col("item_id").is_in(known_items.implode())).then(
            pl.lit("unknown_item")
        )
    df = df.with_columns(rule.otherwise(pl.lit(None, pl.String)).alias("reason"))

    dup_mask = _duplicated_pairs(df)
    if dup_mask is not None:
        # Only the (few) duplicated pairs are sorted: the latest by (ts, line) survives.
        dups = df.filter(dup_mask).sort("ts", "line")
        losers = dups.filter(~pl.struct("user_id", "item_id").is_last_distinct())["line"]
        df = df.with_columns(
            pl.when(pl.col("line").is_in(losers.implode()))
            .then(pl.lit("duplicate_pair"))
            .otherwise("reason")
            .alias("reason")
        )
    rejects = df.filter(pl.col("reason").is_not_null()).select("line", "reason", "raw")
    kept = df.filter(pl.col("reason").is_null()).select(
        "user_id", "item_id", pl.col("rating").cast(pl.Float32), "ts"
    )
    return Checked(kept, rejects, scale, observed)


def _duplicated_pairs(df: pl.DataFrame) -> pl.Series | None:
    """Mask of valid rows whose (user, item) pair occurs more than once, or None if none does."""
    if df.height == 0:
        return None
    ok = pl.col("reason").is_null()
    pair = pair_key(df)
    valid = df.select(pl.when(ok).then(pair).alias("k"))["k"]
    if valid.drop_nulls().n_unique() == valid.drop_nulls().len():
        return None
    return valid.is_not_null() & valid.is_duplicated()


def _rated(
    kept: pl.DataFrame | pl.LazyFrame,
    users: pl.Series | None = None,
    items: pl.Series | None = None,
) -> dict[str, int]:
    """Distinct rated users and items (a streaming aggregate of a lazy table, unless the pass
    that wrote it collected them)."""
    if users is not None and items is not None:
        return {"rated_users": users.len(), "rated_items": items.len()}
    n = kept.lazy().select(
        pl.col("user_id").n_unique().alias("rated_users"),
        pl.col("item_id").n_unique().alias("rated_items"),
    )
    return n.collect().row(0, named=True)


def _distinct(
    kept: pl.DataFrame | pl.LazyFrame, column: str, found: pl.Series | None
) -> pl.DataFrame:
    """The sorted distinct values of ``column`` (``found``: already collected by the pass)."""
    if found is not None:
        return found.sort().to_frame(column)
    return kept.lazy().select(pl.col(column).unique().sort()).collect()


def _derive_users(
    kept: pl.DataFrame | pl.LazyFrame, found: pl.Series | None = None
) -> pl.DataFrame:
    ids = _distinct(kept, "user_id", found)
    return ids.with_columns(
        pl.lit(None, pl.Int32).alias("age"),
        pl.lit(None, pl.String).alias("gender"),
        pl.lit(None, pl.String).alias("occupation"),
        pl.lit(None, pl.String).alias("zip"),
    )


def _derive_items(
    kept: pl.DataFrame | pl.LazyFrame, found: pl.Series | None = None
) -> pl.DataFrame:
    ids = _distinct(kept, "item_id", found)
    return ids.with_columns(
        pl.lit(None, pl.String).alias("title"),
        pl.lit(None, pl.Int32).alias("year"),
        pl.lit([], pl.List(pl.String)).alias("genres"),
    )


def _no_rows_message(layout: Layout, blank_lines: int, header: bool) -> str:
    """The error for a ratings file that holds no row at all (an empty file fails earlier)."""
    path = layout.files["ratings"].absolute()
    if layout.kind == "parquet":
        return f"{path}: has no rating rows (the Parquet file has 0 rows)"
    held = ["a header"] if layout.kind == "ml-csv" or (layout.kind == "csv" and header) else []
    if blank_lines:
        held.append(f"{blank_lines} blank line{'s' * (blank_lines != 1)}")
    return f"{path}: has no rating rows (the file holds only {' and '.join(held) or 'nothing'})"


def ingest(
    cfg: DataConfig,
    out_dir: str | Path,
    work_dir: str | Path | None = None,
    *,
    max_share: float | None = None,
    keep_rejected: str | Path | None = None,
    streaming: bool | None = None,
) -> IngestResult:
    """Read, validate and write the canonical tables of the log ``cfg`` describes.

    ``streaming``: the GroupLens layouts (:data:`~recsys_mtl.data.stream.STREAMED_KINDS`) and
    generic text logs a typed scan reads (:func:`~recsys_mtl.data.stream.scan_generic`) parse
    and validate their ratings in bounded memory (:mod:`recsys_mtl.data.onepass`, partitions by
    ``data.memory_mb``) unless it is False, as do other generic logs, by the text reader's rules
    from a lazy scan of their lines. Both paths write the same tables.

    ``max_share`` (the pipeline passes ``data.max_quarantine_share``): when a larger share of
    the rating rows is quarantined, stop with a :class:`UserError` naming the top reason, its
    count and the quarantine file. ``keep_rejected``: where that file is kept when ingest stops
    (a pipeline's stage folder is temporary until it completes); default ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = resolve_layout(cfg, Path(work_dir) if work_dir is not None else out)
    if streaming is not False and layout.kind in ("csv", "parquet"):  # a clean generic log
        layout = scan_generic(layout, cfg)
    streamed = streaming is not False and (layout.kind in STREAMED_KINDS or layout.scan is not None)
    raw: RawTables = read_layout(layout, cfg, ratings=not streamed)
    auto = cfg.rating_scale == "auto"
    fixed = None if auto else tuple(cfg.rating_scale or layout.rating_scale)
    if cfg.columns.rating is None:  # every row is rating 1 (a configured scale is refused)
        fixed = NO_RATING_SCALE
    known_users = raw.users["user_id"] if raw.users is not None else None
    known_items = raw.items["item_id"] if raw.items is not None else None
    work = out / "_stream"
    try:
        return _ingest(cfg, layout, raw, out, fixed, known_users, known_items, streamed, work,
                       max_share=max_share, keep_rejected=keep_rejected)  # fmt: skip
    finally:
        discard(work)


def _ingest(
    cfg: DataConfig,
    layout: Layout,
    raw: RawTables,
    out: Path,
    fixed: tuple[float, float] | None,
    known_users: pl.Series | None,
    known_items: pl.Series | None,
    streamed: bool,
    work: Path,
    *,
    max_share: float | None,
    keep_rejected: str | Path | None,
) -> IngestResult:
    implicit = cfg.columns.rating is None
    auto = cfg.rating_scale == "auto" and not implicit
    kept: pl.DataFrame | pl.LazyFrame
    ids: tuple[pl.Series | None, pl.Series | None] = (None, None)
    if streamed:
        found = stream_interactions(layout, fixed, known_users, known_items, work, cfg.memory_mb)
        kept, n_kept = pl.scan_parquet(found.kept_path), found.kept_rows
        rejects, scale, observed = found.rejects, found.scale, found.observed
        raw.blank_lines, raw.row_order_time = found.blank_lines, found.row_order_time
        ids = (found.users, found.items)
    else:
        kept, rejects, scale, observed = validate_interactions(
            raw.interactions, fixed, known_users, known_items, layout.rating_scale
        )
        n_kept = kept.height
    if n_kept + rejects.height == 0:
        raise UserError(_no_rows_message(layout, raw.blank_lines, cfg.header))
    if auto:
        _check_auto_scale(layout, observed)
    if streamed or layout.kind not in ("csv", "parquet"):  # the text of the rejected rows
        rejects = rejected_text(rejects, layout)
    quarantine = pl.concat(
        [
            pl.DataFrame(schema=QUARANTINE_SCHEMA),
            quarantine_frame(rejects, "interactions", raw.ratings_source),
            *raw.side_rejects,
        ]
    )
    counts = reason_counts(rejects)
    rows_read = n_kept + rejects.height
    # a log without ratings: repeated pairs are merged (the latest kept), not errors
    merged = counts.get("duplicate_pair", 0) if implicit else 0
    errors = {r: n for r, n in counts.items() if not (merged and r == "duplicate_pair")}
    n_bad = rejects.height - merged
    repeats = f"{merged:,} repeat{'s' * (merged != 1)} of a (user, item) pair merged (the "
    repeats += "latest kept; a log without ratings), "
    log.info(
        "ingest: %s rows read, %s kept, %s%s quarantined%s",
        f"{rows_read:,}",
        f"{n_kept:,}",
        repeats if implicit else "",
        f"{n_bad:,}",
        f" ({', '.join(f'{r}: {n:,}' for r, n in _by_count(errors))})" if errors else "",
    )
    top = _by_count(errors)[0][0] if errors else ""
    hint = stop_hint(top, scale, observed, layout, raw.side_reports) if errors else ""
    if counts.get("rating_out_of_scale") and observed is not None:
        log.warning(
            "ingest: %s rows outside data.rating_scale %g-%g quarantined; the log's ratings "
            "span %g-%g",
            f"{counts['rating_out_of_scale']:,}",
            *scale,
            *observed,
        )
    too_many = max_share is not None and n_bad > max_share * rows_read
    if n_kept == 0 or too_many:
        kept_at = Path(keep_rejected) if keep_rejected is not None else out / "quarantine.parquet"
        write_parquet(quarantine, kept_at)
        top, n_top = _by_count(errors)[0]
        ratings = layout.files["ratings"].absolute()
        if n_kept == 0:
            raise UserError(
                f"{ratings}: no usable ratings ({rejects.height:,} rows rejected; most common "
                f"reason: {top}, {n_top:,} rows{hint}); the rejected rows are in "
                f"{kept_at.absolute()}"
            )
        raise UserError(
            f"{ratings}: {n_bad:,} of {rows_read:,} rating rows "
            f"({n_bad / rows_read:.1%}) quarantined, above data.max_quarantine_share="
            f"{max_share:g}; top reason: {top} ({n_top:,} rows{hint}); the rejected "
            f"rows are in {kept_at.absolute()}"
        )
    users = raw.users if raw.users is not None else _derive_users(kept, ids[0])
    items = raw.items if raw.items is not None else _derive_items(kept, ids[1])

    if isinstance(kept, pl.LazyFrame):  # the streamed rows: already a Parquet file
        found.kept_path.replace(out / "interactions.parquet")
        kept = pl.scan_parquet(out / "interactions.parquet")
    else:
        write_parquet(kept, out / "interactions.parquet")
    write_parquet(users, out / "users.parquet")
    write_parquet(items, out / "items.parquet")
    if raw.tags is not None:
        write_parquet(raw.tags, out / "tags.parquet")
    write_parquet(quarantine, out / "quarantine.parquet")

    report: dict[str, Any] = {
        "dataset": layout.name,
        "layout": layout.kind,
        "files": {role: p.name for role, p in layout.files.items()},
        "rating_scale": list(scale),
        "rating_scale_from": _scale_from(cfg),
        "duplicate_policy": DUPLICATE_POLICY,
        "interactions": {
            "source": raw.ratings_source,
            "rows_read": rows_read,
            "rows_kept": n_kept,
            "rows_quarantined": counts,
            "blank_lines": raw.blank_lines,
            "time": "row_order" if raw.row_order_time else "timestamps",
            "ratings": "none" if implicit else "given",
            "repeats_merged": merged,
        },
        "side_tables": raw.side_reports,
        "users": users.height,
        "items": items.height,
        **_rated(kept, *ids),
        "genres": raw.genres or [],
    }
    write_json(report, out / "report.json")
    return IngestResult(report, out)


def _scale_from(cfg: DataConfig) -> str:
    """Where the report's rating scale came from."""
    if cfg.columns.rating is None:
        return "no_ratings"
    return "data" if cfg.rating_scale == "auto" else "config" if cfg.rating_scale else "layout"


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Reasons from the most to the least common (ties by name)."""
    return sorted(counts.items(), key=lambda rn: (-rn[1], rn[0]))


def _check_auto_scale(layout: Layout, observed: tuple[float, float] | None) -> None:
    """Log the scale ``auto`` found; a log with one rating value has none to find."""
    ratings = layout.files["ratings"].absolute()
    if observed is None:
        return  # no rating parsed: the no-usable-ratings error follows
    lo, hi = observed
    if lo == hi:
        raise UserError(
            f"{ratings}: data.rating_scale is auto, but every rating in the log is {lo:g}; "
            "set data.rating_scale: [low, high]"
        )
    log.info("ingest: data.rating_scale auto: the log's ratings span [%g, %g]", lo, hi)
