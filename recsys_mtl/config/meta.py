"""The ``meta:`` section: cold-start meta-learning (the protocol, the floors, the learners)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from recsys_mtl.config.base import Frozen

__all__ = ["MetaConfig", "MetaLearnerConfig"]


class MetaLearnerConfig(Frozen):
    """One cold-start learner of ``meta.learners`` (its ``params`` validated by the learner)."""

    name: str = Field(
        description="a meta-learner registry name, e.g. maml, fomaml, reptile, meta_sgd, "
        "metric, blackbox, ridge, matching, or ensemble (a blend of learners listed before it); "
        "an unknown name exits 2 listing the known ones"
    )
    label: str | None = Field(
        None,
        description="its name in reports and in ensemble members, unique and not a floor's name; "
        "null: name",
    )
    base: Literal["ranker", "melu"] = Field(
        "ranker",
        description="what it adapts: ranker (the pipeline's population ranker) or melu (a "
        "MeLU-style model trained here)",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the learner's own settings (e.g. steps, inner_lr, adapt), validated by the "
        "learner named in name; see the README's Learners section",
    )


class MetaConfig(Frozen):
    """Cold-start meta-learning (``meta:``): the protocol, the floors and the learners. A config
    with this section runs the cold-start pipeline (meta_train and coldstart stages)."""

    protocol: Literal["first_k", "recbole", "melu"] = Field(
        "first_k",
        description="first_k (held-out users' first K ratings are the support set), recbole "
        "(RecBole-MetaRec: users with 13 to 100 ratings split 8:1:1, query = 10 random ratings, "
        "support = the rest) or melu (the same rule for MeLU's ML-1M protocol)",
    )
    holdout: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="first_k: seeded share of all users held out (drawn among those with more "
        "than max(meta.ks) ratings; never seen by meta-training or the population ranker)",
    )
    cold_valid: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="first_k: share of the other users kept as cold validation users (early "
        "stopping, the fold-in floor's grid, ensemble weights)",
    )
    seed: int = Field(0, description="seed of the user roles and the support / query draws")
    ks: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [5, 10, 20],
        min_length=1,
        description="support sizes K evaluated (distinct; kept sorted); meta-training draws one "
        "per user and epoch",
    )
    support: Literal["time", "random"] = Field(
        "time", description="a held-out user's support set: first K ratings by time, or K random"
    )
    shrinkage: float = Field(
        15.0,
        ge=0.0,
        description="the ridge floors' user-offset shrinkage, in pseudo-ratings: "
        "sum(r - mu - b_i) / (n + shrinkage)",
    )
    epochs: int = Field(20, ge=1, le=100_000, description="maximum meta-training epochs")
    batch_users: int = Field(32, ge=1, description="user tasks per meta-batch")
    lr: float = Field(
        1e-3, gt=0.0, description="outer learning rate (Adam; Reptile: its epsilon, with SGD)"
    )
    patience: int | None = Field(
        3,
        ge=1,
        description="epochs without cold-validation MAE gain (middle K) before stopping; null: "
        "every epoch",
    )
    max_query: int = Field(64, ge=1, description="meta-training: query ratings kept per user")
    train_query: Literal["unseen", "rest"] = Field(
        "unseen",
        description="meta-training query sets: the ratings the population ranker never "
        "trained on (its validation part), or the rest of the user's ratings",
    )
    negatives: int = Field(
        1, ge=0, le=100, description="meta-training: sampled unrated items per rating"
    )
    outer_clip: float | None = Field(
        10.0, gt=0.0, description="maximum norm of the outer gradient; null: no clipping"
    )
    mode: Literal["vmap", "loop"] = Field(
        "vmap",
        description="per-user inner loops mapped by torch.func.vmap, or a plain loop over users "
        "(same meta-gradient)",
    )
    fold_in_steps: list[Annotated[int, Field(ge=0, le=10_000)]] = Field(
        default_factory=lambda: [0, 5, 10, 20, 50, 100],
        min_length=1,
        description="fold-in floor: Adam step counts tried on the cold validation users",
    )
    fold_in_lrs: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: [0.003, 0.01, 0.03],
        min_length=1,
        description="fold-in floor: Adam learning rates tried on the cold validation users",
    )
    new_items: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="first_k: share of the catalog held out as new items, the newest by release "
        "year (ties: first rating in the log); their ratings never reach the population ranker "
        "or the user-side protocol, and the coldstart stage reports the four MeLU states "
        "(warm, new user, new item, new user on new item) in coldstart/items.json; 0: off",
    )
    item_ks: list[Annotated[int, Field(ge=0, le=1000)]] = Field(
        default_factory=lambda: [0, 5, 10],
        min_length=1,
        description="with new_items: support sizes per new item (its first K ratings by "
        "training users; 0: side features only); distinct, kept sorted",
    )
    learners: list[MetaLearnerConfig] = Field(
        default_factory=list,
        description="the learners meta-trained and evaluated, in order; []: the floors only",
    )

    @field_validator("ks")
    @classmethod
    def _distinct_ks(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"ks repeat a value: {v}")
        return sorted(v)

    @field_validator("item_ks")
    @classmethod
    def _distinct_item_ks(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"item_ks repeat a value: {v}")
        return sorted(v)
