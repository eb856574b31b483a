"""The ratings, user roles and lookups that meta-training and cold-start evaluation share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from meta.protocol import UserTasks, make_tasks, pad_rows, user_roles
from meta.rows import draw_negatives, support_keys, task_rows
from recsys_mtl.config import MetaConfig
from recsys_mtl.data.features import pair_keys
from recsys_mtl.io import write_json, write_parquet
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.context import USER_CATEGORICALS

__all__ = ["ColdData", "RowBlocks", "load_cold_data", "write_cold_split"]

ROLES_FILE = "users.parquet"
COLUMNS = ["row", "uidx", "iidx", "rating", "ts", "day", "time_bin"]


@dataclass
class RowBlocks:
    """A batch of user tasks with the rows every task's loss reads (support and query)."""

    tasks: UserTasks
    support: dict[str, torch.Tensor]
    query: dict[str, torch.Tensor]

    def take(self, rows: torch.Tensor) -> RowBlocks:
        return RowBlocks(
            self.tasks.take(rows),
            {k: v[rows] for k, v in self.support.items()},
            {k: v[rows] for k, v in self.query.items()},
        )


@dataclass
class ColdData:
    ratings: pl.DataFrame  # one row per rating: COLUMNS
    roles: pl.DataFrame  # uidx, role
    user_cats: torch.Tensor  # (n_users, 4)
    n_items: int
    rating_scale: tuple[float, float]
    like_threshold: float
    cfg: MetaConfig
    unseen: np.ndarray | None = None  # sorted ``row`` ids of training users' ratings that the
    # population ranker never trained on (its validation part)
    user_ids: list | None = None  # raw id of each user index

    def user_name(self, uidx: int) -> str:
        """``raw id (index N)`` of a user, for messages."""
        raw = self.user_ids[uidx] if self.user_ids is not None else uidx
        return f"{raw!r} (index {uidx})"

    @property
    def eval_ks(self) -> list[int | None]:
        """The K values held-out users are evaluated at: ``meta.ks`` under the ``first_k``
        protocol, else one "support = the rest" set (None)."""
        return list(self.cfg.ks) if self.cfg.protocol == "first_k" else [None]

    def users(self, role: str) -> np.ndarray:
        return self.roles.filter(pl.col("role") == role)["uidx"].to_numpy().astype(np.int64)

    def role_ratings(self, role: str) -> pl.DataFrame:
        return self.ratings.join(self.roles.filter(pl.col("role") == role), on="uidx", how="semi")

    def tasks(
        self, role: str, k: int | np.ndarray, seed: int, max_query: int | None = None
    ) -> UserTasks:
        """Support / query sets of the users of ``role`` under the configured protocol."""
        users = self.users(role)
        return make_tasks(
            self.role_ratings(role), users, self.user_cats, protocol=self.cfg.protocol, k=k,
            support=self.cfg.support, seed=seed, max_query=max_query,
        )  # fmt: skip

    def held_out_blocks(self, role: str, k: int | None, seed: int) -> RowBlocks:
        """The users of ``role`` (``cold_valid`` or ``test``) as tasks with support size ``k``
        (an entry of :attr:`eval_ks`), with negatives drawn avoiding their support items."""
        tasks = self.tasks(role, k if k is not None else 0, seed=seed)
        return self.blocks(tasks, np.random.default_rng([seed, 7, k or 0]), known=False)

    def train_tasks(self, k: np.ndarray, seed: int, max_query: int | None) -> UserTasks:
        """Meta-training tasks of the training users. With ``meta.train_query: unseen`` (and a
        population ranker that kept a validation part), the query set is the user's ratings
        the ranker never trained on and the support set the first K of the others, as a new
        user's query is unseen by the ranker; else as for held-out users."""
        if self.cfg.train_query != "unseen" or self.unseen is None:
            return self.tasks("train", k, seed, max_query)
        users = self.users("train")
        r = self.role_ratings("train")
        held = pl.col("row").is_in(pl.Series(self.unseen).implode())
        tasks = make_tasks(r.filter(~held), users, self.user_cats, protocol="first_k", k=k,
                           support=self.cfg.support, seed=seed)  # fmt: skip
        query = pad_rows(r.filter(held).sort("uidx", "ts", "row"), users, max_query)
        return UserTasks(tasks.users, tasks.user_cats, tasks.support, query)

    def blocks(self, tasks: UserTasks, rng: np.random.Generator, known: bool) -> RowBlocks:
        """Rows with sampled negatives. ``known``: a training user (negatives avoid all their
        ratings); otherwise only the support items are known and avoided."""
        per = self.cfg.negatives
        if known:
            r = self.ratings.join(
                pl.DataFrame({"uidx": tasks.users.numpy()}), on="uidx", how="semi"
            )
            keys = np.sort(pair_keys(r["uidx"].to_numpy(), r["iidx"].to_numpy(), self.n_items))
        else:
            keys = support_keys(tasks.users, tasks.support, self.n_items)
        thr = self.like_threshold
        sup = task_rows(
            tasks.support,
            *draw_negatives(tasks.users, tasks.support, keys, self.n_items, per, rng),
            thr,
        )
        qkeys = (
            keys
            if known
            else np.sort(
                np.concatenate([keys, support_keys(tasks.users, tasks.query, self.n_items)])
            )
        )
        qry = task_rows(
            tasks.query,
            *draw_negatives(tasks.users, tasks.query, qkeys, self.n_items, per, rng),
            thr,
        )
        return RowBlocks(tasks, sup, qry)


