"""Users with demographics and few or no ratings: a user state regressed from demographics.

:class:`DemographicState` fits, on the training users, a closed-form ridge regression from
one-hot demographics (age bucket, gender, occupation, and age bucket x gender) to the
population ranker's adaptable user-state entries (its declared parameter groups: BellKor's
``user`` (with its SVD++ implicit part folded in), ``user_bias``, ``user_drift``; the deep
rankers' ``user``). A new user's state is the ranker's ``new_user_state`` with those entries
replaced by the regression's prediction; with K > 0 support ratings the ridge offset of the
support residuals goes on top (:func:`meta.state.ridge_offset`), as for the ``ranker_ridge``
floor. The ridge's precision is chosen on the cold validation users (K = 0 RMSE).

:func:`group_item_bias` is the K = 0 floor beside it: ``mu + b_i + b_{i,g}``, ``b_{i,g}`` the
shrunk mean residual of item ``i`` within the user's (age bucket, gender) group.

:func:`encode_users` turns raw demographics (``age, gender, occupation``) into the codes the
features stage gives (the encoding is saved with the fitted state, so a bundle serves it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from meta.protocol import Padded
from meta.state import ridge_offset, start_state
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path, load_tensors, write_json

__all__ = ["DemographicState", "encode_users", "group_item_bias", "has_demographics"]

STATE_FILE, WEIGHTS_FILE = "demographic.json", "demographic.pt"
PRECISIONS = (1.0, 10.0, 100.0, 1000.0)
DEMOGRAPHICS = ("age", "gender", "occupation")


def has_demographics(user_cats: torch.Tensor) -> bool:
    """Whether the log has demographics (some user with a known age, gender or occupation)."""
    return bool((user_cats[:, :3] > 0).any())


def _one_hot(cats: torch.Tensor, vocab: tuple[int, int, int]) -> torch.Tensor:
    """``(U, F)`` float64: one-hot age bucket, gender, occupation and age x gender (code 0,
    unknown, is a column of its own)."""
    va, vg, vo = vocab
    a, g, o = (cats[:, j].clamp(0, v - 1) for j, v in enumerate(vocab))
    parts = [
        nn.functional.one_hot(a, va),
        nn.functional.one_hot(g, vg),
        nn.functional.one_hot(o, vo),
        nn.functional.one_hot(a * vg + g, va * vg),
    ]
    return torch.cat(parts, 1).double()


def _targets(model: nn.Module, users: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adaptable entries of known users, the SVD++ implicit part folded into ``user``."""
    with torch.no_grad():
        st = model.user_state(users)
    names = [n for n in model.adaptable_state if n in st]
    out = {n: st[n].double() for n in names}
    if "implicit" in st and "user" in out and st["implicit"].shape == st["user"].shape:
        out["user"] = out["user"] + st["implicit"].double()
    return out


