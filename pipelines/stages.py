"""The stages of the main pipeline and their wiring:
ingest -> features -> split -> train -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.plots import learning_curves, plot_weights, weights_move
from pipelines.runner import Pipeline, Stage, StageContext
from recsys_mtl.build import check_device
from recsys_mtl.config import RunConfig
from recsys_mtl.io import atomic_path, paths_digest, write_json
from recsys_mtl.layout import RunLayout

__all__ = ["DATA_STAGES", "build_pipeline", "data_content", "data_pipeline"]


def data_content(cfg: RunConfig) -> dict[str, str]:
    """``{"data.path": digest}`` of the files a run reads (none for synthetic data): the ingest
    stage's fingerprint covers their content, not their path."""
    if cfg.data.format == "synthetic":
        return {}
    # deferred: the layouts read with polars
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
    # deferred: ingest (polars), when the stage runs
    from recsys_mtl.data.ingest import ingest

    report = ingest(
        ctx.config.data,
        ctx.out_dir,
        max_share=ctx.config.data.max_quarantine_share,
        keep_rejected=ctx.run_dir / "ingest.quarantine.parquet",
    ).report
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
    # deferred: the features (polars), when the stage runs
    from recsys_mtl.build import check_like_threshold
    from recsys_mtl.data.features import build_features

    cfg = ctx.config
    report = ctx.input(INGEST.out("report.json"))
    scale = json.loads(report.read_text())["rating_scale"]  # the log's (auto, or its layout's)
    check_like_threshold(cfg.tasks, cfg.features.like_threshold, scale, cfg.meta is not None)
    spec = build_features(
        report.parent,
        ctx.config.features,
        ctx.out_dir,
        memory_mb=ctx.config.data.memory_mb,
    )
    return {"metrics": {k: v for k, v in spec["stats"].items()}}


def _split(ctx: StageContext) -> dict[str, Any]:
    # deferred: the splitters (polars), when the stage runs
    from recsys_mtl.data.splits import split_dataset

    ingest_report = json.loads(ctx.input(INGEST.out("report.json")).read_text())
    report = split_dataset(
        ctx.input(FEATURES.out(RunLayout.SPEC)).parent,
        ctx.config.split,
        ctx.out_dir,
        data_cfg=ctx.config.data,
        layout_kind=ingest_report["layout"],
    )
    metrics = {f"{p}_ratings": v["ratings"] for p, v in report["parts"].items()}
    return {"metrics": metrics}


def _train(ctx: StageContext) -> dict[str, Any]:
    # deferred: torch and the trainer, when the stage runs
    import torch

    from recsys_mtl.train.callbacks import ProgressCallback, TrackerCallback
    from recsys_mtl.train.recipe import train_ranker

    cfg = ctx.config
    trained = train_ranker(
        cfg,
        ctx.input(FEATURES.out(RunLayout.SPEC)).parent,
        ctx.input(SPLIT.out("train.parquet")).parent,
        ctx.checkpoint_dir,
        callbacks=[TrackerCallback(ctx.tracker), ProgressCallback(), *ctx.callbacks],
        refit_callbacks=[TrackerCallback(ctx.tracker, "refit/"), ProgressCallback("refit ")],
    )
    with atomic_path(ctx.output(RunLayout.MODEL)) as tmp:
        torch.save(trained.model.state_dict(), tmp)
    selected = None
    if trained.selected is not None:  # the model chosen on validation, before the refit
        selected = RunLayout.SELECTED
        with atomic_path(ctx.output(selected)) as tmp:
            torch.save(trained.selected.state_dict(), tmp)
    params = trained.model.cfg.model_dump(mode="json")
    meta = {"name": cfg.model.name, "params": params, "tasks": cfg.tasks, "selected": selected}
    write_json(meta, ctx.output(RunLayout.MODEL_META))
    ctx.tracker.log_artifacts(
        [ctx.output(RunLayout.MODEL), ctx.output(RunLayout.MODEL_META)], "model"
    )
    if "train/fit" in trained.metrics:  # closed form: one value per sweep
        for h in trained.history:
            ctx.tracker.log_metrics({"fit/train": h["train/fit"]}, step=int(h["epoch"]))
    else:
        curves = learning_curves(trained.history, cfg.tasks, ctx.out_dir / "learning_curves.svg")
        ctx.tracker.log_artifacts([curves] if curves else [])
        if len(cfg.tasks) > 1 and weights_move(trained.history, cfg.tasks):
            plot = plot_weights(
                trained.history, cfg.tasks, ctx.out_dir / "weights.png", cfg.weighting.name
            )
            ctx.tracker.log_artifacts([plot])
    return {"metrics": trained.metrics, **trained.details}


def _evaluate(ctx: StageContext) -> dict[str, Any]:
    # deferred: the finished run and the evaluation (torch), when the stage runs
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train.evaluate import evaluate_run

    device = check_device(ctx.config.train.device)
    metrics = evaluate_run(load_run(ctx.run_dir, device), ctx.config.evaluate, device)
    write_json(metrics, ctx.output("metrics.json"))
    return {"metrics": metrics}


# The library code each stage runs: editing it reruns the stage (its fingerprint covers it).
DATA_CODE = ("recsys_mtl.data", "recsys_mtl.config", "recsys_mtl.io")
MODEL_CODE = (
    *DATA_CODE,
    "recsys_mtl.build",
    "recsys_mtl.metrics",
    "recsys_mtl.models",
    "recsys_mtl.runs.load",
    "recsys_mtl.runs.topk",
    "recsys_mtl.train",
    "recsys_mtl.weighting",
)
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
    content_keys=data_content,
    code=DATA_CODE,
)
FEATURES = Stage(
    RunLayout.FEATURES,
    _features,
    reads=("features", "data.memory_mb"),  # the partitions negatives are drawn in
    inputs=INGEST.outs("interactions.parquet", "users.parquet", "items.parquet", "report.json"),
    outputs=(
        "interactions.parquet",
        "user_features.parquet",
        "item_features.parquet",
        RunLayout.SPEC,
    ),
    code=DATA_CODE,
)
SPLIT = Stage(
    RunLayout.SPLIT,
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
    code=DATA_CODE,
)
TRAIN = Stage(
    RunLayout.TRAIN,
    _train,
    reads=("model", "tasks", "train", "weighting"),
    inputs=(
        *FEATURES.outs("user_features.parquet", "item_features.parquet", RunLayout.SPEC),
        *SPLIT.outs("train.parquet", "valid.parquet", "train_user_items.parquet"),
    ),
    outputs=(RunLayout.MODEL, RunLayout.MODEL_META),
    optional=(RunLayout.SELECTED,),
    code=MODEL_CODE,
)
EVALUATE = Stage(
    "evaluate",
    _evaluate,
    reads=("tasks", "evaluate"),
    inputs=(*TRAIN.outs(), *FEATURES.outs(), *SPLIT.outs()),
    outputs=("metrics.json",),
    code=MODEL_CODE,
)


def build_pipeline() -> Pipeline:
    return Pipeline([INGEST, FEATURES, SPLIT, TRAIN, EVALUATE])


def data_pipeline() -> Pipeline:
    """The data stages alone (a tuning study runs them once for all its trials)."""
    return Pipeline([INGEST, FEATURES, SPLIT])


DATA_STAGES = ("ingest", "features", "split")
