"""``recsys-mtl data``: download a GroupLens data set, ingest a log, write a synthetic one."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pipelines.commands.common import Help
from recsys_mtl.errors import UserError

__all__ = ["NAME", "add_parser", "run"]

NAME = "data"

# the key of the data section each flag of ``data ingest`` sets, to name the flag in errors
_INGEST_FLAGS = {
    "path": "PATH",
    "format": "--format",
    "separator": "--separator",
    "header": "--no-header",
    "columns.user_id": "--user-col",
    "columns.item_id": "--item-col",
    "columns.rating": "--rating-col",
    "columns.ts": "--ts-col",
    "rating_scale": "--rating-scale",
    "timestamp_format": "--timestamp-format",
    "max_quarantine_share": "--max-quarantine-share",
}


def add_parser(subparsers: Any) -> None:
    data = subparsers.add_parser(
        NAME, help="data sets: download, ingest, synthesize", formatter_class=Help
    )
    data.set_defaults(handler=run)
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    dl = dsub.add_parser(
        "download",
        help="download a GroupLens MovieLens data set",
        description="Download a GroupLens data set with a progress bar, check its MD5 (pinned "
        "for the fixed releases, the published .md5 file for the others) and extract it to "
        "DIR/NAME. Nothing is kept on a mismatch.",
        formatter_class=Help,
    )
    dl.add_argument(
        "name",
        metavar="NAME",
        help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small, ml-latest",
    )
    dl.add_argument("--to", default="data", metavar="DIR", help="folder to put it in")
    dl.add_argument(
        "--base-url", default=None, metavar="URL", help="mirror serving the GroupLens archives"
    )
    dl.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up (one line naming the URL, exit code 1) when the server sends nothing for "
        "this long",
    )
    _add_ingest_parser(dsub)
    syn = dsub.add_parser(
        "synth",
        help="write a synthetic MovieLens-shaped log",
        description="Write a synthetic MovieLens-shaped log in a GroupLens layout.",
        formatter_class=Help,
    )
    syn.add_argument("--out", required=True, metavar="DIR", help="output folder")
    syn.add_argument("--users", type=int, default=943, metavar="N", help="number of users")
    syn.add_argument("--items", type=int, default=1682, metavar="N", help="number of items")
    syn.add_argument("--ratings", type=int, default=100_000, metavar="N", help="distinct ratings")
    syn.add_argument(
        "--layout",
        default="ml-100k",
        choices=["ml-100k", "ml-1m", "ml-latest"],
        help="GroupLens layout of the files",
    )
    syn.add_argument("--seed", type=int, default=0, metavar="S", help="generator seed")


def _add_ingest_parser(dsub: Any) -> None:
    ing = dsub.add_parser(
        "ingest",
        help="check a log and ingest it into canonical Parquet tables",
        description="Read a log as a run would (the same data options, from flags or the data "
        "section of --config FILE; flags win), write the canonical tables and the quarantine "
        "of rejected rows to DIR, and print the rows read, kept and quarantined by reason. "
        "Stops with exit code 2 above data.max_quarantine_share, like a run.",
        formatter_class=Help,
    )
    ing.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="a MovieLens folder or a CSV or Parquet file (default: data.path)",
    )
    ing.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ing.add_argument("--config", metavar="FILE", help="a run config whose data section to use")
    ing.add_argument("--format", metavar="F", help="data.format (default: the config's, else auto)")
    ing.add_argument(
        "--separator",
        metavar="S",
        help="data.separator of a generic CSV: one character such as ';', or tab, space or "
        "whitespace (runs of spaces and tabs) (default: ,)",
    )
    ing.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        default=None,
        help="data.header: false: the file has no header line; columns are given by 0-based "
        "position (user 0, item 1, rating 2, ts 3)",
    )
    for field in ("user_id", "item_id", "rating", "ts"):
        ing.add_argument(
            f"--{field.split('_')[0]}-col",
            dest=f"col_{field}",
            metavar="COLUMN",
            help=f"data.columns.{field}: the file's {field} column, a name or a 0-based "
            "position"
            + ("; none uses row order as time" if field == "ts" else "")
            + ("; none: a log without ratings (clicks)" if field == "rating" else "")
            + f" (default: {field})",
        )
    ing.add_argument(
        "--rating-scale",
        nargs="+",
        metavar="SCALE",
        help="data.rating_scale: LOW HIGH (e.g. 1 5), or auto to take it from the log and say "
        "what it found (default: per layout, 1-5 or 0.5-5)",
    )
    ing.add_argument(
        "--timestamp-format",
        metavar="FMT",
        help="data.timestamp_format, strptime (default: epoch or ISO 8601)",
    )
    ing.add_argument(
        "--max-quarantine-share",
        type=float,
        metavar="X",
        help="data.max_quarantine_share: stop above this share of rejected rows (default: 0.05)",
    )
    ing.add_argument("--json", action="store_true", help="print the report's counts as JSON")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        _download(args)
    elif args.data_command == "ingest":
        _ingest(args)
    else:
        _synth(args)
    return 0


def _download(args: argparse.Namespace) -> None:
    # deferred: the downloader (urllib, tqdm) is not for --help
    from recsys_mtl.data.download import BASE_URL, download

    if args.base_url is not None and not args.base_url.startswith(("http://", "https://")):
        raise UserError(f"--base-url {args.base_url!r}: expected an http:// or https:// URL")
    if not args.timeout > 0:
        raise UserError(f"--timeout: must be more than 0 seconds, got {args.timeout:g}")
    path = download(
        args.name,
        args.to,
        base_url=args.base_url or BASE_URL,
        progress=sys.stderr.isatty(),  # a bar of carriage returns is noise in a log file
        timeout=args.timeout,
    )
    print(path.absolute())


# the data options a hint may name, as this command's flags (the longer phrases first)
FLAG_OF = {
    "data.columns.*": "--user-col, --item-col, --rating-col and --ts-col",
    "data.columns.user_id": "--user-col",
    "data.columns.item_id": "--item-col",
    "data.columns.rating": "--rating-col",
    "data.columns.ts": "--ts-col",
    "data.columns": "--user-col, --item-col, --rating-col and --ts-col",
    "data.separator: ": "--separator ",
    "data.separator": "--separator",
    "data.header is false": "--no-header is given",
    "data.header: false": "--no-header",
    "data.header": "--no-header",
    "data.rating_scale: [low, high]": "--rating-scale LOW HIGH",
    "data.rating_scale is auto": "--rating-scale is auto",
    "data.rating_scale": "--rating-scale",
    "data.timestamp_format": "--timestamp-format",
    "data.max_quarantine_share": "--max-quarantine-share",
    "data.format": "--format",
}
# an option's name where it stands as a word (not inside a path such as /srv/data.format/)
_OPTION = re.compile("(?<![\\w/.\\\\-])(" + "|".join(re.escape(k) for k in FLAG_OF) + ")")


def as_flags(message: str) -> str:
    """``message`` with each data option it names as the ``data ingest`` flag that sets it
    (a scale written as the flag takes it: ``--rating-scale LO HI``)."""
    message = re.sub(r"\(\[([^,\]]+), ([^\]]+)\] or auto\)", r"(--rating-scale \1 \2, or auto)",
                     message)  # fmt: skip
    return _OPTION.sub(lambda m: FLAG_OF[m.group(1)], message)


# what ingest writes in its folder (each file atomically, through a hidden temporary file)
INGEST_FILES = ("interactions.parquet", "users.parquet", "items.parquet", "tags.parquet",
                "quarantine.parquet", "report.json")  # fmt: skip


def _remove_half_written(out: Path) -> None:
    """The hidden temporary files of a killed ingest's writes in ``out`` (its own names only:
    ``--out`` may be a folder holding other files)."""
    for name in INGEST_FILES:
        for half in out.glob(f".{name}.*.tmp"):
            if half.is_file():
                half.unlink(missing_ok=True)


def _ingest(args: argparse.Namespace) -> None:
    # deferred: ingest reads the log with polars
    from recsys_mtl.data.ingest import ingest
    from recsys_mtl.locks import folder_lock, this_command

    cfg = _ingest_config(args)
    out = Path(args.out)
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"{path} is a file"
            raise UserError(f"--out {out}: {where}; ingest writes a folder, name another")
    # one command at a time writes the folder; the hidden files of a killed ingest are removed
    # once it is held
    with folder_lock(out, this_command()) as held:
        _remove_half_written(held)
        try:
            report = ingest(cfg, held, max_share=cfg.max_quarantine_share).report
        except UserError as e:  # a hint names the flag that sets a data option
            raise UserError(as_flags(str(e))) from e
    inter = report["interactions"]
    if args.json:
        print(json.dumps(inter))
        return
    merged = inter.get("repeats_merged", 0)
    counts = dict(inter["rows_quarantined"])
    if merged:  # a log without ratings: its repeated pairs are merged, not errors
        counts["duplicate_pair"] -= merged
    dropped = ", ".join(f"{r}: {n:,}" for r, n in counts.items() if n)
    lo, hi = report["rating_scale"]
    scale = f"rating scale {lo:g}-{hi:g}" + (
        " (found in the data)" if report.get("rating_scale_from") == "data" else ""
    )
    if inter.get("ratings") == "none":
        scale = f"no ratings (every row an interaction; {merged:,} repeated pairs merged)"
    print(
        f"{out.absolute()}: {report['dataset']} log, {inter['rows_read']:,} rows read, "
        f"{inter['rows_kept']:,} kept, {inter['rows_read'] - inter['rows_kept'] - merged:,} "
        f"quarantined{f' ({dropped})' if dropped else ''}; {report['rated_users']:,} "
        f"users, {report['rated_items']:,} items; {scale}"
    )


def _synth(args: argparse.Namespace) -> None:
    # deferred: the generator writes its tables with numpy and polars
    from pydantic import ValidationError

    from recsys_mtl.config import SyntheticConfig
    from recsys_mtl.data.synthetic import SYNTH_FILES, write_synthetic

    out = Path(args.out)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {out}: {parent} is a file, not a folder")
    other = (
        sorted(p.name for p in out.iterdir() if p.name not in SYNTH_FILES) if out.is_dir() else []
    )
    if other:
        raise UserError(
            f"--out {out}: holds files data synth did not write ({other[0]}, ...), and it replaces "
            "the folder: name a new or empty one"
        )
    try:
        syn = SyntheticConfig(users=args.users, items=args.items, ratings=args.ratings,
                              layout=args.layout, seed=args.seed)  # fmt: skip
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{'.'.join(map(str, err['loc']))}: {err['msg']}") from e
    print(Path(write_synthetic(syn, args.out)).absolute())


def _scale(flag: list[str] | None) -> list[float] | str | None:
    """``--rating-scale LOW HIGH`` or ``--rating-scale auto``."""
    if flag is None or flag == ["auto"]:
        return flag[0] if flag else None
    try:
        if len(flag) == 2:
            return [float(x) for x in flag]
    except ValueError:
        pass
    raise UserError(f"--rating-scale: expected LOW HIGH or auto, got {' '.join(flag)!r}")


def _column(flag: str | None) -> str | int | None:
    """A column flag: digits are a 0-based position, anything else a name."""
    return int(flag) if flag is not None and flag.isdigit() else flag


def _ingest_config(args: argparse.Namespace) -> Any:
    """The data section of ``--config`` (if given) with the flags of ``data ingest`` applied."""
    # deferred: the config schema (pydantic) is not for --help
    from recsys_mtl.config import load_config

    values: dict[str, Any] = {
        "path": args.path,
        "format": args.format,
        "separator": args.separator,
        "header": args.header,
        "columns.user_id": _column(args.col_user_id),
        "columns.item_id": _column(args.col_item_id),
        "columns.rating": _column(args.col_rating),
        "columns.ts": _column(args.col_ts),
        "rating_scale": _scale(args.rating_scale),
        "timestamp_format": args.timestamp_format,
        "max_quarantine_share": args.max_quarantine_share,
    }
    if args.path is None and args.config is None:
        raise UserError("data ingest: give a PATH, or --config FILE with data.path")
    overrides = [f"data.{k}={json.dumps(v)}" for k, v in values.items() if v is not None]
    base = None if args.config else {"data": {}, "tracking": {"enabled": False}}
    try:
        return load_config(args.config, overrides, base=base).data
    except UserError as e:  # name the flag the user typed, not the key it sets
        msg = str(e)
        for key, flag in _INGEST_FLAGS.items():
            msg = msg.replace(f"--set data.{key}: ", f"{flag}: ")
        raise UserError(msg) from e
