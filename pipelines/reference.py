"""The components reference: the settings of every registered ranker, loss weighting and
meta-learner, generated from the field descriptions of their settings classes.

``python -m pipelines.reference > docs/reference/components.md`` writes it; a test checks that
the file on disk is what this prints. The run config leaves ``model.params``,
``weighting.params`` and ``meta.learners[].params`` free (docs/reference/configuration.md);
their keys are the fields of the settings class of the component the config names:
``config_class`` of a ranker in :data:`recsys_mtl.models.RANKERS`, ``params_class`` of a
weighting in :data:`recsys_mtl.weighting.WEIGHTINGS` and of a meta-learner in
:data:`meta.learners.LEARNERS`, and :class:`meta.learners.EnsembleParams` for ``ensemble``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pydantic import BaseModel

from meta.learners import ENSEMBLE, LEARNERS, Ensemble, EnsembleParams
from recsys_mtl.config.reference import Entry, entries
from recsys_mtl.models import RANKERS
from recsys_mtl.weighting import WEIGHTINGS

__all__ = ["COMMAND", "Catalog", "Component", "catalogs", "main", "render", "rows"]

COMMAND = "python -m pipelines.reference > docs/reference/components.md"

INTRO = """\
The [configuration reference](configuration.md) leaves three mappings free: `model.params`,
`weighting.params` and `meta.learners[].params`. Their keys are the settings of the component
named beside them (`model.name`, `weighting.name`, `meta.learners[].name`), declared by that
component's settings class, and are listed below for every registered name (`recsys-mtl list`
prints the names). A key the component does not have, a wrong type or an out-of-range value
exits 2 with one line naming the dotted key and the component. `--set model.params.dim=32`
overrides one from the command line, and a `tune.space` may search them (`model.params.dim`,
`weighting.params.alpha`).

Columns read as in the configuration reference: values in backticks separated by `|` are the
only ones accepted, `null` is YAML's null, `matching` gives the pattern a string must match,
and bounds follow the type in brackets. Several names may share one settings class; a
description that starts with names (`mmoe:`) applies to those names only, and the key is
accepted and unused by the others."""


@dataclass(frozen=True)
class Component:
    """A registered name, the class it builds and the class of its settings."""

    name: str
    implementation: type
    settings: type[BaseModel]


@dataclass(frozen=True)
class Catalog:
    """One registry: where its settings go in a run config and its registered components."""

    title: str
    key: str  # the run-config key of the settings, e.g. "model.params"
    name_key: str  # the run-config key of the name, e.g. "model.name"
    intro: str
    components: tuple[Component, ...]


def _learner_components() -> tuple[Component, ...]:
    found = [Component(n, LEARNERS.get(n), LEARNERS.get(n).params_class) for n in LEARNERS]
    found.append(Component(ENSEMBLE, Ensemble, EnsembleParams))
    return tuple(sorted(found, key=lambda c: c.name))


def catalogs() -> list[Catalog]:
    """The rankers, the loss weightings and the meta-learners, each sorted by name."""
    return [
        Catalog(
            "Rankers",
            "model.params",
            "model.name",
            "The settings of the ranker named by `model.name`; what each ranker computes is in "
            "[Rankers](../rankers.md).",
            tuple(Component(n, RANKERS.get(n), RANKERS.get(n).config_class) for n in RANKERS),
        ),
        Catalog(
            "Loss weightings",
            "weighting.params",
            "weighting.name",
            "The settings of the method named by `weighting.name` (`weighting.weights` holds "
            "the static task weights); the methods are described in "
            "[Loss weighting](../weighting.md).",
            tuple(
                Component(n, WEIGHTINGS.get(n), WEIGHTINGS.get(n).params_class) for n in WEIGHTINGS
            ),
        ),
        Catalog(
            "Meta-learners",
            "meta.learners[].params",
            "meta.learners[].name",
            "The settings of each cold-start learner of `meta.learners`; the learners are "
            "described in [Cold start](../coldstart.md). `ensemble` is not in the learner "
            "registry: the cold-start pipeline builds it from learners listed before it.",
            _learner_components(),
        ),
    ]


def rows(catalog: Catalog, component: Component) -> list[Entry]:
    """The documented keys of one component, in the order its settings class declares them."""
    return [
        Entry(f"{catalog.key}.{e.key}", e.type, e.default, e.description)
        for e in entries(component.settings)
    ]


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _cell(text: str) -> str:
    """``text`` in a table cell: ``|`` would end the cell, ``<name>`` read as an HTML tag."""
    return " ".join(text.split()).replace("|", "\\|")


def _prose(text: str) -> str:
    return _cell(text).replace("<", "&lt;")


def _component(catalog: Catalog, component: Component) -> list[str]:
    sharing = [
        c.name
        for c in catalog.components
        if c.settings is component.settings and c.name != component.name
    ]
    settings = f"settings `{_qualified(component.settings)}`"
    if sharing:
        settings += f" (shared with {', '.join(f'`{n}`' for n in sharing)})"
    lines = ["", f"### `{component.name}`", ""]
    found = rows(catalog, component)
    if not found:
        return [
            *lines,
            f"Class `{_qualified(component.implementation)}`. It has no settings: leave "
            f"`{catalog.key}` out or empty (`{{}}`).",
        ]
    lines += [
        f"Class `{_qualified(component.implementation)}`, {settings}.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{e.key}` | {_cell(e.type)} | {_cell(e.default)} | {_prose(e.description)} |"
        for e in found
    ]
    return lines


def render() -> str:
    """The Markdown of docs/reference/components.md."""
    lines = [
        "# Components reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the field descriptions of the components' "
        "settings classes; edit those, not this file. -->",
        "",
        INTRO,
    ]
    for catalog in catalogs():
        lines += ["", f"## {catalog.title} (`{catalog.key}`)", "", catalog.intro]
        for component in catalog.components:
            lines += _component(catalog, component)
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the reference to standard output."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
