"""Batched user states of new users: the ranker's start, the ridge offset, scoring item grids.

A cold-start user is a state ``{name: (U, ...)}`` for ``Ranker.score``. This module builds the
ranker's starting state from padded support sets, fits the ridge-shrunk user offset on the
support residuals (the "ridge floor"), and scores grids of items ``(U, N)`` for those users in
chunks of users (memory bounded by the chunk).
"""

from __future__ import annotations

import torch
from torch import nn

from meta.protocol import Padded

__all__ = ["module_device", "ridge_offset", "ridge_state", "score_grid", "start_state"]


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s weights and buffers are (the CPU for a module with none)."""
    return next(iter(module.state_dict().values()), torch.zeros(0)).device


def start_state(model: nn.Module, support: Padded, user_cats: torch.Tensor | None) -> dict:
    """The ranker's ``new_user_state`` of the users whose support sets are ``support``."""
    return model.new_user_state(support.items, support.mask, support.days, user_cats)


def score_grid(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    items: torch.Tensor,
    days: torch.Tensor,
    time_bins: torch.Tensor,
    chunk: int = 32,
) -> dict[str, torch.Tensor]:
    """``{task: (U, N)}``: scores of ``items (U, N)`` (with ``days``/``time_bins`` of the same
    shape) for users ``state`` (entries ``(U, ...)``), ``chunk`` users per call."""
    n_users, n = items.shape
    parts: dict[str, list[torch.Tensor]] = {}
    for s in range(0, n_users, chunk):
        e = min(n_users, s + chunk)
        rows = torch.arange(s, e, device=items.device).repeat_interleave(n)
        st = {k: v[rows] for k, v in state.items()}
        batch = {
            "item": items[s:e].reshape(-1),
            "day": days[s:e].reshape(-1),
            "time_bin": time_bins[s:e].reshape(-1),
        }
        out = model.score(st, batch)
        for t, v in out.items():
            if t != "_reg":
                parts.setdefault(t, []).append(v.reshape(e - s, n))
    return {t: torch.cat(v) for t, v in parts.items()}


def _rating_column(model: nn.Module) -> int | None:
    tasks = list(getattr(model, "tasks", ["rating"]))
    return tasks.index("rating") if "rating" in tasks else None


def ridge_state(
    model: nn.Module,
    support: Padded,
    user_cats: torch.Tensor | None,
    shrinkage: float = 15.0,
    steps: int = 50,
    lr: float = 0.05,
) -> dict[str, torch.Tensor]:
    """The starting state plus a ridge-shrunk user offset fitted on the support residuals.

    With a user bias in the state (BellKor, the bias baseline): the rating task's bias is
    ``sum(r - r_hat) / (n + shrinkage)`` in closed form, ``r_hat`` the prediction of the
    starting state. Rankers without one (NCF, the deep multi-task rankers) get the ridge (MAP)
    fit of their adaptable state entries instead: ``steps`` Adam steps on
    ``sum(r - r_hat)^2 + shrinkage * |delta|^2``, batched over users.
    """
    with torch.no_grad():
        state = start_state(model, support, user_cats)
    return ridge_offset(model, state, support, shrinkage, steps, lr)


def ridge_offset(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    support: Padded,
    shrinkage: float = 15.0,
    steps: int = 50,
    lr: float = 0.05,
) -> dict[str, torch.Tensor]:
    """``state`` plus the ridge-shrunk user offset fitted on the support residuals of its
    predictions (:func:`ridge_state`'s second half, from any starting state)."""
    col = _rating_column(model)
    if col is None or not state:
        return state
    m = support.mask.to(torch.float32)
    if "user_bias" in state:
        with torch.no_grad():
            pred = score_grid(model, state, support.items, support.days, support.time_bins)
            res = (support.ratings - pred["rating"]) * m
            offset = res.sum(1) / (m.sum(1) + shrinkage)
            bias = state["user_bias"].clone()
            if bias.dim() == 1:
                bias += offset
            else:
                bias[:, col] += offset
            return {**state, "user_bias": bias}
    names = [n for n in getattr(model, "adaptable_state", ()) if n in state]
    if not names:
        return state
    delta = {n: torch.zeros_like(state[n], requires_grad=True) for n in names}
    opt = torch.optim.Adam(list(delta.values()), lr=lr)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                st = {**state, **{n: state[n] + delta[n] for n in names}}
                pred = score_grid(model, st, support.items, support.days, support.time_bins)
                err = ((support.ratings - pred["rating"]) * m).pow(2).sum()
                penalty = sum(d.pow(2).sum() for d in delta.values())
                opt.zero_grad()
                (err + shrinkage * penalty).backward()
                opt.step()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return {**state, **{n: (state[n] + delta[n]).detach() for n in names}}