def write_cold_split(
    features_dir: str | Path, cfg: MetaConfig, valid_fraction: float, seed: int, out_dir: str | Path
) -> dict:
    """The cold-start split: user roles (``users.parquet``), and for the population ranker a
    split folder of the training users only (``train/valid/test.parquet``: valid a seeded share
    of their ratings for early stopping; test the held-out users' ratings, which the ranker's
    own evaluation never needs), ``train_user_items.parquet`` and ``report.json``."""
    src, out = Path(features_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pl.read_parquet(src / "interactions.parquet")
    pos = table.filter(pl.col("interaction") == 1)
    roles = user_roles(pos, cfg.protocol, cfg.holdout, cfg.cold_valid, cfg.seed, max(cfg.ks))
    write_parquet(roles, out / ROLES_FILE)
    train_users = roles.filter(pl.col("role") == "train").select("uidx")
    train = table.join(train_users, on="uidx", how="semi")
    rows = train.filter(pl.col("interaction") == 1)["row"].unique().sort().to_numpy()
    rng = np.random.default_rng(seed)
    valid_rows = rows[rng.permutation(rows.size)[: round(valid_fraction * rows.size)]]
    is_valid = pl.col("row").is_in(pl.Series(valid_rows).implode())
    parts = {
        "train": train.filter(~is_valid),
        "valid": train.filter(is_valid),
        "test": table.join(roles.filter(pl.col("role") == "test"), on="uidx", how="semi"),
    }
    report = {"strategy": f"meta:{cfg.protocol}", "seed": cfg.seed, "parts": {}, "roles": {}}
    for name, part in parts.items():
        write_parquet(part.drop("role", strict=False), out / f"{name}.parquet")
        report["parts"][name] = {"ratings": int((part["interaction"] == 1).sum()),
                                 "users": part["uidx"].n_unique()}  # fmt: skip
    for role in ("train", "cold_valid", "test"):
        report["roles"][role] = int((roles["role"] == role).sum())
    tr = parts["train"].filter(pl.col("interaction") == 1)
    implicit = tr.group_by("uidx").agg(pl.col("iidx").sort().alias("items")).sort("uidx")
    write_parquet(implicit, out / "train_user_items.parquet")
    write_json(report, out / "report.json")
    return report


def load_cold_data(features_dir: str | Path, split_dir: str | Path, cfg: MetaConfig) -> ColdData:
    """Ratings, roles and lookups of a features folder and a cold-start split folder."""
    fdir = Path(features_dir)
    spec = json.loads((fdir / RunLayout.SPEC).read_text())
    inter = pl.read_parquet(fdir / "interactions.parquet")
    ratings = inter.filter(pl.col("interaction") == 1).select(COLUMNS)
    users = pl.read_parquet(fdir / "user_features.parquet").sort("uidx")
    cats = torch.from_numpy(users.select(USER_CATEGORICALS).to_numpy().astype(np.int64))
    roles = pl.read_parquet(Path(split_dir) / ROLES_FILE)
    like = spec.get("like_threshold", 4.0)
    valid = Path(split_dir) / "valid.parquet"
    unseen = None
    if valid.exists():
        rows = pl.read_parquet(valid, columns=["row", "interaction"])
        unseen = np.sort(rows.filter(pl.col("interaction") == 1)["row"].unique().to_numpy())
        unseen = unseen if unseen.size else None  # an empty validation part: no unseen ratings
    scale = tuple(spec["rating_scale"])
    ids = users["user_id"].to_list()
    return ColdData(ratings, roles, cats, spec["n_items"], scale, float(like), cfg, unseen, ids)
