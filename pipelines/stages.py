"""The stages of the main pipeline and their wiring: ingest -> features -> split -> train -> evaluate."""

from __future__ import annotations

import json
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


def validate_model(cfg: RunConfig) -> tuple[type, Any]:
    """The ranker class and its validated params; a bad name, param or task is a UserError."""
    from recsys_mtl.models import RANKERS

    cls = RANKERS.get(cfg.model.name, "model.name")
    try:
        params = cls.config_class.model_validate(cfg.model.params)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(["model.params", *map(str, err["loc"])])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{key}: {msg} (ranker {cfg.model.name!r})") from e
    unsupported = [t for t in cfg.tasks if t not in cls.tasks]
    if unsupported:
        raise UserError(
            f"tasks: ranker {cfg.model.name!r} serves {list(cls.tasks)}, not {unsupported}"
        )
    return cls, params


def _load_positives(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path).filter(pl.col("interaction") == 1)


def _tensors(df: pl.DataFrame) -> tuple[Any, Any, Any]:
    import torch

    return (
        torch.tensor(df["uidx"].cast(pl.Int64).to_numpy()),
        torch.tensor(df["iidx"].cast(pl.Int64).to_numpy()),
        torch.tensor(df["rating"].cast(pl.Float64).to_numpy()),
    )


def _train(ctx: StageContext) -> dict[str, Any]:
    import torch

    cfg = ctx.config
    cls, params = validate_model(cfg)
    spec = json.loads(ctx.input(FEATURES.out("spec.json")).read_text())
    torch.manual_seed(cfg.train.seed)
    model = cls(params, spec["n_users"], spec["n_items"], tuple(spec["rating_scale"]))
    train = _load_positives(ctx.input(SPLIT.out("train.parquet")))
    history = model.fit(*_tensors(train), sweeps=cfg.train.epochs)
    for step, value in enumerate(history):
        ctx.tracker.log_metrics({"train/rating/rmse": value}, step=step)
    with atomic_path(ctx.output("model.pt")) as tmp:
        torch.save(model.state_dict(), tmp)
    meta = {
        "name": cfg.model.name,
        "params": params.model_dump(mode="json"),
        "n_users": spec["n_users"],
        "n_items": spec["n_items"],
        "rating_scale": spec["rating_scale"],
        "tasks": cfg.tasks,
    }
    write_json(meta, ctx.output("model.json"))
    return {"metrics": {"train/rating/rmse": history[-1]}}


def _evaluate(ctx: StageContext) -> dict[str, Any]:
    import torch

    from recsys_mtl.metrics import mae, rmse
    from recsys_mtl.models import RANKERS

    meta = json.loads(ctx.input(TRAIN.out("model.json")).read_text())
    cls = RANKERS.get(meta["name"], "model.name")
    model = cls(
        cls.config_class.model_validate(meta["params"]),
        meta["n_users"],
        meta["n_items"],
        tuple(meta["rating_scale"]),
    )
    state = torch.load(ctx.input(TRAIN.out("model.pt")), weights_only=True)
    model.load_state_dict(state)
    split_dir = ctx.input(SPLIT.out("report.json")).parent
    support = split_dir / "support.parquet"
    if support.exists():  # cold-start users: their biases come from the support ratings only
        model.adapt_users(*_tensors(_load_positives(support)))
    metrics: dict[str, float] = {}
    for part, prefix in (("test", ""), ("valid", "valid/")):
        df = _load_positives(split_dir / f"{part}.parquet")
        if df.height == 0:
            continue
        users, items, target = _tensors(df)
        with torch.no_grad():
            pred = model(users, items)["rating"]
        metrics[f"{prefix}rating/rmse"] = rmse(pred, target).item()
        metrics[f"{prefix}rating/mae"] = mae(pred, target).item()
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
    inputs=tuple(
        INGEST.out(n)
        for n in ("interactions.parquet", "users.parquet", "items.parquet", "report.json")
    ),
    outputs=("interactions.parquet", "user_features.parquet", "item_features.parquet", "spec.json"),
)
SPLIT = Stage(
    "split",
    _split,
    reads=("split",),
    inputs=(
        INGEST.out("report.json"),
        *(
            FEATURES.out(n)
            for n in (
                "interactions.parquet",
                "user_features.parquet",
                "item_features.parquet",
                "spec.json",
            )
        ),
    ),
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
    reads=("model", "tasks", "train"),
    inputs=(FEATURES.out("spec.json"), SPLIT.out("train.parquet")),
    outputs=("model.pt", "model.json"),
)
EVALUATE = Stage(
    "evaluate",
    _evaluate,
    reads=("tasks",),
    inputs=(
        TRAIN.out("model.json"),
        TRAIN.out("model.pt"),
        *(SPLIT.out(n) for n in ("valid.parquet", "test.parquet", "report.json")),
    ),
    outputs=("metrics.json",),
)


def build_pipeline() -> Pipeline:
    return Pipeline([INGEST, FEATURES, SPLIT, TRAIN, EVALUATE])
