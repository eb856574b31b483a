"""The stages of the main pipeline and their wiring: ingest -> features -> split -> train -> evaluate."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from pipelines.runner import Pipeline, Stage, StageContext
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path, paths_digest, write_json

__all__ = ["build_pipeline", "validate_model"]


def _data_content(cfg: RunConfig) -> dict[str, str]:
    if cfg.data.format == "synthetic":
        return {}
    from recsys_mtl.data.grouplens import detect_layout

    layout = detect_layout(Path(str(cfg.data.path)).expanduser(), cfg.data.format)
    return {"data.path": paths_digest(layout.data_files(), layout.root)}


def _split_content(cfg: RunConfig) -> dict[str, str]:
    out = {}
    for key, value in (("split.train", cfg.split.train), ("split.test", cfg.split.test)):
        if value is not None:
            p = Path(value).expanduser()
            out[key] = paths_digest([p], p.parent) if p.is_file() else f"missing:{value}"
    return out


def _ingest(ctx: StageContext) -> dict[str, Any]:
    from recsys_mtl.data.ingest import ingest

    report = ingest(ctx.config.data, ctx.out_dir).report
    inter = report["interactions"]
    data = {
        "dataset": report["dataset"],
        "rows_read": inter["rows_read"],
        "rows_kept": inter["rows_kept"],
        "rows_quarantined": inter["rows_quarantined"],
        "users": report["users"],
        "items": report["items"],
        "genres": len(report["genres"]),
    }
    metrics = {"rows_read": inter["rows_read"], "rows_kept": inter["rows_kept"]}
    return {"data": data, "metrics": metrics, "layout": report["layout"]}


def _features(ctx: StageContext) -> dict[str, Any]:
    from recsys_mtl.data.features import build_features

    spec = build_features(
        ctx.input(INGEST.out("report.json")).parent, ctx.config.features, ctx.out_dir
    )
    return {"metrics": {k: v for k, v in spec["stats"].items()}}


def _split(ctx: StageContext) -> dict[str, Any]:
    from recsys_mtl.data.splits import split_dataset

    ingest_report = json.loads(ctx.input(INGEST.out("report.json")).read_text())
    report = split_dataset(
        ctx.input(FEATURES.out("spec.json")).parent,
        ctx.config.split,
        ctx.out_dir,
        data_cfg=ctx.config.data,
        layout_kind=ingest_report["layout"],
    )
    metrics = {f"{p}_ratings": v["ratings"] for p, v in report["parts"].items()}
    return {"metrics": metrics}


def _params(schema: type, values: dict[str, Any], key: str, what: str) -> Any:
    """``values`` validated by a component's own settings class; errors name the dotted key."""
    try:
        return schema.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        dotted = ".".join([key, *map(str, err["loc"])])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{dotted}: {msg} ({what})") from e


def build_weighting(cfg: RunConfig) -> Any:
    """The configured weighting; a bad name or parameter is a UserError naming the key."""
    from recsys_mtl.weighting import WEIGHTINGS

    cls = WEIGHTINGS.get(cfg.weighting.name, "weighting.name")
    params = _params(
        cls.params_class,
        cfg.weighting.params,
        "weighting.params",
        f"weighting {cfg.weighting.name!r}",
    )
    return cls(cfg.tasks, params, seed=cfg.train.seed, static=cfg.weighting.weights)


def validate_model(cfg: RunConfig) -> tuple[type, Any]:
    """The ranker class and its validated params; a bad name, param or task is a UserError."""
    from recsys_mtl.models import RANKERS

    cls = RANKERS.get(cfg.model.name, "model.name")
    params = _params(
        cls.config_class, cfg.model.params, "model.params", f"ranker {cfg.model.name!r}"
    )
    build_weighting(cfg)
    unsupported = [t for t in cfg.tasks if t not in cls.tasks_supported]
    if unsupported:
        raise UserError(
            f"tasks: ranker {cfg.model.name!r} serves {list(cls.tasks_supported)}, not {unsupported}"
        )
    if cfg.train.refit and getattr(params, "pretrain", False):
        raise UserError(
            "train.refit: not available with model.params.pretrain (refit trains from scratch)"
        )
    return cls, params


def _build_model(
    cfg: RunConfig, features_dir: Path, split_dir: Path, params: Any, cls: type
) -> Any:
    from recsys_mtl.models import load_context

    return cls(params, load_context(features_dir, split_dir), cfg.tasks)