class DemographicState:
    """Ridge from one-hot demographics to the ranker's adaptable user-state entries."""

    def __init__(self, vocab: tuple[int, int, int], encoding: dict[str, Any]) -> None:
        self.vocab = tuple(int(v) for v in vocab)
        self.encoding = encoding  # age bounds, gender and occupation values (encode_users)
        self.precision = PRECISIONS[0]
        self.mean_x: torch.Tensor | None = None
        self.mean_y: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.calibration: dict[str, torch.Tensor] = {}

    def fit(
        self,
        model: nn.Module,
        user_cats: torch.Tensor,
        users: torch.Tensor,
        precision: float,
        ratings: pl.DataFrame | None = None,
    ) -> DemographicState:
        """Fit on known ``users`` (indices of the ranker) with ridge precision ``precision``;
        with their ``ratings`` (``uidx, iidx, rating, day, time_bin``) the rating task's user
        bias is then calibrated (:meth:`_calibrate`)."""
        x = _one_hot(user_cats[users], self.vocab)
        ys = _targets(model, users)
        self.precision = float(precision)
        self.mean_x = x.mean(0)
        xc = x - self.mean_x
        gram = xc.T @ xc + self.precision * torch.eye(x.shape[1], dtype=torch.float64)
        chol = torch.linalg.cholesky(gram)
        for n, y in ys.items():
            flat = y.reshape(y.shape[0], -1)
            self.mean_y[n] = flat.mean(0)
            w = torch.cholesky_solve(xc.T @ (flat - self.mean_y[n]), chol)
            self.weights[n] = w
        self._shapes = {n: tuple(y.shape[1:]) for n, y in ys.items()}
        self.calibration: dict[str, torch.Tensor] = {}
        if ratings is not None and "user_bias" in self.weights and "rating" in model.tasks:
            self._calibrate(model, user_cats, users, ratings, xc, chol)
        return self

    def _calibrate(
        self,
        model: nn.Module,
        user_cats: torch.Tensor,
        users: torch.Tensor,
        ratings: pl.DataFrame,
        xc: torch.Tensor,
        chol: torch.Tensor,
        shrinkage: float = 5.0,
    ) -> None:
        """A known user's fitted bias goes with their own factors; a new user gets the
        predicted ones, and the ranker's predictions of the training users' ratings from the
        predicted states are off by a demographic-dependent offset. Each training user's mean
        residual under their predicted state (shrunk: ``sum / (n + shrinkage)``) is regressed
        on the same one-hot demographics (same precision) and added to the rating task's user
        bias."""
        n = len(users)
        pos = torch.full((int(user_cats.shape[0]),), -1, dtype=torch.long)
        pos[users] = torch.arange(n)
        r = ratings.filter(pl.col("uidx").is_in(pl.Series(users.numpy()).implode()))
        col = {c: torch.from_numpy(r[c].to_numpy().astype(np.int64)) for c in
               ("uidx", "iidx", "day", "time_bin")}  # fmt: skip
        y = torch.from_numpy(r["rating"].to_numpy().astype(np.float64))
        rows = pos[col["uidx"]]
        empty = Padded(*(torch.zeros(n, 1, dtype=torch.long) for _ in range(4)),
                       torch.zeros(n, 1, dtype=torch.bool))  # fmt: skip
        self.calibration = {}
        state = self.state(model, empty, user_cats[users], None)
        parts = []
        with torch.no_grad():
            for s in range(0, rows.numel(), 1 << 16):
                sl = slice(s, s + (1 << 16))
                batch = {"item": col["iidx"][sl], "day": col["day"][sl],
                         "time_bin": col["time_bin"][sl]}  # fmt: skip
                parts.append(
                    model.score({k: v[rows[sl]] for k, v in state.items()}, batch)["rating"]
                )
        res = y - torch.cat(parts).double()
        total = torch.zeros(n, dtype=torch.float64).index_add(0, rows, res)
        count = torch.zeros(n, dtype=torch.float64).index_add(0, rows, torch.ones_like(res))
        target = total / (count + shrinkage)
        w = torch.cholesky_solve(xc.T @ (target - target.mean())[:, None], chol)[:, 0]
        column = list(model.tasks).index("rating") if self._shapes["user_bias"] else -1
        self.calibration = {"mean": target.mean().reshape(1), "w": w,
                            "column": torch.tensor([column])}  # fmt: skip

    def entries(self, user_cats: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predicted adaptable entries ``{name: (U, ...)}`` of users with ``user_cats``."""
        x = _one_hot(user_cats.cpu(), self.vocab) - self.mean_x
        out = {}
        for n, w in self.weights.items():
            flat = self.mean_y[n] + x @ w
            if n == "user_bias" and self.calibration:
                c = self.calibration
                col = int(c["column"][0])
                shift = c["mean"] + x @ c["w"]
                flat = flat.clone()
                if col < 0:
                    flat[:, 0] += shift
                else:
                    flat[:, col] += shift
            out[n] = flat.reshape(flat.shape[0], *self._shapes[n]).float()
        return out

    def state(
        self,
        model: nn.Module,
        support: Padded,
        user_cats: torch.Tensor,
        shrinkage: float | None = 15.0,
    ) -> dict[str, torch.Tensor]:
        """A batched state for ``model.score``: the new-user state with the predicted entries,
        plus (``shrinkage`` not None) the ridge offset of the support residuals."""
        with torch.no_grad():
            st = start_state(model, support, user_cats)
            pred = self.entries(user_cats)
            dev = support.items.device
            st = {**st, **{n: v.to(dev) for n, v in pred.items() if n in st}}
        if shrinkage is None or not bool(support.mask.any()):
            return st
        return ridge_offset(model, st, support, shrinkage)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"mean_x": self.mean_x}
        tensors.update({f"mean_y/{n}": v for n, v in self.mean_y.items()})
        tensors.update({f"w/{n}": v for n, v in self.weights.items()})
        tensors.update({f"calibration/{n}": v for n, v in self.calibration.items()})
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            torch.save(tensors, tmp)
        doc = {"vocab": list(self.vocab), "encoding": self.encoding,
               "precision": self.precision,
               "shapes": {n: list(s) for n, s in self._shapes.items()}}  # fmt: skip
        write_json(doc, folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> DemographicState:
        doc = json.loads((folder / STATE_FILE).read_text())
        out = cls(tuple(doc["vocab"]), doc["encoding"])
        out.precision = doc["precision"]
        t = load_tensors(folder / WEIGHTS_FILE, map_location="cpu")
        out.mean_x = t["mean_x"]
        out.mean_y = {k[7:]: v for k, v in t.items() if k.startswith("mean_y/")}
        out.weights = {k[2:]: v for k, v in t.items() if k.startswith("w/")}
        out.calibration = {k[12:]: v for k, v in t.items() if k.startswith("calibration/")}
        out._shapes = {n: tuple(s) for n, s in doc["shapes"].items()}
        return out

    @staticmethod
    def saved(folder: Path) -> bool:
        return (folder / STATE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def encoding_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The demographics encoding of a features spec (``spec.json``)."""
    f = spec["features"]
    return {"age_bounds": f["age_bucket"].get("bounds", []),
            "gender": f["gender"].get("values", []),
            "occupation": f["occupation"].get("values", [])}  # fmt: skip


def encode_users(frame: pl.DataFrame, encoding: dict[str, Any]) -> torch.Tensor:
    """``(U, 4)`` codes (age bucket, gender, occupation, zip prefix = 0) of raw demographics:
    columns ``age`` (years), ``gender``, ``occupation``, any of them optional or null (code 0,
    unknown); an unknown gender or occupation value is code 0 as well."""
    n = frame.height
    cols = []
    if "age" in frame.columns:
        age = frame["age"].cast(pl.Float64, strict=False)
        if age.null_count() > frame["age"].null_count():
            raise UserError("users' demographics: column age must hold numbers (years)")
        a = age.fill_null(-1).to_numpy()
        bucket = np.searchsorted(encoding["age_bounds"], a, side="right") + 1
        cols.append(np.where(a < 0, 0, bucket))
    else:
        cols.append(np.zeros(n, dtype=np.int64))
    for name in ("gender", "occupation"):
        values = {str(v): i + 1 for i, v in enumerate(encoding[name])}
        if name in frame.columns:
            raw = frame[name].cast(pl.String).to_list()
            cols.append(np.array([values.get(str(v).strip(), 0) if v is not None else 0
                                  for v in raw], dtype=np.int64))  # fmt: skip
        else:
            cols.append(np.zeros(n, dtype=np.int64))
    cols.append(np.zeros(n, dtype=np.int64))
    return torch.from_numpy(np.stack(cols, 1).astype(np.int64))


def group_item_bias(
    ratings: pl.DataFrame,
    user_cats: torch.Tensor,
    mu: float,
    item_bias: torch.Tensor,
    shrinkage: float = 10.0,
) -> tuple[torch.Tensor, int]:
    """``(G, I)`` item offsets per (age bucket, gender) group ``a * V_g + g`` and ``V_g``: the
    mean residual ``r - mu - b_i`` of the group's training ratings of the item, shrunk
    (``n + shrinkage``). ``ratings``: the training users' (``uidx, iidx, rating``)."""
    u = torch.from_numpy(ratings["uidx"].to_numpy().astype(np.int64))
    i = torch.from_numpy(ratings["iidx"].to_numpy().astype(np.int64))
    y = torch.from_numpy(ratings["rating"].to_numpy().astype(np.float64))
    n_items = item_bias.shape[0]
    vg = int(user_cats[:, 1].max()) + 1
    n_groups = (int(user_cats[:, 0].max()) + 1) * vg
    g = user_cats[u, 0] * vg + user_cats[u, 1]
    key = g * n_items + i
    res = y - mu - item_bias.double()[i]
    total = torch.zeros(n_groups * n_items, dtype=torch.float64).index_add(0, key, res)
    count = torch.zeros(n_groups * n_items, dtype=torch.float64).index_add(
        0, key, torch.ones_like(res)
    )
    return (total / (count + shrinkage)).reshape(n_groups, n_items).float(), vg


def group_of(user_cats: torch.Tensor, n_groups: int, n_genders: int) -> torch.Tensor:
    """The (age bucket, gender) group row of each user (clamped into the fitted table)."""
    return (user_cats[:, 0] * n_genders + user_cats[:, 1]).clamp(0, n_groups - 1)
