"""The configuration reference, generated from the schema's field descriptions.

``python -m recsys_mtl.config.reference > docs/reference/configuration.md`` writes it; a test
checks that the file on disk is what this prints. Every key is named by its dotted path: ``a.b``
is key ``b`` of section ``a``, ``a[].b`` key ``b`` of each entry of the list ``a``, and
``a.<key>.b`` key ``b`` of each value of the mapping ``a`` (whose own keys are free).
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from recsys_mtl.config.run import RunConfig

__all__ = ["COMMAND", "Entry", "Section", "entries", "main", "render", "sections"]

COMMAND = "python -m recsys_mtl.config.reference > docs/reference/configuration.md"

INTRO = """\
A run is described by one YAML file of the sections below (`configs/*.yaml` are examples);
it is loaded into frozen, validated models (`recsys_mtl.config`). An unknown key, a wrong type
or an out-of-range value exits 2 with one line naming the file, the line and the dotted key.
`--set KEY=VALUE` overrides any key from the command line; values are YAML
(`--set tasks=[rating]`, `--set train.patience=null`).

Keys are named by their dotted path: `a.b` is key `b` of section `a`, `a[].b` key `b` of each
entry of the list `a`, and `a.<key>.b` key `b` of each value of the mapping `a`, whose own keys
are free. The type column gives the allowed values: values in backticks separated by `|` are
the only ones accepted, `null` is YAML's null (`null` or `~`), `section` is a mapping of the
keys that follow, and bounds follow the type in brackets."""


@dataclass(frozen=True)
class Entry:
    """One documented key."""

    key: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    """A heading of the reference: a top-level section (or the top level) and its keys."""

    title: str
    intro: str
    entries: tuple[Entry, ...]


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """``(suffix, model)`` when ``annotation`` holds a section: the model itself (suffix ``""``),
    optional (``""``), a list of them (``"[]"``) or a mapping to them (``".<key>"``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        found = [n for n in map(_nested, args) if n is not None]
        return found[0] if len(found) == 1 else None
    if origin is list and args:
        inner = _nested(args[0])
        return ("[]", inner[1]) if inner is not None and inner[0] == "" else None
    if origin is dict and len(args) == 2:
        inner = _nested(args[1])
        return (".<key>", inner[1]) if inner is not None and inner[0] == "" else None
    return None


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _constraints(metadata: list[Any]) -> list[str]:
    """The constraints of a field or an annotated type, e.g. ``[">= 1", "<= 100"]``."""
    parts: list[str] = []
    length: dict[str, int] = {}
    for m in metadata:
        if isinstance(m, FieldInfo):
            parts += _constraints(m.metadata)
            continue
        for attr, sign in _BOUNDS:
            if getattr(m, attr, None) is not None:
                parts.append(f"{sign} {json.dumps(getattr(m, attr))}")
        for attr in ("min_length", "max_length"):
            if getattr(m, attr, None) is not None:
                length[attr] = getattr(m, attr)
        if getattr(m, "pattern", None) is not None:
            parts.append(f"matching {_literal(m.pattern)}")
    low, high = length.get("min_length"), length.get("max_length")
    if low is not None and low == high:
        parts.append(f"length {low}")
    else:
        parts += [] if low is None else [f"length >= {low}"]
        parts += [] if high is None else [f"length <= {high}"]
    return parts


def _literal(text: str) -> str:
    """``text`` shown as written, outside a code span: a ``|`` in a code span inside a table
    cell renders differently on GitHub and in MkDocs, an escaped one outside it the same."""
    return "".join(f"\\{c}" if c in "\\`*_[]" else c for c in text)


def _with_bounds(kind: str, metadata: list[Any]) -> str:
    parts = _constraints(metadata)
    return f"{kind} ({', '.join(parts)})" if parts else kind


def _type(annotation: Any) -> str:
    """A readable type expression: ``int``, ``float | null``, ``list[str]``, `` `a` | `b` ``."""
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{v}`" for v in args)
    if origin is Annotated:
        return _with_bounds(_type(args[0]), list(args[1:]))
    if origin in (Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is list:
        return f"list[{_type(args[0])}]"
    if origin is tuple:
        return f"[{', '.join(_type(a) for a in args)}]"
    if origin is dict:
        return f"mapping[{_type(args[0])} -> {_type(args[1])}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "–"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def _doc(model: type[BaseModel]) -> str:
    """The model's docstring as one paragraph (empty when it has none of its own)."""
    doc = model.__dict__.get("__doc__") or ""
    return _text(" ".join(inspect.cleandoc(doc).split()).replace("``", "`"))


def _text(text: str) -> str:
    """``text`` safe in Markdown prose: ``<name>`` would be read as an HTML tag."""
    return text.replace("<", "&lt;")


def _walk(model: type[BaseModel], prefix: str) -> Iterator[Entry]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield Entry(
            key=key,
            type=_with_bounds(_type(field.annotation), field.metadata),
            default=_default(field),
            description=" ".join((field.description or "").split()),
        )
        nested = _nested(field.annotation)
        if nested is not None:
            suffix, sub = nested
            yield from _walk(sub, f"{key}{suffix}.")


def sections(root: type[BaseModel] = RunConfig) -> list[Section]:
    """The top level, then one section per top-level key that holds a section, in schema order."""
    out = [
        Section(
            "Top level",
            _doc(root),
            tuple(e for e in _walk(root, "") if "." not in e.key and "[" not in e.key),
        )
    ]
    for name, field in root.model_fields.items():
        nested = _nested(field.annotation)
        if nested is not None:
            suffix, sub = nested
            out.append(Section(f"`{name}`", _doc(sub), tuple(_walk(sub, f"{name}{suffix}."))))
    return out


def entries(root: type[BaseModel] = RunConfig) -> list[Entry]:
    """Every key of the schema, depth first in schema order."""
    return list(_walk(root, ""))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(root: type[BaseModel] = RunConfig) -> str:
    """The Markdown of docs/reference/configuration.md."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the field descriptions in recsys_mtl/config/;"
        " edit those, not this file. -->",
        "",
        INTRO,
    ]
    for section in sections(root):
        lines += ["", f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [
            f"| `{e.key}` | {_cell(e.type)} | {_cell(e.default)} | {_cell(_text(e.description))} |"
            for e in section.entries
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the reference to standard output."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
