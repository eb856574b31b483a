"""The model that lives through a stream: a ranker, its id books, history and optimizer state.

:class:`ContinualRanker` owns everything an update needs: the configured ranker, the
:class:`~recsys_mtl.continual.book.StreamBook` (ids in order of first appearance, rated pairs,
rating days, side features), the loss weighting (still active during updates: multi-task
updates) and the optimizers, whose state (moments, step counts) survives updates and table
growth. Strategies call :meth:`absorb` (new ids grow the tables in place, the history takes
the rows), then :meth:`train` (the trainer's ``fit`` on tensors built for the rows given only,
with an optional penalty term), or :meth:`restart` (a fresh model, for retraining from
scratch).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_mtl.build import build_model, build_weighting, validate_run
from recsys_mtl.config import RunConfig
from recsys_mtl.continual.book import SideInfo, StreamBook
from recsys_mtl.continual.cost import UpdateCost, measure
from recsys_mtl.continual.ids import IdBook
from recsys_mtl.errors import UserError
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.embeddings import EmbeddingTables, resolve_device
from recsys_mtl.models.grow import grow_ranker
from recsys_mtl.train.data import size
from recsys_mtl.train.optim import Adam, LazyAdam
from recsys_mtl.train.trainer import (
    NonFiniteLossError,
    Penalty,
    TrainResult,
    build_optimizers,
    fit,
)

__all__ = ["ContinualRanker", "SideInfo"]

_PREDICT_ROWS = 1 << 16


class ContinualRanker:
    """A ranker kept fresh over a stream (see the module docstring)."""

    def __init__(self, cfg: RunConfig, book: StreamBook, seed: int = 0) -> None:
        self.cls, _ = validate_run(cfg)
        if getattr(self.cls, "order_fields", ()):
            raise UserError(
                f"model.name: {cfg.model.name!r} trains on each user's ratings in order; "
                "continual training serves rankers trained on rating rows (not sequence "
                "rankers yet)"
            )
        self.cfg = cfg
        self.book = book
        self.seed = seed
        self.device = resolve_device(cfg.train.device)
        self.model: Any = None
        self.weighting: Any = None
        self.optimizers: list[Any] | None = None
        # per-row states a strategy keeps beside the tables (EWC's Fisher and anchor): objects
        # with ``params`` and ``state`` lists, grown with the tables like the optimizers
        self.row_states: dict[str, Any] = {}
        self.periods_trained = 0
        self.fresh = True  # a model not trained yet (its first fit follows the recipe as is)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        cfg: RunConfig,
        rows: pl.DataFrame,
        side: SideInfo | None = None,
        seed: int = 0,
        t0: int | None = None,
    ) -> tuple[ContinualRanker, UpdateCost]:
        """The base model: ids of ``rows`` in order of appearance, a fresh ranker trained on
        them with the run's recipe (``train.epochs``, its warm start). ``t0``: day 0 of the
        stream (default: the first rating of ``rows``); the time bins span ``t0`` to the last
        rating of ``rows``."""
        if rows.height == 0:
            raise UserError("stream.base: the base periods hold no ratings")
        lo, hi = int(rows["ts"].min()), int(rows["ts"].max())
        if side is None:
            side = SideInfo.none((float(rows["rating"].min()), float(rows["rating"].max())))
        book = StreamBook(cfg.features, side, lo if t0 is None else t0, hi)
        book.rating_mean = float(rows["rating"].mean())
        learner = cls(cfg, book, seed)
        with measure() as cost:
            learner.absorb(rows)
            learner.restart()
            learner.train(rows, cost=cost, warm_start=True)
        return learner, cost

    @classmethod
    def from_run(cls, run: Any, cfg: RunConfig | None = None) -> ContinualRanker:
        """A finished run (a :class:`~recsys_mtl.runs.load.LoadedRun`: ``model``, ``ctx``,
        ``user_ids``, ``item_ids``, ``seen``, ``run_dir``) as a learner: its ids in index
        order, its rated pairs, (user, day) pairs and time bins; ``cfg`` defaults to the run's
        resolved config."""
        if cfg is None:
            cfg = RunConfig.model_validate(json.loads(RunLayout(run.run_dir).config.read_text()))
        ctx = run.ctx
        spec = json.loads((RunLayout(run.run_dir).features / RunLayout.SPEC).read_text())
        t_min, t_max = spec["time_range"]
        book = StreamBook(cfg.features, SideInfo.from_context(ctx, run.user_ids, run.item_ids),
                          t_min, t_max)  # fmt: skip
        book.users, book.items = IdBook(run.user_ids), IdBook(run.item_ids)
        # the history is what the model trained on (its SVD++ sets are built from it); the
        # run's other ratings (validation, test) are held: never a negative, never history
        book.pairs = _csr_pairs(ctx.implicit_offsets, ctx.implicit_values)
        book.held = _csr_pairs(*run.seen)
        book.held_keys = np.setdiff1d(book.held_keys, book.pair_keys, assume_unique=True)
        keys = ctx.user_days.numpy()
        book.user_days = np.stack([keys // ctx.day_span, keys % ctx.day_span], 1)
        counts = (ctx.implicit_offsets[1:] - ctx.implicit_offsets[:-1]).numpy().astype(float)
        book.day_count, book.day_sum = counts, ctx.user_mean_day.numpy() * counts
        book.rating_mean = ctx.rating_mean
        learner = cls(cfg, book)
        learner.model = run.model.to(learner.device).train()
        learner.weighting = build_weighting(cfg)
        learner.fresh = False
        return learner

    def copy(self) -> ContinualRanker:
        """An independent copy (model, optimizer state, weighting, history)."""
        twin = copy.copy(self)
        twin.model, twin.optimizers, twin.weighting, twin.book, twin.row_states = copy.deepcopy(
            (self.model, self.optimizers, self.weighting, self.book, self.row_states)
        )
        return twin

    # -- ids and growth ----------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks)

    @property
    def users(self) -> IdBook:
        return self.book.users

    @property
    def items(self) -> IdBook:
        return self.book.items

    def known(self, rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Whether each row's user and item have a table row (were trained on)."""
        return self.users.rows(rows["user_id"]) >= 0, self.items.rows(rows["item_id"]) >= 0

    def absorb(self, rows: pl.DataFrame) -> tuple[int, int]:
        """Add ``rows`` (training rows) to the history: new ids get rows (tables grown in
        place, optimizer state of old rows kept), rated pairs and days grow. Returns the
        counts of new users and new items."""
        new = self.book.add_ids(rows)
        self.book.observe(rows)
        self.grow()
        return new

    def grow(self) -> None:
        """Bring the ranker's tables and context to the ids and history of the book."""
        if self.model is not None:
            ctx = self.book.context(self.model.ctx.n_time_bins)
            grow_ranker(self.model, ctx, [*(self.optimizers or ()), *self.row_states.values()])

    def restart(self, seed: int | None = None) -> None:
        """A fresh ranker over the ids known so far (new weights, weighting and optimizers)."""
        torch.manual_seed(self.cfg.train.seed + (self.seed if seed is None else seed))
        self.model = build_model(self.cfg, self.book.context(), str(self.device))
        self.weighting = build_weighting(self.cfg)
        self.optimizers = None
        self.row_states = {}
        self.fresh = True

    # -- training ----------------------------------------------------------------------------
    def train(
        self,
        rows: pl.DataFrame,
        *,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        penalty: Penalty | None = None,
        weights: torch.Tensor | None = None,
        cost: UpdateCost | None = None,
        warm_start: bool = False,
        seed: int = 0,
        extra: tuple[str, ...] = (),
    ) -> TrainResult | None:
        """Train on ``rows`` (known ids) with the run's recipe: ``epochs``, ``lr`` and
        ``batch_size`` replace ``train.epochs``, ``train.lr`` (and ``train.embedding_lr``) and
        ``train.batch_size`` (the learning rate is still scaled by it), no early stopping (no
        validation part), the optimizers' state carried on. After the first fit, Adam steps on
        embedding tables are lazy (:class:`~recsys_mtl.train.optim.LazyAdam`, state kept): a
        row moves only when the rows trained on touch it, so rows of ids absent from an
        update stay as they were. ``penalty`` is added to every
        step's loss; ``weights`` (one per row of ``rows``) repeat rows (a row of weight w is
        drawn about w times per epoch). ``warm_start``: the recipe's closed-form start first.
        ``extra``: numeric columns of ``rows`` carried into the batches (a penalty's inputs).
        A closed-form ranker is refitted on ``rows`` instead."""
        if weights is not None:
            rows = _resample(rows, weights, seed + self.periods_trained)
        data = self.book.tensors(rows, self.tasks, seed=seed + self.periods_trained, extra=extra)
        n = size(data)
        if n == 0:
            return None
        run_seed = self.cfg.train.seed + self.seed + seed + 7_919 * self.periods_trained
        update: dict[str, Any] = {"patience": None, "refit": False, "seed": run_seed}
        if epochs is not None:
            update["epochs"] = epochs
        if batch_size is not None:
            update["batch_size"] = batch_size
        if lr is not None:
            update["lr"] = lr
            update["embedding_lr"] = lr if self.cfg.train.embedding_lr is not None else None
        settings = self.cfg.train.model_copy(update=update)
        self.periods_trained += 1
        if self.cls.closed_form:
            d = {k: v.to(self.device) for k, v in data.items()}
            pos = d["interaction"] > 0.5
            self.model.fit(d["user"][pos], d["item"][pos], d["rating"][pos],
                           sweeps=settings.epochs)  # fmt: skip
            if cost is not None:
                cost.add_fit(int(pos.sum()), settings.epochs)
            return None
        if warm_start and settings.warm_start != "none":
            self.model.warm_start({k: v.to(self.device) for k, v in data.items()}, settings)
            if cost is not None:  # each sweep reads every rating twice: user side, item side
                cost.add_fit(2 * int((data["interaction"] > 0.5).sum()), settings.als_sweeps)
        if self.optimizers is None and not self.fresh:  # a trained model: lazy from the start
            self.optimizers = build_optimizers(self.model, settings, self.weighting)
        if self.optimizers is not None:
            self.optimizers = _lazy_tables(self.model, self.optimizers)
        try:
            res = fit(self.model, data, None, self.tasks, settings, self.weighting,
                      penalty=penalty, optimizers=self.optimizers)  # fmt: skip
        except NonFiniteLossError as e:
            raise UserError(f"update diverged: {e} (lower the strategy's lr)") from e
        self.optimizers = res.optimizers
        self.fresh = False
        if cost is not None:
            cost.add_fit(n, res.epochs_run)
        return res

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, rows: pl.DataFrame) -> dict[str, np.ndarray]:
        """Per task, one prediction per row: the rating clipped to the scale, the binary tasks
        as probabilities. Unknown users are scored from the ranker's new-user state (no
        ratings), unknown items from the start rows new items would get (side features, else
        the mean row): never an error, and nothing is learned."""
        learner = self
        if (self.items.rows(rows["item_id"]) < 0).any():  # score from a grown copy
            learner = self.copy()
            learner.book.items.add(rows["item_id"])
            learner.grow()
        return learner._predict(rows)

    def _predict(self, rows: pl.DataFrame) -> dict[str, np.ndarray]:
        model = self.model
        was = model.training
        model.eval()
        batch = {k: v.to(self.device) for k, v in self.book.batch(rows).items()}
        known = batch["user"] >= 0
        outs: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for s in range(0, rows.height, _PREDICT_ROWS):
            part = {k: v[s : s + _PREDICT_ROWS] for k, v in batch.items()}
            k = known[s : s + _PREDICT_ROWS]
            out = {t: torch.zeros(k.numel(), device=self.device) for t in self.tasks}
            if k.any():
                got = model({f: v[k] for f, v in part.items()})
                for t in self.tasks:
                    out[t][k] = got[t].float()
            if (~k).any():
                new = {f: v[~k] for f, v in part.items()}
                n = int((~k).sum())
                pad = torch.zeros(n, 1, dtype=torch.long, device=self.device)
                state = model.new_user_state(pad, pad.bool())
                got = model.score(state, new)
                for t in self.tasks:
                    out[t][~k] = got[t].float()
            for t in self.tasks:
                outs[t].append(out[t])
        model.train(was)
        lo, hi = self.book.side.rating_scale
        result = {}
        for t in self.tasks:
            x = torch.cat(outs[t]) if outs[t] else torch.zeros(0)
            x = x.clamp(lo, hi) if t == "rating" else torch.sigmoid(x)
            result[t] = x.cpu().numpy()
        return result