def _train(ctx: StageContext) -> dict[str, Any]:
    import torch

    from recsys_mtl.train.data import load_part, size
    from recsys_mtl.train.trainer import NonFiniteLossError, fit

    cfg = ctx.config
    cls, params = validate_model(cfg)
    features_dir = ctx.input(FEATURES.out("spec.json")).parent
    split_dir = ctx.input(SPLIT.out("train.parquet")).parent
    torch.manual_seed(cfg.train.seed)
    model = _build_model(cfg, features_dir, split_dir, params, cls)
    result: dict[str, Any]
    if cls.closed_form:  # fitted on the observed ratings in closed form
        train = load_part(split_dir / "train.parquet", cfg.tasks, positives_only=True)
        history = model.fit(train["user"], train["item"], train["rating"], sweeps=cfg.train.epochs)
        for step, value in enumerate(history):
            ctx.tracker.log_metrics({"train/fit": value}, step=step)
        result = {"metrics": {"train/fit": history[-1]}}
    else:
        train = load_part(split_dir / "train.parquet", cfg.tasks)
        valid = load_part(split_dir / "valid.parquet", cfg.tasks)
        weighting = build_weighting(cfg)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            ctx.tracker.log_metrics(metrics, step=epoch)
            shown = ", ".join(
                f"{k}={v:.4f}"
                for k, v in metrics.items()
                if k.endswith("loss") or k == "valid/objective"
            )
            print(f"    epoch {epoch}: {shown}", file=sys.stderr, flush=True)

        try:
            pretrained = None
            if getattr(params, "pretrain", False):
                pretrained = _pretrain_neumf(
                    model, params, train, valid, cfg, weighting, ctx.checkpoint_dir
                )
            res = fit(
                model, train, valid, cfg.tasks, cfg.train, weighting, ctx.checkpoint_dir, on_epoch
            )
            refit = None
            if cfg.train.refit and size(valid) > 0:
                refit = res.best_epoch + 1
                model = _refit(
                    model,
                    refit,
                    train,
                    valid,
                    cfg,
                    ctx,
                    lambda e, m: on_epoch(e, {f"refit/{k}": v for k, v in m.items()}),
                )
        except NonFiniteLossError as e:
            raise UserError(f"training diverged: {e} (lower train.lr or check the data)") from e
        result = {
            "metrics": {
                "train/epochs": res.epochs_run,
                "train/best_epoch": res.best_epoch,
                "train/seconds": res.seconds,
                "train/refit_epochs": refit or 0,
                "train/samples_per_s": res.samples_per_s,
                "train/seconds_per_epoch": res.seconds
                / max(1, res.epochs_run - (res.resumed_from or 0)),
            },
            "stopped_early": res.stopped_early,
            "refit_epochs": refit,
            "pretrained": pretrained,
            "resumed_from_epoch": res.resumed_from,
        }
    with atomic_path(ctx.output("model.pt")) as tmp:
        torch.save(model.state_dict(), tmp)
    meta = {"name": cfg.model.name, "params": params.model_dump(mode="json"), "tasks": cfg.tasks}
    write_json(meta, ctx.output("model.json"))
    ctx.tracker.log_artifacts([ctx.output("model.pt"), ctx.output("model.json")], "model")
    if not cls.closed_form and len(cfg.tasks) > 1:
        plot = _plot_weights(
            res.history, cfg.tasks, ctx.out_dir / "weights.png", cfg.weighting.name
        )
        ctx.tracker.log_artifacts([plot])
    return result


def _refit(
    model: Any,
    epochs: int,
    train: Any,
    valid: Any,
    cfg: RunConfig,
    ctx: StageContext,
    on_epoch: Any = None,
) -> Any:
    """Train a fresh model (same seed) on train + valid for the epochs early stopping chose.

    The validation part has done its job (choosing the epoch count); the final model also
    learns from it. Its checkpoints sit under ``refit/`` beside the first fit's, so a killed
    run resumes here too.
    """
    import torch

    from recsys_mtl.train.data import concat
    from recsys_mtl.train.trainer import fit

    print(f"    refit on train + valid for {epochs} epochs", file=sys.stderr, flush=True)
    torch.manual_seed(cfg.train.seed)
    fresh = type(model)(model.cfg, model.ctx, cfg.tasks)
    settings = cfg.train.model_copy(update={"epochs": epochs, "patience": epochs + 1})
    fit(
        fresh,
        concat(train, valid),
        None,
        cfg.tasks,
        settings,
        build_weighting(cfg),
        ctx.checkpoint_dir / "refit",
        on_epoch,
    )
    return fresh


