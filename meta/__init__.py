"""Cold-start meta-learning over user tasks.

* :mod:`meta.protocol`: user roles (held out, cold validation, train), support / query sets
  as padded tensors, the per-user metrics;
* :mod:`meta.learners`: the ``LEARNERS`` registry: MAML, first-order MAML, Reptile, Meta-SGD,
  a metric (prototypical) learner, a black-box (transformer) learner and a closed-form
  (ridge / Bayesian linear regression) learner, over a ranker of :mod:`recsys_mtl` or the
  MeLU-style model of :mod:`meta.melu`;
* :mod:`meta.solve`: the batched MAP (ridge) solve per user with padded rows;
* :mod:`meta.train`: meta-training with early stopping on cold validation and checkpoints;
* :mod:`meta.floors`, :mod:`meta.evaluate`: the floors and the per-K report;
* :mod:`meta.adapt`: :func:`~meta.adapt.adapt_users`, a trained run adapted to new users.

Imports go one way: ``pipelines -> meta -> recsys_mtl``.
"""

__all__ = ["adapt", "data", "evaluate", "floors", "learners", "melu", "protocol", "solve", "train"]
