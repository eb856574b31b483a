"""Reading a run config: YAML, ``--set key=value`` overrides, and one-line error messages.

An unknown key, a wrong type or an out-of-range value is a :class:`~recsys_mtl.errors.UserError`
whose one-line message names the file, the line and the dotted key.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from recsys_mtl.config.run import RunConfig
from recsys_mtl.errors import UserError

__all__ = ["load_config", "parse_overrides"]


def _line_index(node: yaml.Node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each dotted key path of a composed YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            lines[path] = key_node.start_mark.line + 1
            lines.update(_line_index(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, str(i))
            lines[path] = item.start_mark.line + 1
            lines.update(_line_index(item, path))
    return lines


def parse_overrides(items: list[str]) -> dict[tuple[str, ...], Any]:
    """Parse ``key=value`` strings; values are YAML scalars or flow collections."""
    out: dict[tuple[str, ...], Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"--set {key}: value {raw!r} is not valid YAML ({e.problem})") from e
        out[tuple(key.split("."))] = value
    return out


def _apply_override(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Load a YAML config file (or ``base`` when ``path`` is None) and apply ``--set`` overrides.

    Relative data paths in the file are resolved against the current directory, as a user
    typing a command expects.
    """
    lines: dict[tuple[str, ...], int] = {}
    source = str(path) if path is not None else "<config>"
    empty = False
    if path is not None:
        text = _read_text(Path(path), source)
        try:
            node = yaml.compose(text)
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
        empty = doc is None
        doc = {} if doc is None else doc
        if not isinstance(doc, dict):
            raise UserError(
                f"{source}: the top level must be a mapping of sections (data:, model:, ...), "
                f"not a {_yaml_kind(doc)}"
            )
        if node is not None:
            lines = _line_index(node)
    else:
        doc = copy.deepcopy(base or {})
    override_map = parse_overrides(overrides or [])
    for key, value in override_map.items():
        _apply_override(doc, key, value)
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as e:
        if empty:  # --set alone may make a valid config; otherwise say what is wrong first
            raise UserError(
                f"{source}: the config file is empty; a run config is a mapping of sections "
                "(data:, model:, train:, ...)"
            ) from e
        raise UserError(_describe(e, source, lines, set(override_map))) from e


def _read_text(p: Path, source: str) -> str:
    """The text of a config file, or a one-line error naming it and what it is instead."""
    if p.is_dir():
        raise UserError(f"{source}: is a folder, not a config file")
    if not p.is_file():
        raise UserError(f"{source}: config file not found")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{source}: cannot be read ({e.strerror or e})") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{source}: not a text file (byte 0x{data[e.start]:02x} at offset {e.start} is not "
            "UTF-8); a config is a YAML text file"
        ) from e
    if "\x00" in text:
        raise UserError(f"{source}: not a text file (it holds NUL bytes); a config is YAML text")
    return text.removeprefix("\ufeff")


def _yaml_kind(doc: object) -> str:
    if isinstance(doc, list):
        return "list"
    return "string" if isinstance(doc, str) else f"single value ({doc!r})"


def _describe(
    err: ValidationError,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: set[tuple[str, ...]],
) -> str:
    """Every validation error of ``err``, one clause each, joined on one line."""
    return "; ".join(_describe_one(e, source, lines, overridden) for e in err.errors())


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """The field names of the config section at ``loc`` (empty when it is not a section)."""
    model: Any = RunConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(loc: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(loc[-1], _fields_at(loc[:-1]), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {'.'.join((*loc[:-1], close[0]))!r}?)"
    # a section's key written one level too high, e.g. ``seed:`` at the top
    owners = [
        f"{s}.{loc[-1]}" for s in _fields_at(loc[:-1]) if loc[-1] in _fields_at((*loc[:-1], s))
    ]
    return f" (did you mean {' or '.join(map(repr, owners))}?)" if owners else ""


def _describe_one(
    first: Any,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: set[tuple[str, ...]],
) -> str:
    loc = tuple(str(x) for x in first["loc"] if not str(x).startswith("function-after"))
    key = ".".join(loc) if loc else "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key" + (_did_you_mean(loc) if loc else "")
    elif first["type"] == "missing":
        msg = "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
        msg = f"{msg} (got {got!r})"
    for n in range(len(loc), 0, -1):
        if loc[:n] in overridden:
            return f"--set {'.'.join(loc[:n])}: {key}: {msg}"
    line = None
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {key}: {msg}"
