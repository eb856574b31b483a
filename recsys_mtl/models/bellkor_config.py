"""The settings of the BellKor ranker (``model.params`` with ``model.name: bellkor``)."""

from __future__ import annotations

from pydantic import Field

from recsys_mtl.models.base import RankerConfig

__all__ = ["BellKorConfig"]


class BellKorConfig(RankerConfig):
    dim: int = Field(
        64, ge=1, description="latent factors of the user and item factor vectors p_u and q_i"
    )
    implicit: bool = Field(
        True,
        description="SVD++ implicit feedback: the user factors also get the normalized sum of "
        "the implicit vectors y_j of the items the user rated in the training part "
        "(Koren, KDD 2008)",
    )
    implicit_max_items: int | None = Field(
        None,
        ge=1,
        description="with implicit: at most this many items in a user's set N(u), a fixed "
        "pseudo-random subset of the user's training items (the same in training and "
        "scoring); a batch's SVD++ work grows with its users' sets, so a cap keeps the cost "
        "of a training rating the same on logs whose heaviest users rate tens of thousands "
        "of items; null: every item",
    )
    implicit_work_per_row: int | None = Field(
        128,
        ge=1,
        description="with implicit: the SVD++ work of a training step, in set entries per row "
        "of a batch. While every user's set entries number at most this many times the batch "
        "size, each step sums its users' sets exactly; on a larger log the vectors of every "
        "user come from one sparse product recomputed every few steps (as many as keep the "
        "product and its transpose at about this many entries per row), their gradients "
        "summed per user and pushed to the y_j table at the step before the next product and "
        "at the end of each epoch, so an epoch costs in proportion to the log; null: every "
        "step exact (an epoch then costs more than in proportion to the log)",
    )
    time_effects: bool = Field(
        True,
        description="timeSVD++ time effects on the rating task (when rating is one of the "
        "tasks): an item bias per time bin and a user bias drift alpha_u dev_u(t) "
        "(Koren, KDD 2009)",
    )
    user_day_bias: bool = Field(
        True,
        description="with time_effects: a rating bias per (user, day) for the days the user "
        "rated on in the training part (0 on any other day), absorbing a day's rating habits",
    )
    beta: float = Field(
        0.4,
        gt=0.0,
        le=1.0,
        description="exponent of the user drift, dev_u(t) = sign(t - t_u) abs(t - t_u)^beta in "
        "days from the user's mean rating day t_u (0.4 in Koren, KDD 2009)",
    )
    init_std: float = Field(
        0.01,
        gt=0.0,
        description="standard deviation of the normal initialization of the user, item and "
        "SVD++ implicit factor tables (the biases start at 0)",
    )