def _csr_pairs(offsets: torch.Tensor, values: torch.Tensor) -> np.ndarray:
    """``(n, 2)`` (row, value) pairs of a CSR ``offsets, values``."""
    owner = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets[1:] - offsets[:-1])
    return np.stack([owner.numpy(), values.numpy()], 1)


def _lazy_tables(model: Any, optimizers: list[Any]) -> list[Any]:
    """The optimizers with every plain Adam on embedding tables replaced by a lazy one (same
    state), and lazy ones never switched to dense steps."""
    tables = {id(p) for m in model.modules() if isinstance(m, EmbeddingTables)
              for p in m.parameters()}  # fmt: skip
    out = []
    for opt in optimizers:
        on_tables = bool(opt.params) and all(id(p) in tables for p in opt.params)
        if on_tables and type(opt) is Adam:
            lazy = LazyAdam(opt.params, opt.base_lr, betas=opt.betas, eps=opt.eps,
                            weight_decay=opt.weight_decay)  # fmt: skip
            lazy.load_state_dict(opt.state_dict())
            opt = lazy
        if isinstance(opt, LazyAdam):
            opt.dense_above = None
            opt.dense = [False] * len(opt.params)
        out.append(opt)
    return out


def _resample(rows: pl.DataFrame, weights: torch.Tensor, seed: int) -> pl.DataFrame:
    """Rows repeated by ``weights``: each kept ``floor(w)`` times plus once more with
    probability ``w - floor(w)`` (seeded)."""
    w = weights.double().clamp(min=0).cpu()
    g = torch.Generator().manual_seed(seed)
    reps = torch.floor(w) + (torch.rand(w.shape, generator=g, dtype=torch.float64) < w - w.floor())
    index = torch.repeat_interleave(torch.arange(rows.height), reps.long())
    return rows[index.numpy()]
