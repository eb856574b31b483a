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
  did not touch (zero gradient) do not move.

Each exposes ``zero_grad``, ``step``, ``state_dict``/``load_state_dict`` and ``lr`` (set by
the schedule before every step).

:func:`lr_multiplier` is the schedule: a linear warm-up over the first ``warmup`` steps,
then constant, cosine or linear decay to 0 at the last step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "SCHEDULES",
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

    def _live(self) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        idx = [k for k, p in enumerate(self.params) if p.grad is not None]
        return idx, [self.params[k].data for k in idx], [self.params[k].grad for k in idx]

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
        b1, b2 = self.betas
        m = [self.state["m"][k] for k in idx]
        v = [self.state["v"][k] for k in idx]
        for k in idx:  # per-parameter step counts: a parameter without gradient keeps its own
            self.t[k] += 1
        if self.weight_decay:
            torch._foreach_mul_(ps, 1.0 - self.lr * self.weight_decay)
        torch._foreach_lerp_(m, gs, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, gs, gs, 1.0 - b2)
        counts = {self.t[k] for k in idx}
        if len(counts) == 1:  # the usual case: one fused pass over every parameter
            t = counts.pop()
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1.0 - b2**t))
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(ps, m, denom, -self.lr / (1.0 - b1**t))
            return
        for k, p, mk, vk in zip(idx, ps, m, v, strict=True):
            t = self.t[k]
            step = self.lr / (1.0 - b1**t)
            denom = (vk / (1.0 - b2**t)).sqrt_().add_(self.eps)
            p.addcdiv_(mk, denom, value=-step)


class LazyAdam(Adam):
    """Adam that moves only the rows of a table that the step's gradient touched (non-zero
    rows): their moments decay and update, the other rows' moments and weights stay as they
    are (TensorFlow's LazyAdam, torch's SparseAdam on dense gradients). A rare row is then not
    pushed on by stale momentum at every step."""

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        for k, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            self.t[k] += 1
            t = self.t[k]
            g2 = g.view(g.shape[0], -1)
            touched = g2.ne(0).any(1, keepdim=True).to(g.dtype)  # (rows, 1): 1 where touched
            m = self.state["m"][k].view(g2.shape)
            v = self.state["v"][k].view(g2.shape)
            m.lerp_(g2, touched * (1.0 - b1))  # untouched rows: weight 0, m unchanged
            v.mul_(1.0 - touched * (1.0 - b2)).addcmul_(g2, g2, value=1.0 - b2)
            denom = (v / (1.0 - b2**t)).sqrt_().add_(self.eps)
            p.data.view(g2.shape).addcdiv_(m * touched, denom, value=-self.lr / (1.0 - b1**t))


class Adagrad(_Optimizer):
    """Adagrad (element-wise accumulators, initial value 0, as ``torch.optim.Adagrad``)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, eps: float = 1e-10) -> None:
        super().__init__(params, lr)
        self.eps = eps
        self.state = {"sum": [torch.zeros_like(p) for p in self.params]}

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        idx, ps, gs = self._live()
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
            g2 = g.reshape(acc.shape[0], -1)
            acc.add_(g2.pow(2).mean(1, keepdim=True))
            p.data.reshape(acc.shape[0], -1).addcdiv_(g2, acc.sqrt().add_(self.eps), value=-self.lr)
