"""What to change when ingest stops: the hint that follows the top reason of the quarantine in
its one-line error (data options named by their config keys; ``data ingest`` shows its flags)."""

from __future__ import annotations

from typing import Any

from recsys_mtl.data.raw import Layout

__all__ = ["stop_hint"]

# the side table whose ids a reason checks the ratings against
_SIDE_OF = {"unknown_user": "users", "unknown_item": "items"}


def stop_hint(
    reason: str,
    scale: tuple[float, float],
    observed: tuple[float, float] | None = None,
    layout: Layout | None = None,
    side_reports: dict[str, dict[str, Any]] | None = None,
) -> str:
    """``; what to change`` for the top ``reason`` of a stopped ingest ("" when none helps)."""
    if reason == "rating_out_of_scale":
        found = ""
        if observed is not None:
            lo, hi = observed
            found = f", which spans {lo:g}-{hi:g} ([{lo:g}, {hi:g}] or auto)"
        return (
            f"; the scale is {scale[0]:g}-{scale[1]:g}: set data.rating_scale to the log's{found}"
        )
    if reason in ("missing_user_id", "missing_item_id"):
        return (
            "; an empty id, or one spelled as a missing value (nan, NA, null, None), names no "
            "one: check data.separator, data.header and data.columns, or raise "
            "data.max_quarantine_share to drop such rows"
        )
    if reason.startswith(("malformed_line", "missing_")):
        return "; check data.separator, data.header and data.columns"
    ids = reason in ("invalid_user_id", "invalid_item_id")
    if ids and layout is not None and layout.kind not in ("csv", "parquet"):
        return (
            f"; the {layout.name} layout has integer ids: for a log of its own, give the file "
            f"itself as data.path ({layout.files['ratings'].name}) with data.columns"
        )
    if reason in _SIDE_OF:
        return _side_hint((side_reports or {}).get(_SIDE_OF[reason]))
    if reason == "invalid_ts":
        return (
            "; times are read as epoch numbers or ISO 8601, and none before 1970: set "
            "data.timestamp_format (a strptime format) for another form, or data.columns.ts to "
            "none to use row order as time"
        )
    if reason == "duplicate_pair":
        clicks = layout is None or layout.kind in ("csv", "parquet")
        return (
            "; the latest rating of each (user, item) is kept: raise data.max_quarantine_share "
            "to accept a log that repeats pairs"
            + ("; for clicks without ratings, set data.columns.rating to none" if clicks else "")
        )
    return ""


def _side_hint(report: dict[str, Any] | None) -> str:
    """Why ratings name ids absent from a side table: the table's own lines were rejected (a
    column added or missing), or the ids are not in it."""
    if report is None:
        return ""
    source, read, kept = report["source"], report["rows_read"], report["rows_kept"]
    rejected = report.get("rows_quarantined") or {}
    if not rejected:
        return f"; their ids are not among the {kept:,} rows of {source}"
    reasons = ", ".join(f"{r}: {n:,}" for r, n in sorted(rejected.items(), key=lambda rn: -rn[1]))
    return (
        f"; {source} itself kept {kept:,} of its {read:,} lines ({reasons}): its lines must "
        "have the layout's fields (more are ignored, fewer are not)"
    )
