"""The trainer's optimizers and learning-rate schedule, in plain tensor ops.

Why not ``torch.optim``: creating any ``torch.optim`` optimizer imports ``torch._dynamo``
(its methods are wrapped by ``torch._disable_dynamo``), 1.5-3 s on this machine, as long as
``import torch`` itself, and a run pays it before its first step. The updates below are the
same formulas as torch's (checked against them in the tests), on ``torch._foreach_*`` kernels.

* :class:`Adam` (``weight_decay`` decoupled, as AdamW);
* :class:`LazyAdam`: Adam that moves only the rows of a table the step touched;
* :class:`Adagrad`;
* :class:`RowWiseAdagrad`: one accumulator per embedding row (the mean squared gradient of
  the row), as fbgemm's and TorchRec's row-wise Adagrad: 1/dim of the state, and rows a step
  did not touch (zero gradient) do not move;
* :class:`SGD`: plain gradient steps (fbgemm's exact SGD for sharded tables).

Each has ``zero_grad``, ``step``, ``state_dict``/``load_state_dict`` and ``lr`` (set per step).

Row-sparse gradients (:mod:`recsys_mtl.train.row_sparse`): lazy Adam, the Adagrads and SGD
step the looked-up rows alone (a step costs the batch, not the table), with the same rows and
values as on a dense gradient; plain Adam takes it dense; lazy Adam's rows go in one pass
(:mod:`recsys_mtl.train.row_kernel`).

:func:`lr_multiplier` is the schedule: a linear warm-up over the first ``warmup`` steps,
then constant, cosine or linear decay to 0 at the last step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from recsys_mtl.train.row_kernel import adam_rows
from recsys_mtl.train.row_sparse import adagrad_rows, sparse_rows

__all__ = [
    "SCHEDULES",
    "SGD",
    "Adagrad",
    "Adam",
    "LazyAdam",
    "RowWiseAdagrad",
    "lr_multiplier",
    "scaled_lr",
]

SCHEDULES = ("constant", "cosine", "linear")


def scaled_lr(lr: float, batch_size: int, reference: int, rule: str) -> float:
    """``lr`` set for batches of ``reference``, scaled to ``batch_size`` by ``rule``
    (``none``, ``linear``: proportional, ``sqrt``: by the square root of the ratio)."""
    ratio = batch_size / reference
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    if rule == "none":
        return lr
    raise ValueError(f"unknown learning-rate scaling {rule!r}; known: none, linear, sqrt")


def lr_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """The factor on the learning rate at ``step`` (0-based) of ``total`` steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    done = min(1.0, (step - warmup + 1) / span)  # 1 at the last step
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    return 1.0 - done