def _plot_weights(
    history: list[dict[str, float]], tasks: list[str], path: Path, method: str
) -> Path:
    """The task weights per epoch as a PNG (the MLflow artifact ``weights.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    for t in tasks:
        ax.plot(epochs, [h[f"weight/{t}"] for h in history], marker="o", label=t)
    ax.set(xlabel="epoch", ylabel="mean task weight", title=f"task weights ({method})")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _pretrain_neumf(
    model: Any, params: Any, train: Any, valid: Any, cfg: RunConfig, weighting: Any, ckpt: Path
) -> dict[str, int]:
    """He et al.'s pre-training: fit a GMF and an MLP with the same budget, then join them.

    Returns the epochs each part ran. Their checkpoints sit beside the NeuMF one, so a killed
    run resumes inside pre-training too.
    """
    import torch

    from recsys_mtl.models.ncf import GMF, MLP, NCFConfig
    from recsys_mtl.train.trainer import fit

    base = NCFConfig(**params.model_dump(include=set(NCFConfig.model_fields)))
    parts, epochs = [], {}
    for cls in (GMF, MLP):
        torch.manual_seed(cfg.train.seed)
        part = cls(base, model.ctx, cfg.tasks)
        print(f"    pre-training {cls.__name__}", file=sys.stderr, flush=True)
        res = fit(part, train, valid, cfg.tasks, cfg.train, weighting, ckpt / cls.__name__.lower())
        parts.append(part)
        epochs[cls.__name__.lower()] = res.epochs_run
    model.load_pretrained(*parts, alpha=params.pretrain_alpha)
    return epochs


def _evaluate(ctx: StageContext) -> dict[str, Any]:
    import numpy as np
    import torch

    from recsys_mtl.models import RANKERS
    from recsys_mtl.train.data import load_part
    from recsys_mtl.train.evaluate import pointwise_metrics, ranking_metrics

    cfg = ctx.config
    meta = json.loads(ctx.input(TRAIN.out("model.json")).read_text())
    cls = RANKERS.get(meta["name"], "model.name")
    features_dir = ctx.input(FEATURES.out("spec.json")).parent
    split_dir = ctx.input(SPLIT.out("report.json")).parent
    model = _build_model(
        cfg, features_dir, split_dir, cls.config_class.model_validate(meta["params"]), cls
    )
    model.load_state_dict(torch.load(ctx.input(TRAIN.out("model.pt")), weights_only=True))
    model.eval()
    tasks = meta["tasks"]
    scale = model.ctx.rating_scale
    support = split_dir / "support.parquet"
    if support.exists() and hasattr(model, "adapt_users"):
        # cold-start users: the bias baseline fits their biases from the support ratings alone
        sup = load_part(support, tasks, positives_only=True)
        model.adapt_users(sup["user"], sup["item"], sup["rating"])
    metrics: dict[str, float] = {}
    test = load_part(split_dir / "test.parquet", tasks, positives_only=False)
    metrics.update(pointwise_metrics(model, test, tasks, scale))
    valid = load_part(split_dir / "valid.parquet", tasks, positives_only=False)
    if valid["user"].numel():
        metrics.update(
            {f"valid/{k}": v for k, v in pointwise_metrics(model, valid, tasks, scale).items()}
        )
    # every ranker is ranked, by its interaction, like or rating output
    table = pl.read_parquet(
        features_dir / "interactions.parquet", columns=["uidx", "iidx", "interaction"]
    )
    n_items = model.ctx.n_items
    pos = table.filter(pl.col("interaction") == 1)
    rated = np.sort(pos["uidx"].cast(pl.Int64).to_numpy() * n_items + pos["iidx"].to_numpy())
    seen_parts = [pl.read_parquet(split_dir / f"{p}.parquet") for p in ("train", "valid")]
    seen = pl.concat(seen_parts).filter(pl.col("interaction") == 1)
    test_pos = {k: v[test["interaction"] > 0.5] for k, v in test.items()}
    e = cfg.evaluate
    metrics.update(
        ranking_metrics(
            model, test_pos, (seen["uidx"].cast(pl.Int64).to_numpy(), seen["iidx"].cast(pl.Int64).to_numpy()),
            rated, n_items, tasks, k=e.k, sampled_negatives=e.sampled_negatives, seed=e.seed, full=e.full_ranking,
        )
    )  # fmt: skip
    write_json(metrics, ctx.output("metrics.json"))
    return {"metrics": metrics}


INGEST = Stage(
    "ingest",
    _ingest,
    reads=("data",),
    outputs=(
        "interactions.parquet",
        "users.parquet",
        "items.parquet",
        "quarantine.parquet",
        "report.json",
    ),
    content_keys=_data_content,
)
FEATURES = Stage(
    "features",
    _features,
    reads=("features",),
    inputs=INGEST.outs("interactions.parquet", "users.parquet", "items.parquet", "report.json"),
    outputs=("interactions.parquet", "user_features.parquet", "item_features.parquet", "spec.json"),
)
SPLIT = Stage(
    "split",
    _split,
    reads=("split",),
    inputs=(INGEST.out("report.json"), *FEATURES.outs()),
    outputs=(
        "train.parquet",
        "valid.parquet",
        "test.parquet",
        "train_user_items.parquet",
        "report.json",
    ),
    content_keys=_split_content,
)
TRAIN = Stage(
    "train",
    _train,
    reads=("model", "tasks", "train", "weighting"),
    inputs=(
        *FEATURES.outs("user_features.parquet", "item_features.parquet", "spec.json"),
        *SPLIT.outs("train.parquet", "valid.parquet", "train_user_items.parquet"),
    ),
    outputs=("model.pt", "model.json"),
)
EVALUATE = Stage(
    "evaluate",
    _evaluate,
    reads=("tasks", "evaluate"),
    inputs=(*TRAIN.outs(), *FEATURES.outs(), *SPLIT.outs()),
    outputs=("metrics.json",),
)


def build_pipeline() -> Pipeline:
    return Pipeline([INGEST, FEATURES, SPLIT, TRAIN, EVALUATE])
