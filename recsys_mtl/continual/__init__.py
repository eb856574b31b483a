"""Continual training: a ranker kept fresh as a timestamped log arrives in periods.

The room's names (the pipeline's ``stream`` and ``update`` commands build on these):

* :class:`~recsys_mtl.config.stream.StreamConfig`: the ``stream:`` section of a run config
  (``split.strategy: stream`` selects it).
* :func:`cut_periods` -> :class:`PeriodLog`: the ratings in time order with ``period`` (0-based)
  and ``probe`` (a seeded share of each period, never trained on); ``PeriodLog.rows(periods,
  probe=False)`` selects rows.
* :class:`IdBook`: raw id -> row, grown in order of first appearance (no id known before it
  appears).
* :class:`ContinualRanker`: the model that lives through the stream. ``start(cfg, rows, side,
  seed)`` fits the base model (returns it and its :class:`UpdateCost`); ``from_run(run)`` wraps
  a finished run (anything with ``cfg``, ``model`` and the id maps ``users`` / ``items``: raw id
  columns ``user_id`` / ``item_id`` with ``uidx`` / ``iidx``); ``predict(rows)`` -> ``{task:
  array}`` (unknown users get the ranker's new-user state, unknown items the new-item start
  row, never an error); ``known(rows)`` -> (known user, known item) masks; ``copy()``;
  ``grow(rows)`` adds the rows' new ids (tables grown in place, optimizer state kept);
  ``train(rows, ...)`` the trainer's fit on raw rows (tensors built for those rows only).
* :data:`STRATEGIES` (a :class:`~recsys_mtl.registry.Registry` of :class:`Strategy` classes):
  ``full``, ``full_warm``, ``window``, ``fine_tune``, ``replay``, ``ewc``, ``distill``,
  ``transfer``, ``als_rows``. ``make_strategy(name, settings)`` validates the settings (a bad key is a
  UserError naming ``stream.settings.NAME.KEY``); ``Strategy.update(learner, new, past, seed)``
  is one period step, in place, and returns its :class:`UpdateCost` (seconds, rows, epochs,
  rows_epochs, peak_rss_mb). ``Strategy.update_validation(learner, new, past, next_rows,
  seed)`` is the step on a validation period, given the next period's rows: ``transfer``
  learns its group weights there (and only there); the others make an ordinary update.
  ``Strategy.trained_rows``: the rows the last update trained on (before negatives).
* :class:`SideInfo`: side features by raw id (``from_features(dir)``, ``none(scale)``).
  ``ContinualRanker.book`` (:class:`~recsys_mtl.continual.book.StreamBook`) holds the ids,
  rated pairs, (user, day) pairs and the time frame; ``book.batch(rows)`` gives model inputs
  (ids -1 where unknown), ``book.tensors(rows, tasks)`` training tensors, ``book.context()``
  the feature context of the ids so far.

Raw frames everywhere have the columns ``user_id``, ``item_id``, ``rating``, ``ts`` (and, from
:func:`cut_periods`, ``period`` and ``probe``).
"""

from recsys_mtl.config.stream import StreamConfig
from recsys_mtl.continual.cost import UpdateCost, measure
from recsys_mtl.continual.ids import IdBook
from recsys_mtl.continual.learner import ContinualRanker, SideInfo
from recsys_mtl.continual.periods import PeriodLog, cut_periods
from recsys_mtl.continual.strategies import STRATEGIES, Strategy, make_strategy

__all__ = [
    "STRATEGIES",
    "ContinualRanker",
    "IdBook",
    "PeriodLog",
    "SideInfo",
    "Strategy",
    "StreamConfig",
    "UpdateCost",
    "cut_periods",
    "make_strategy",
    "measure",
]