def _fused_step(
    ps: list[torch.Tensor],
    gs: list[torch.Tensor],
    m: list[torch.Tensor],
    v: list[torch.Tensor],
    ts: list[int],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> list[int]:
    """Adam (decoupled weight decay when ``weight_decay``) through torch's fused kernel
    (``torch.optim.Adam(fused=True)``'s: one read and write of each weight and moment instead
    of one per operation), with the per-tensor step counts ``ts``,
    one call per (device, dtype) group. Returns the positions it did not step: tensors that
    are not all contiguous (the kernel reads them as flat arrays), or a group whose device or
    dtype has no kernel; the caller steps those with ``_foreach`` operations."""
    left: list[int] = []
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k, (p, g, mk, vk) in enumerate(zip(ps, gs, m, v, strict=True)):
        flat = all(x.is_contiguous() for x in (p, g, mk, vk))
        if flat and g.dtype == p.dtype and g.device == p.device:
            groups.setdefault((p.device, p.dtype), []).append(k)
        else:
            left.append(k)
    kernel = torch._fused_adamw_ if weight_decay else torch._fused_adam_
    for (device, dtype), idx in groups.items():
        if not _FUSED_OK.get((device.type, dtype), True):
            left += idx
            continue
        steps = [torch.tensor(float(ts[k]), dtype=torch.float32, device=device) for k in idx]
        try:
            kernel([ps[k] for k in idx], [gs[k] for k in idx], [m[k] for k in idx],
                   [v[k] for k in idx], [], steps, lr=lr, beta1=betas[0], beta2=betas[1],
                   weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)  # fmt: skip
        except (RuntimeError, NotImplementedError, AttributeError):
            _FUSED_OK[(device.type, dtype)] = False
            left += idx
    return sorted(left)


# (device type, dtype) -> whether torch's fused Adam kernel runs there (learned on first use)
_FUSED_OK: dict[tuple[str, torch.dtype], bool] = {}


def _dense(g: torch.Tensor) -> torch.Tensor:
    return g.to_dense() if g.is_sparse else g


class _Optimizer:
    def __init__(self, params: list[torch.nn.Parameter], lr: float) -> None:
        self.params = [p for p in params]
        self.lr = lr
        self.base_lr = lr
        self.steps = 0
        self.t = [0] * len(self.params)  # per-parameter step counts (Adam's bias correction)
        self.state: dict[str, list[torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _live(
        self, dense_only: bool = False
    ) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        """The parameters with a gradient (``dense_only``: a dense one), their data and their
        gradients (dense)."""
        live = [k for k, p in enumerate(self.params) if p.grad is not None]
        idx = [k for k in live if not (dense_only and self.params[k].grad.is_sparse)]
        return idx, [self.params[k].data for k in idx], [_dense(self.params[k].grad) for k in idx]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "lr": self.lr, "state": self.state, "t": list(self.t)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.steps = int(saved["steps"])
        self.lr = float(saved["lr"])
        self.t = [int(x) for x in saved.get("t", self.t)]
        for name, tensors in saved["state"].items():
            mine = self.state[name]
            for dst, src in zip(mine, tensors, strict=True):
                dst.copy_(src)


class Adam(_Optimizer):
    """Adam with bias correction; ``weight_decay`` is decoupled (AdamW)."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.state = {
            "m": [torch.zeros_like(p) for p in self.params],
            "v": [torch.zeros_like(p) for p in self.params],
        }

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        idx, ps, gs = self._live()
        if not idx:
            return
        m = [self.state["m"][k] for k in idx]
        v = [self.state["v"][k] for k in idx]
        for k in idx:  # per-parameter step counts: a parameter without gradient keeps its own
            self.t[k] += 1
        self._adam(ps, gs, m, v, [self.t[k] for k in idx], self.weight_decay)

    def _adam(self, ps, gs, m, v, ts: list[int], weight_decay: float) -> None:
        """Adam on whole tensors with their step counts ``ts``, in place: torch's fused kernel
        where it takes them, ``_foreach`` operations for the rest."""
        left = _fused_step(ps, gs, m, v, ts, self.lr, self.betas, self.eps, weight_decay)
        if not left:
            return
        ps, gs, m, v, ts = ([x[j] for j in left] for x in (ps, gs, m, v, ts))
        b1, b2 = self.betas
        if weight_decay:
            torch._foreach_mul_(ps, 1.0 - self.lr * weight_decay)
        torch._foreach_lerp_(m, gs, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, gs, gs, 1.0 - b2)
        counts = set(ts)
        if len(counts) == 1:  # the usual case: one pass over every tensor
            t = counts.pop()
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1.0 - b2**t))
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(ps, m, denom, -self.lr / (1.0 - b1**t))
            return
        for t, p, mk, vk in zip(ts, ps, m, v, strict=True):
            step = self.lr / (1.0 - b1**t)
            denom = (vk / (1.0 - b2**t)).sqrt_().add_(self.eps)
            p.addcdiv_(mk, denom, value=-step)


class LazyAdam(Adam):
    """Adam that moves only the rows of a table that the step's gradient touched (non-zero
    rows): their moments decay and update, the other rows' moments and weights stay as they
    are (TensorFlow's LazyAdam, torch's SparseAdam on dense gradients). A rare row is then not
    pushed on by stale momentum at every step.

    ``dense_above``: a table whose rows the first step touched at or above this share takes
    plain Adam steps from then on, without the search for touched rows and the put-back of the
    others (at large batches most rows of the factor tables are touched at every step); the
    decision is kept in the state dict, so a resumed run makes the same one."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        lr: float,
        dense_above: float | None = None,
        **adam: Any,  # Adam's betas, eps, weight_decay
    ) -> None:
        super().__init__(params, lr, **adam)
        self.dense_above = dense_above
        self.dense: list[bool | None] = [None] * len(self.params)  # None: not decided yet

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "dense": list(self.dense)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        super().load_state_dict(saved)
        self.dense = list(saved.get("dense", self.dense))

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        # touched rows in place, or with the mostly-touched tables in one Adam call, put back
        group: tuple[list[torch.Tensor], ...] = ([], [], [], [])
        group_t: list[int] = []
        put_back: list[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]] = []
        for k, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            self.t[k] += 1
            if g.is_sparse:  # the looked-up rows: no scan of the table
                rows, values = sparse_rows(g)
                if self.dense[k] is None and self.dense_above is not None:
                    self.dense[k] = rows.numel() >= self.dense_above * g.shape[0]
                if not self.dense[k]:
                    w, m, v = (x.view(g.shape[0], -1) for x in
                               (p.data, self.state["m"][k], self.state["v"][k]))  # fmt: skip
                    adam = (self.t[k], self.lr, self.betas, self.eps)  # in one pass if it can
                    if rows.numel() and not adam_rows(w, m, v, rows, values, *adam):
                        parts = (*(x.index_select(0, rows) for x in (w, m, v)),)
                        put_back.append((rows, [w, m, v], list(parts)))
                        for dst, x in zip(group, (parts[0], values, *parts[1:]), strict=True):
                            dst.append(x)
                        group_t.append(self.t[k])
                    continue
                g = g.to_dense()
            g2 = g.contiguous().view(g.shape[0], -1)
            w = p.data.view(g2.shape)
            m = self.state["m"][k].view(g2.shape)
            v = self.state["v"][k].view(g2.shape)
            if self.dense[k]:  # plain Adam on this table
                for dst, x in zip(group, (w, g2, m, v), strict=True):
                    dst.append(x)
                group_t.append(self.t[k])
                continue
            # a row is touched when its gradient is non-zero (NaN counts as touched)
            touched = g2.view(-1) != 0 if g2.shape[1] == 1 else g2.abs().amax(1) != 0
            if self.dense[k] is None and self.dense_above is not None:
                share = touched.sum() / touched.numel()  # one host sync, on the first step only
                self.dense[k] = bool(share >= self.dense_above)
            if g.device.type != "cpu":  # no host sync per table: the masked update
                self._masked(w, g2, m, v, touched[:, None].to(g2.dtype), self.t[k])
                continue
            rows = touched.nonzero().view(-1)
            n_rows = g2.shape[0]
            if 2 * rows.numel() >= n_rows:
                # most rows touched: Adam on the whole table, the few untouched rows (weights
                # and moments) put back after it
                if rows.numel() < n_rows:
                    idle = (~touched).nonzero().view(-1)
                    put_back.append((idle, [w, m, v], [x.index_select(0, idle) for x in (w, m, v)]))
                parts = (w, g2, m, v)
            elif rows.numel():  # a few rows: Adam on them, in place or gathered and put back
                adam = (self.t[k], self.lr, self.betas, self.eps)
                if adam_rows(w, m, v, rows, g2.index_select(0, rows), *adam):
                    continue
                parts = tuple(x.index_select(0, rows) for x in (w, g2, m, v))
                put_back.append((rows, [w, m, v], [parts[0], parts[2], parts[3]]))
            else:
                continue
            for dst, x in zip(group, parts, strict=True):
                dst.append(x)
            group_t.append(self.t[k])
        if group_t:
            self._adam(*group, group_t, 0.0)
        for rows, dsts, srcs in put_back:
            for dst, src in zip(dsts, srcs, strict=True):
                dst.index_copy_(0, rows, src)

    def _masked(self, w, g, m, v, touched: torch.Tensor, t: int) -> None:
        """Lazy Adam on a whole table with a ``(rows, 1)`` 0/1 mask of the touched rows, in
        tensor operations only (on an accelerator: counting the touched rows would wait for
        the device at every table)."""
        b1, b2 = self.betas
        m.lerp_(g, touched * (1.0 - b1))  # untouched rows: weight 0, m unchanged
        v.mul_(1.0 - touched * (1.0 - b2)).addcmul_(g, g, value=1.0 - b2)
        denom = (v / (1.0 - b2**t)).sqrt_().add_(self.eps)
        w.addcdiv_(m * touched, denom, value=-self.lr / (1.0 - b1**t))


