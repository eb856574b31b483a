"""Cold-start meta-learning over user tasks (MAML, first-order MAML, Reptile, Meta-SGD, ...).

The learners build on the rankers of :mod:`recsys_mtl`; the split they consume
(``split.strategy: cold_start_users``, support/query sets per held-out user) already exists.
"""

__all__: list[str] = []
