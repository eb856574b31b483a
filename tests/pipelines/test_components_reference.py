"""docs/reference/components.md is generated from the components' settings classes and documents
every key of ``model.params``, ``weighting.params`` and ``meta.learners[].params``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from meta.learners import ENSEMBLE, LEARNERS, EnsembleParams, learner_names
from pipelines.reference import COMMAND, catalogs, render
from recsys_mtl.models import RANKERS
from recsys_mtl.weighting import WEIGHTINGS
from tests.conftest import REPO

REFERENCE = REPO / "docs" / "reference" / "components.md"
HEADING = re.compile(r"^### `(?P<name>[^`]+)`$")
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \|(?P<rest>.*)\|$")
CELL = re.compile(r"(?<!\\)\|")  # a cell boundary: a pipe not escaped as \|
PREFIXES = ("model.params.", "weighting.params.", "meta.learners[].params.")


def _documented() -> dict[tuple[str, str], dict[str, dict[str, str]]]:
    """``{(settings key, component name): {field: {"type", "default", "description"}}}`` from
    the tables of the file on disk, e.g. ``("model.params", "bellkor")``."""
    out: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    name = None
    for line in REFERENCE.read_text().splitlines():
        heading = HEADING.match(line)
        if heading:
            name = heading["name"]
            continue
        row = ROW.match(line)
        if row is None:
            continue
        assert name is not None, f"{REFERENCE}: a row before any component heading: {line}"
        prefix = next((p for p in PREFIXES if row["key"].startswith(p)), None)
        assert prefix is not None, f"{REFERENCE}: a key outside {PREFIXES}: {line}"
        cells = [c.strip() for c in CELL.split(row["rest"])]
        assert len(cells) == 3, f"{REFERENCE}: a row needs 4 cells: {line}"
        fields = out.setdefault((prefix[:-1], name), {})
        fields[row["key"][len(prefix) :]] = dict(
            zip(("type", "default", "description"), cells, strict=True)
        )
    return out


def _registered() -> dict[tuple[str, str], type[BaseModel]]:
    """Every registered component's settings class, read from the registries themselves."""
    out: dict[tuple[str, str], type[BaseModel]] = {}
    out.update({("model.params", n): RANKERS.get(n).config_class for n in RANKERS.names()})
    out.update({("weighting.params", n): WEIGHTINGS.get(n).params_class for n in WEIGHTINGS})
    out.update({("meta.learners[].params", n): LEARNERS.get(n).params_class for n in LEARNERS})
    out[("meta.learners[].params", ENSEMBLE)] = EnsembleParams
    return out


def test_the_reference_on_disk_is_what_the_generator_prints():
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: run `{COMMAND}`"
    assert REFERENCE.read_text() == render(), f"{REFERENCE} is out of date: run `{COMMAND}`"


def test_the_reference_is_deterministic_and_sorted():
    assert render() == render()
    for catalog in catalogs():
        names = [c.name for c in catalog.components]
        assert names == sorted(names), catalog.title


def test_every_field_of_every_settings_class_has_a_description_and_a_row():
    documented = _documented()
    registered = _registered()
    learners = {n for k, n in registered if k == "meta.learners[].params"}
    assert learners == set(learner_names())
    assert len(registered) >= 30 and ("model.params", "bellkor") in registered
    blank = [
        f"{settings.__name__}.{name}"
        for settings in set(registered.values())
        for name, field in settings.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not blank, f"fields without a description (give their Field a description=): {blank}"
    missing = [
        f"{key}.{field} ({name})"
        for (key, name), settings in registered.items()
        for field in settings.model_fields
        if field not in documented.get((key, name), {})
    ]
    assert not missing, f"settings missing from {REFERENCE} (run `{COMMAND}`): {missing}"
    empty = [
        f"{key}.{field} ({name})"
        for (key, name), fields in documented.items()
        for field, row in fields.items()
        if not (row["type"] and row["default"] and row["description"])
    ]
    assert not empty, f"rows without a type, default or description: {empty}"
    extra = [
        f"{key}.{field} ({name})"
        for (key, name), fields in documented.items()
        for field in fields
        if (key, name) not in registered or field not in registered[(key, name)].model_fields
    ]
    assert not extra, f"{REFERENCE} documents settings no component has: {extra}"
    headings = {m["name"] for m in map(HEADING.match, REFERENCE.read_text().splitlines()) if m}
    assert {n for _, n in registered} <= headings, "a registered name has no subsection"


def _space_names(doc: dict[str, Any], name_key: str, when: dict[str, Any]) -> list[str]:
    """The names a ``tune.space`` entry may run with: its ``when`` condition, the choices the
    space gives the name key, or the name the config sets."""
    if name_key in when:
        value = when[name_key]
        return list(value) if isinstance(value, list) else [value]
    space = (doc.get("tune") or {}).get("space") or {}
    if name_key in space and "choices" in space[name_key]:
        return list(space[name_key]["choices"])
    section, key = name_key.split(".")
    return [(doc.get(section) or {}).get(key)]


def _used(doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(settings key, component name, field)`` for every component setting a config uses:
    under ``model.params``, ``weighting.params``, each ``meta.learners[].params`` and as a
    ``tune.space`` key."""
    for section, key in (("model", "model.params"), ("weighting", "weighting.params")):
        part = doc.get(section) or {}
        for field in part.get("params") or {}:
            yield key, part["name"], field
    for learner in (doc.get("meta") or {}).get("learners") or []:
        for field in learner.get("params") or {}:
            yield "meta.learners[].params", learner["name"], field
    for dotted, spec in ((doc.get("tune") or {}).get("space") or {}).items():
        for key, name_key in (
            ("model.params", "model.name"),
            ("weighting.params", "weighting.name"),
        ):
            if dotted.startswith(f"{key}."):
                for name in _space_names(doc, name_key, (spec or {}).get("when") or {}):
                    yield key, name, dotted[len(key) + 1 :].split(".")[0]


def test_the_shipped_configs_use_component_settings():
    """The check below is not vacuous: the configs set ranker and meta-learner settings."""
    used = [u for p in sorted((REPO / "configs").glob("*.yaml")) for u in _used(_load(p))]
    assert {"model.params", "meta.learners[].params"} <= {key for key, _, _ in used}


def _load(path: Any) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_component_setting_a_shipped_config_uses_is_documented(path):
    documented = _documented()
    missing = sorted(
        {
            f"{key}.{field} ({name})"
            for key, name, field in _used(_load(path))
            if field not in documented.get((key, name), {})
        }
    )
    assert not missing, (
        f"{path.name} uses settings missing from {REFERENCE} for the component it names: {missing}"
    )
