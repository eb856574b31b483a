"""Where a cheap strategy's served gap to the weekly full retrain lies (``benchmarks/continual.py
--parts sides``).

The weekly full retrain and a strategy run side by side from the same base model (seed by
seed). Before each test week, besides the two models, two hybrids are served: the strategy's
model with the full retrain's item-side parameters (``parameter_roles()`` side ``item``: item
factors, SVD++ item vectors, item biases and time biases) and with its user-side parameters.
Each is served by the fast path (the penalties chosen on the validation weeks) and measured on
the week's warm rows (known user and item). The hybrid that closes the gap names the side the
strategy leaves behind.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger("benchmarks.continual")

SIDES = ("item", "user")


def _swap(learner: Any, source: Any, side: str) -> Any:
    """A copy of ``learner`` with ``source``'s parameters of ``side`` (same shapes)."""
    hybrid = learner.copy()
    roles = hybrid.model.parameter_roles()
    theirs = dict(source.model.named_parameters())
    with torch.no_grad():
        for name, p in hybrid.model.named_parameters():
            if roles[name].side == side and theirs[name].shape == p.shape:
                p.copy_(theirs[name])
    return hybrid


def sides(cfg: Any, frame: Any, side: Any, strategy: str, settings: dict, seeds: list[int],
          prior: Any) -> list[dict]:  # fmt: skip
    """One row per seed: the served warm-row RMSE of the full retrain, the strategy and the
    two hybrids, pooled over the test weeks."""
    from pipelines.continual.protocol import fast_path
    from pipelines.continual.stream import Protocol
    from recsys_mtl.continual import ContinualRanker, cut_periods, make_strategy

    if strategy == "full":
        raise ValueError("sides: compare a strategy other than full with the full retrain")
    plog = cut_periods(frame, cfg.stream)
    proto = Protocol.of(cfg, plog.n_periods)
    out = []
    for seed in seeds:
        base, _ = ContinualRanker.start(cfg, plog.before(proto.base), side, seed, t0=plog.t0)
        full, cheap = base.copy(), base.copy()
        s_full, s_cheap = make_strategy("full", {}), make_strategy(strategy, settings)
        sq: dict[str, list[np.ndarray]] = {}
        for t in range(proto.base, proto.tested[-1]):
            new, past = plog.rows(t), plog.before(t)
            s_full.update(full, new, past, seed=seed)
            if proto.part(t + 1) == "validation":  # as the stream steps it (transfer learns)
                s_cheap.update_validation(cheap, new, past, plog.rows(t + 1), seed=seed)
            else:
                s_cheap.update(cheap, new, past, seed=seed)
            if t + 1 not in proto.tested:
                continue
            rows = plog.rows(t + 1, probe=None)
            ku, ki = full.known(rows)
            warm, y = ku & ki, rows["rating"].to_numpy()
            served = {"full": full, strategy: cheap,
                      **{f"{strategy}+full_{s}": _swap(cheap, full, s) for s in SIDES}}  # fmt: skip
            for label, lrn in served.items():
                pred, _ = fast_path(lrn, rows, prior)
                sq.setdefault(label, []).append((pred - y)[warm] ** 2)
        m = {f"fast/warm/rmse/{k}": float(np.sqrt(np.concatenate(v).mean())) for k, v in sq.items()}
        out.append({"labels": {"part": "sides", "strategy": strategy, "settings": settings,
                               "seed": seed}, "metrics": m})  # fmt: skip
        log.info("sides %s seed %d: %s", strategy, seed, {k: round(v, 4) for k, v in m.items()})
    return out
