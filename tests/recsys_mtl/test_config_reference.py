"""docs/reference/configuration.md is generated from the schema and documents every key."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from recsys_mtl.config import RunConfig
from recsys_mtl.config.reference import COMMAND, render
from tests.conftest import REPO

REFERENCE = REPO / "docs" / "reference" / "configuration.md"
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \|(?P<rest>.*)\|$")
CELL = re.compile(r"(?<!\\)\|")  # a cell boundary: a pipe not escaped as \|


def _documented() -> dict[str, dict[str, str]]:
    """``{key: {"type", "default", "description"}}`` from the tables of the file on disk."""
    rows: dict[str, dict[str, str]] = {}
    for line in REFERENCE.read_text().splitlines():
        m = ROW.match(line)
        if m:
            cells = [c.strip() for c in CELL.split(m["rest"])]
            assert len(cells) == 3, f"{REFERENCE}: a row needs 4 cells: {line}"
            rows[m["key"]] = dict(zip(("type", "default", "description"), cells, strict=True))
    return rows


def _section(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """The model an annotation holds and how its keys are named below the field: directly or
    optional (``.``), each entry of a list (``[].``), each value of a mapping (``.<key>.``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ".", annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [s for s in map(_section, args) if s is not None]
        return inner[0] if inner else None
    if origin is list and _section(args[0]):
        return "[].", _section(args[0])[1]  # type: ignore[index]
    if origin is dict and _section(args[1]):
        return ".<key>.", _section(args[1])[1]  # type: ignore[index]
    return None


def _schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key of the schema, nested sections (also inside lists and mappings) included."""
    for name, field in model.model_fields.items():
        yield prefix + name
        nested = _section(field.annotation)
        if nested is not None:
            yield from _schema_keys(nested[1], prefix + name + nested[0])


def test_the_reference_on_disk_is_what_the_generator_prints():
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: run `{COMMAND}`"
    assert REFERENCE.read_text() == render(), f"{REFERENCE} is out of date: run `{COMMAND}`"


def test_the_reference_is_deterministic():
    assert render() == render()


def test_every_schema_key_is_documented_with_a_description():
    documented = _documented()
    keys = list(_schema_keys(RunConfig))
    assert len(keys) > 100 and "tune.space.<key>.when" in keys and "meta.learners[].name" in keys
    missing = [k for k in keys if k not in documented]
    assert not missing, f"keys missing from {REFERENCE} (run `{COMMAND}`): {missing}"
    blank = [k for k in keys if not documented[k]["description"]]
    assert not blank, f"keys without a description (give their Field a description=): {blank}"
    untyped = [k for k in keys if not documented[k]["type"] or not documented[k]["default"]]
    assert not untyped, f"keys without a type or default in the reference: {untyped}"
    extra = sorted(set(documented) - set(keys))
    assert not extra, f"{REFERENCE} documents keys the schema does not have: {extra}"


def test_every_field_of_every_section_has_a_description_in_the_schema():
    def models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
        yield model
        for field in model.model_fields.values():
            nested = _section(field.annotation)
            if nested is not None:
                yield from models(nested[1])

    blank = [
        f"{m.__name__}.{name}"
        for m in models(RunConfig)
        for name, field in m.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not blank, blank


def _free_mappings(documented: dict[str, dict[str, str]]) -> set[str]:
    """Mapping keys whose own keys are free and not documented one by one (``model.params``)."""
    return {
        k
        for k, row in documented.items()
        if row["type"].startswith("mapping[")
        and not any(d.startswith(f"{k}.<key>.") for d in documented)
    }


def _used_keys(node: Any, key: str, documented: dict, free: set[str]) -> Iterator[str]:
    """The documented names of the keys a YAML document uses below ``key``: a key of a mapping
    whose values are sections (``tune.space``) is ``<key>``, an entry of a list ``[]``."""
    if key in free:
        return
    if isinstance(node, dict):
        base = f"{key}." if key else ""
        each_value = any(d.startswith(f"{base}<key>.") for d in documented)
        for k, value in node.items():
            if each_value:
                yield from _used_keys(value, f"{base}<key>", documented, free)
            else:
                yield f"{base}{k}"
                yield from _used_keys(value, f"{base}{k}", documented, free)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict):
                yield from _used_keys(item, f"{key}[]", documented, free)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_key_a_shipped_config_uses_is_documented(path):
    documented = _documented()
    doc = yaml.safe_load(path.read_text())
    used = list(_used_keys(doc, "", documented, _free_mappings(documented)))
    assert used, f"{path.name} uses no key"
    missing = sorted({k for k in used if k not in documented})
    assert not missing, f"{path.name} uses keys missing from {REFERENCE}: {missing}"
