"""Choosing the method a cold-start run serves (the ``coldstart`` stage calls
:func:`choose_served`): every eligible method measured on the cold validation users, the rule
of :func:`meta.select.select_served`, and what serving the choice needs.

Beside each learner that serves a state, its **shrunk** variants ``NAME_shrunkA`` are candidates:
the adapted user vectors (``user`` and ``*_user`` entries) moved to ``a * adapted + (1 - a) *
new-user state``, ``a`` in :data:`SHRINK`, the biases kept. Adapting the vectors on the support
ratings fits the rating task and loses part of the ranking quality the ranker's own new-user
state has; the shrink trades one for the other, and the rule weighs both. Its **split**
variants ``NAME_splitA`` keep both sides: the ratings from the adapted state, the ranking from
it shrunk by ``a`` in :data:`SPLIT_SHRINK` (served as two states:
:func:`meta.adapt.adapt_users` returns both, and ``score`` ranks by one and rates by the
other). Its **cooc** variants ``NAME_coocA`` rank by the adapted state shrunk by ``a`` in
:data:`COOC_SHRINK` (1: unshrunk) plus the weighted item-item evidence of the user's support
items (:mod:`meta.cooc`; each variant's weight chosen on the cold validation users), their
ratings again the adapted state's; the neighbour table is saved beside ``served.json`` when
one serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meta.cooc import NEIGHBOURS, Cooc, NeighbourTable, choose_weights, item_neighbours
from meta.data import ColdData
from meta.demographic import DemographicState
from meta.evaluate import evaluate_coldstart
from meta.floors import mean_user
from meta.learners.base import Adapted, MetaLearner
from meta.protocol import Padded
from meta.select import DEMOGRAPHIC, eligible, select_served
from meta.state import start_state
from recsys_mtl.errors import UserError

__all__ = [
    "COOC_SHRINK",
    "SHRINK",
    "SPLIT_SHRINK",
    "Shrunk",
    "Split",
    "SplitAdapted",
    "choose_served",
    "serves",
    "shrink_state",
    "variant",
]

K0_MEASURES = ("rating/rmse", "ranking/ndcg@10", "ranking/hr@10")
SHRINK = (0.75, 0.5)
SPLIT_SHRINK = (0.5, 0.25)  # the split variants' ranking states (their ratings are unshrunk)
SUFFIX = "_shrunk"  # NAME_shrunk0.75 (MLflow metric names allow no "@")
SPLIT = "_split"  # NAME_split0.75: ratings from NAME, ranking from NAME_shrunk0.75
COOC_SHRINK = (1.0, 0.5, 0.25)  # the cooc variants' ranking states (before the evidence)
COOC = "_cooc"  # NAME_cooc0.5: NAME_split0.5's ranking plus the item-item evidence


def shrink_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    support: Padded,
    user_cats: torch.Tensor | None,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """``state`` with its user vectors (``user``, ``*_user``) moved toward the new-user state:
    ``alpha * state + (1 - alpha) * new``; every other entry as it is."""
    with torch.no_grad():
        new = start_state(model, support, user_cats)
    names = [n for n in getattr(model, "adaptable_state", ()) if n == "user" or n.endswith("_user")]
    out = dict(state)
    for n in names:
        if n in state and n in new:
            out[n] = alpha * state[n] + (1 - alpha) * new[n].to(state[n].dtype)
    return out


class Shrunk:
    """A learner whose adapted user vectors are shrunk toward the new-user state
    (:func:`shrink_state`); the learner's interface as the evaluation reads it."""

    inner_loop = False

    def __init__(self, learner: MetaLearner, alpha: float) -> None:
        self.learner, self.alpha = learner, alpha

    def adapt(self, support: Padded, user_cats: torch.Tensor, sup_rows: dict) -> Adapted:
        a = self.learner.adapt(support, user_cats, sup_rows)
        mixed = shrink_state(self.learner.base, a.state, support, user_cats, self.alpha)
        return Adapted(mixed, a.params)

    def score_items(self, adapted: Adapted, *grid: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.learner.score_items(adapted, *grid)

    def rank_scores(self, adapted: Adapted, *grid: Any) -> torch.Tensor:
        return self.learner.rank_scores(adapted, *grid)


@dataclass
class SplitAdapted(Adapted):
    """Adapted users with a second state for ranking (``rank_state``)."""

    rank_state: dict[str, torch.Tensor] = field(default_factory=dict)


class Split(Shrunk):
    """A learner whose ratings come from its adapted state and whose ranking comes from that
    state shrunk toward the new-user state (:class:`Shrunk`)."""

    def adapt(self, support: Padded, user_cats: torch.Tensor, sup_rows: dict) -> Adapted:
        return self.split(self.learner.adapt(support, user_cats, sup_rows), support, user_cats)

    def split(self, a: Adapted, support: Padded, user_cats: torch.Tensor) -> SplitAdapted:
        """The learner's adaptation ``a`` of users with ``support`` with its ranking state
        (variants of one learner share its adaptation)."""
        mixed = shrink_state(self.learner.base, a.state, support, user_cats, self.alpha)
        return SplitAdapted(a.state, a.params, mixed)

    def score_items(self, adapted: Adapted, *grid: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.learner.score_items(Adapted(adapted.state, adapted.params), *grid)

    def rank_scores(self, adapted: Adapted, *grid: Any) -> torch.Tensor:
        ranking = Adapted(getattr(adapted, "rank_state", adapted.state), adapted.params)
        return self.learner.rank_scores(ranking, *grid)


def _split_scores(learner: MetaLearner, rank_task: str) -> Any:
    """:func:`meta.cooc.choose_weights`'s rankings of ``learner``'s split variants of
    :data:`COOC_SHRINK`, from one adaptation of the users."""

    def scores_of(blocks: Any, grid: tuple[torch.Tensor, ...]) -> dict[float, torch.Tensor]:
        t = blocks.tasks
        a = learner.adapt(t.support, t.user_cats, blocks.support)
        out = {}
        for alpha in COOC_SHRINK:
            split = Split(learner, alpha)
            out[alpha] = split.rank_scores(split.split(a, t.support, t.user_cats), *grid,
                                           rank_task)  # fmt: skip
        return out

    return scores_of


def variant(learner: MetaLearner, record: dict[str, Any], folder: Path | None = None) -> Any:
    """The learner a served record names: ``learner`` itself, or its shrunk or split variant
    (``record["shrink"]``, ``record["split"]``), or its cooc variant (``record["cooc"]``: the
    neighbour table read from ``folder``, the folder of ``served.json``)."""
    if record.get("shrink") is None:
        return learner
    method = (Split if record.get("split") else Shrunk)(learner, float(record["shrink"]))
    cooc = record.get("cooc")
    if cooc is None:
        return method
    if folder is None:
        raise UserError(f"served method {record['name']!r} reads a neighbour table: no folder")
    return Cooc(method, NeighbourTable.load(Path(folder) / cooc["file"]), float(cooc["weight"]))


def serves(label: str, learner: MetaLearner, data: ColdData) -> bool:
    """Whether a learner's adaptation is a user state for the run's ranker (what
    ``adapt_users`` serves): a learner on the ranker base, tried on one cold validation user."""
    spec = next((s for s in data.cfg.learners if (s.label or s.name) == label), None)
    if spec is not None and spec.base != "ranker":
        return False
    blocks = data.held_out_blocks("cold_valid", data.eval_ks[0], data.cfg.seed + 1)
    if not len(blocks.tasks):
        return False
    one = blocks.tasks.take(torch.arange(1))
    try:
        with torch.no_grad():
            learner.adapt_state(one.support, one.user_cats)
    except (UserError, NotImplementedError, AttributeError):
        return False
    return True


def choose_served(
    model: nn.Module,
    data: ColdData,
    learners: dict[str, MetaLearner],
    tasks: list[str],
    rank_task: str,
    demographic: DemographicState | None,
    fold_in_choice: tuple[int, float],
    folder: Path | None = None,
) -> dict[str, Any]:
    """The served method's record (``served.json``): chosen on the cold validation users only,
    with the K = 0 method (``demographic_ridge`` where the log has demographics, else the
    population state) and what serving it needs (``learner_dir``, ``shrink``, the fold-in's
    settings, ``rank_task``: the task the users' full-catalog lists were ranked by, ``cooc``).
    ``folder``: where ``served.json`` goes; the neighbour table is saved there when a cooc
    variant is served."""
    serving: dict[str, Any] = {n: lrn for n, lrn in learners.items() if serves(n, lrn, data)}
    variants = {f"{n}{suffix}{a:g}": (n, a) for n in serving
                for suffix, alphas in ((SUFFIX, SHRINK), (SPLIT, SPLIT_SHRINK))
                for a in alphas}  # fmt: skip
    table = (
        item_neighbours(data.role_ratings("train"), data.n_items, like=data.like_threshold)
        if serving
        else None
    )
    cooc: dict[str, tuple[str, float]] = {}
    weights: dict[str, tuple[float, dict[str, float]]] = {}
    for n in serving if table is not None else ():
        # each variant's own weight (0: not a candidate), the learner adapted once per K
        chosen = choose_weights(data, table, _split_scores(serving[n], rank_task))
        for a in COOC_SHRINK:
            weights[f"{n}{COOC}{a:g}"] = chosen.get(a, (0.0, {}))
            if weights[f"{n}{COOC}{a:g}"][0]:
                cooc[f"{n}{COOC}{a:g}"] = (n, a)
    serving.update({v: (Split if SPLIT in v else Shrunk)(serving[n], a)
                    for v, (n, a) in variants.items()})  # fmt: skip
    serving.update({v: Cooc(Split(serving[n], a), table, weights[v][0])
                    for v, (n, a) in cooc.items()})  # fmt: skip
    variants.update(cooc)
    rows = evaluate_coldstart(model, data, serving, tasks, rank_task, fold_in_choice,
                              time_loop=False, role="cold_valid",
                              demographic=demographic)  # fmt: skip
    kinds = {r["labels"]["learner"]: r["labels"]["kind"] for r in rows}
    names = [n for n, kind in kinds.items() if eligible(n, kind, n in serving or n == DEMOGRAPHIC)]
    record = select_served(rows, names)
    name = record["name"]
    record["kind"] = kinds[name]
    record["k0"] = DEMOGRAPHIC if demographic is not None else "population"
    if name == "fold_in":
        prior = mean_user(model, torch.from_numpy(data.users("train")))
        record["fold_in"] = {"steps": fold_in_choice[0], "lr": fold_in_choice[1],
                             "prior": {n: v.tolist() for n, v in prior.items()}}  # fmt: skip
    base, alpha = variants.get(name, (name, None))
    if base in learners:
        record["learner"] = base
        record["learner_dir"] = f"meta_train/{base}"
        if alpha is not None:
            record["shrink"] = alpha
            if SPLIT in name or name in cooc:
                record["split"] = True
        if name in cooc and table is not None:
            if folder is not None:
                table.save(Path(folder) / NEIGHBOURS)
            record["cooc"] = {"weight": weights[name][0], "file": NEIGHBOURS,
                              "top": int(table.items.shape[1]),
                              "cold_valid_ndcg@10": weights[name][1]}  # fmt: skip
    record["shrinkage"] = data.cfg.shrinkage
    record["rank_task"] = rank_task  # what ranked the users' lists: what serving ranks them by
    record["cold_valid_k0"] = {r["labels"]["learner"]: {m: r["metrics"].get(m) for m in K0_MEASURES}
                               for r in rows if r["labels"]["k"] == 0}  # fmt: skip
    return record