class Adagrad(_Optimizer):
    """Adagrad (element-wise accumulators, initial value 0, as ``torch.optim.Adagrad``)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, eps: float = 1e-10) -> None:
        super().__init__(params, lr)
        self.eps = eps
        self.state = {"sum": [torch.zeros_like(p) for p in self.params]}

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for p, acc in zip(self.params, self.state["sum"], strict=True):
            if p.grad is not None and p.grad.is_sparse:  # the looked-up rows alone
                adagrad_rows(p.data, acc, p.grad, self.lr, self.eps, rowwise=False)
        idx, ps, gs = self._live(dense_only=True)
        if not idx:
            return
        acc = [self.state["sum"][k] for k in idx]
        torch._foreach_addcmul_(acc, gs, gs, 1.0)
        denom = torch._foreach_sqrt(acc)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, gs, denom, -self.lr)


class RowWiseAdagrad(_Optimizer):
    """Adagrad with one accumulator per row of a 2-D table: ``G_r += mean_j g_rj^2``,
    ``w_r -= lr * g_r / (sqrt(G_r) + eps)``. Untouched rows (zero gradient) stay put."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, eps: float = 1e-10) -> None:
        super().__init__(params, lr)
        self.eps = eps
        self.state = {
            "sum": [
                torch.zeros(
                    p.shape[0] if p.dim() > 1 else p.numel(), 1, dtype=p.dtype, device=p.device
                )
                for p in self.params
            ]
        }

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for p, acc in zip(self.params, self.state["sum"], strict=True):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:  # the looked-up rows alone
                adagrad_rows(p.data, acc, g, self.lr, self.eps, rowwise=True)
                continue
            g2 = g.reshape(acc.shape[0], -1)
            acc.add_(g2.pow(2).mean(1, keepdim=True))
            p.data.reshape(acc.shape[0], -1).addcdiv_(g2, acc.sqrt().add_(self.eps), value=-self.lr)


class SGD(_Optimizer):
    """Plain gradient descent: ``w -= lr * g``."""

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for p in self.params:
            if p.grad is not None and p.grad.is_sparse:  # the looked-up rows alone
                p.data.add_(p.grad, alpha=-self.lr)
        idx, ps, gs = self._live(dense_only=True)
        if idx:
            torch._foreach_add_(ps, gs, alpha=-self.lr)
