"""The cold-start pipeline (a config with a ``meta:`` section):

    ingest -> features -> split (user roles) -> train (population ranker) -> meta_train -> coldstart

``split`` holds out users (``meta.holdout``) and a cold validation share, and writes a split
folder of the training users only, so the population ranker (the ``train`` stage, unchanged)
never sees a held-out or cold-validation user. ``meta_train`` trains every learner of
``meta.learners`` over training users as tasks (checkpointed, resumable) and chooses the
fold-in floor's step count on the cold validation users; ``coldstart`` evaluates every floor
and learner per K on the held-out users and writes ``coldstart.json`` and ``mae_vs_k.png``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import ValidationError

from pipelines.console import table
from pipelines.plots import plot_mae_vs_k
from pipelines.runner import Pipeline, Stage, StageContext
from pipelines.stages import DATA_CODE, FEATURES, INGEST, MODEL_CODE, SPLIT, TRAIN
from recsys_mtl.build import build_weighting
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import load_tensors, write_json
from recsys_mtl.layout import RunLayout

ENSEMBLE = "ensemble"  # meta.learners.ensemble.ENSEMBLE (not imported here: lazy imports)

__all__ = ["coldstart_pipeline", "coldstart_report", "validate_meta"]

META_CODE = (*MODEL_CODE, "meta")
FLOORS = ("global_mean", "item_bias", "item_bias_group", "support_mean", "ridge", "ridge_steps",
          "ridge_median", "population", "ranker_ridge", "fold_in")  # fmt: skip
RESERVED = ("served", "demographic_ridge")  # names of the report that are not floors
ITEMS = "items.json"  # the four MeLU states with items held out (coldstart/)
OFFSETS = "rater_offsets.pt"  # recsys_mtl.runs.bundle.RATER_OFFSETS: a support rule's raters


def validate_meta(cfg: RunConfig) -> None:
    """Everything about ``meta:`` checkable before a stage runs (names, settings, tasks)."""
    meta = cfg.meta
    if meta is None:
        return
    # deferred: the learners' package (torch), only for a config with a meta: section
    from meta.learners import learner_params

    if cfg.data.columns.rating is None:
        raise UserError("meta: cold start adapts from ratings; data.columns.rating is none")
    if "rating" not in cfg.tasks:
        raise UserError("tasks: the cold-start protocol needs the 'rating' task")
    if build_weighting(cfg).needs_gradients:
        raise UserError(
            f"weighting.name: {cfg.weighting.name!r} combines gradients; meta-learning's inner "
            "and outer losses need a loss-based weighting (static, equal, uw, dwa, rlw, ...)"
        )
    if cfg.train.refit:
        raise UserError(
            "train.refit: not available with meta (the population ranker's validation part "
            "is the meta-training query set; a refit would train on it)"
        )
    labels: set[str] = set()
    for n, spec in enumerate(meta.learners):
        label = spec.label or spec.name
        if spec.name == ENSEMBLE:
            _validate_ensemble(spec, n, labels)
        else:
            learner_params(spec.name, spec.params, f"meta.learners.{n}")
        if label in FLOORS or label in RESERVED:
            raise UserError(
                f"meta.learners.{n}.label: {label!r} is the name of a floor in the report "
                "(set another label)"
            )
        if label in labels:
            raise UserError(f"meta.learners.{n}.label: {label!r} is used twice (set label)")
        labels.add(label)


def _validate_ensemble(spec: Any, n: int, earlier: set[str]) -> None:
    # deferred: the learners' package (torch), as in validate_meta
    from meta.learners import EnsembleParams

    key = f"meta.learners.{n}"
    try:
        params = EnsembleParams.model_validate(spec.params)
    except ValidationError as e:
        err = e.errors()[0]
        dotted = ".".join([f"{key}.params", *map(str, err["loc"])])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{dotted}: {msg} (ensemble)") from e
    missing = [m for m in params.members if m not in earlier]
    if missing:
        raise UserError(
            f"{key}.params.members: {missing} are not labels of learners listed before it "
            f"(earlier: {', '.join(sorted(earlier)) or 'none'})"
        )
    if len(set(params.members)) != len(params.members):
        raise UserError(f"{key}.params.members: a member is listed twice")


def _margin(best: float | None, floor: float | None, lower_is_better: bool) -> str:
    if best is None or floor is None or floor == 0:
        return "-"
    gain = (floor - best) / floor if lower_is_better else (best - floor) / floor
    return f"{100 * gain:+.1f}%"


def coldstart_report(per_k: dict[str, dict[str, dict[str, float]]]) -> str:
    """What a cold-start run prints (``summary.json`` keeps every metric): per K, every
    learner and the best floor by MAE and by NDCG@10, sorted by MAE, and the best learner's
    margins over the best floor (positive = the learner is better)."""
    served = per_k.get("served") or {}
    per_k = {n: v for n, v in per_k.items() if n != "served"}
    ks = sorted({k for m in per_k.values() for k in m}, key=lambda k: (len(k), k))
    cols = [("MAE", "rating/mae"), ("RMSE", "rating/rmse"), ("nDCG@5", "query/ndcg@5"),
            ("top-5 nDCG@5", "query/top_ndcg@5"), ("HR@10", "ranking/hr@10"),
            ("NDCG@10", "ranking/ndcg@10")]  # fmt: skip
    lines = []

    def get(method: str, k: str, metric: str) -> float | None:
        v = per_k[method].get(k, {}).get(metric)
        return v if isinstance(v, int | float) else None

    def best(names: list[str], k: str, metric: str, low: bool) -> str | None:
        have = [n for n in names if get(n, k, metric) is not None]
        return min(have, key=lambda n: get(n, k, metric) * (1 if low else -1)) if have else None

    for k in ks:
        floors = [n for n in per_k if n in FLOORS and k in per_k[n]]
        learners = [n for n in per_k if n not in FLOORS and k in per_k[n]]
        shown = {*learners, *filter(None, [best(floors, k, "rating/mae", True),
                                           best(floors, k, "ranking/ndcg@10", False)])}  # fmt: skip
        rows = sorted(shown, key=lambda n: get(n, k, "rating/mae") or 9.0)
        body = [[n, "floor" if n in FLOORS else "learner",
                 *("-" if get(n, k, m) is None else f"{get(n, k, m):.4f}" for _, m in cols)]
                for n in rows]  # fmt: skip
        label = "support = the rest" if k == "rest" else f"K = {k[1:]}"
        lines += ["", f"cold start, {label} (held-out users):"]
        lines.append(table(["method", "kind", *(c for c, _ in cols)], body, left=2))
        verdict = []
        for name, metric, low in (
            ("MAE", "rating/mae", True),
            ("NDCG@10", "ranking/ndcg@10", False),
        ):
            bl, bf = best(learners, k, metric, low), best(floors, k, metric, low)
            if bl and bf:
                margin = _margin(get(bl, k, metric), get(bf, k, metric), low)
                verdict.append(f"{name}: best learner {bl} vs best floor {bf} {margin}")
        if verdict:
            lines.append("; ".join(verdict))
    first = next(iter(served.values()), None)
    if first:
        lines.append(f"new users are served {first['method']} ({first['kind']}), mean rank "
                     f"{first['mean_rank']:.2f} over RMSE, NDCG@10, HR@10 per K on the cold "
                     "validation users (served.json)")  # fmt: skip
    lines.append('every metric of every method: summary.json ("coldstart") and coldstart.json')
    return "\n".join(lines[1:])


def _split(ctx: StageContext) -> dict[str, Any]:
    from meta.data import write_cold_split  # deferred: the cold-start data, when it runs
    from meta.items import hold_out_items  # deferred: as above

    cfg = ctx.config
    features = ctx.input(FEATURES.out(RunLayout.SPEC)).parent
    report = write_cold_split(features, cfg.meta, cfg.split.valid_fraction, cfg.split.seed,
                              ctx.out_dir)  # fmt: skip
    items = hold_out_items(features, ctx.out_dir, cfg.meta.new_items, max(cfg.meta.item_ks),
                           cfg.meta.seed)  # fmt: skip
    metrics = {f"{r}_users": v for r, v in report["roles"].items()}
    if cfg.meta.new_items:
        metrics.update({f"{r}_items": v for r, v in items.items()})
    return {"metrics": metrics}


def _cold_data(run_dir: Any, cfg: Any) -> tuple[Any, Any, Any]:
    """The run's cold-start data (every rating), the item roles (None where no item is held
    out) and the data without any rating of a held-out item (the user-side protocol's)."""
    # deferred: the cold-start data (torch, polars), when a stage runs
    from meta.data import load_cold_data
    from meta.items import read_item_roles, without_new_items

    data = load_cold_data(run_dir / "features", run_dir / "split", cfg.meta)
    roles = read_item_roles(run_dir / "split")
    return data, roles, without_new_items(data, roles)


def _base(spec: Any, run: Any) -> Any:
    if spec.base == "melu":
        # deferred: MeLU (torch), only for a learner on it
        from meta.melu import MeLU, MeLUConfig

        return MeLU(MeLUConfig(), run.ctx, run.tasks)
    return copy.deepcopy(run.model)


def load_learners(folder: Any, cfg: Any, run: Any, ranker_only: bool = False) -> dict[str, Any]:
    """The learners of ``cfg.meta.learners`` as meta-training saved them under ``folder``
    (``RUN/meta_train``), by label in config order, each ensemble over the learners before it;
    ``ranker_only`` leaves out the ones on another base (MeLU)."""
    # deferred: the learners' package (torch), when learners are loaded
    from meta.learners import load_learner

    learners: dict[str, Any] = {}
    for spec in cfg.meta.learners:
        label = spec.label or spec.name
        if spec.name == ENSEMBLE:
            learners[label] = _ensemble(spec, learners, run.tasks, folder / label)
        elif not ranker_only or spec.base == "ranker":
            learners[label] = load_learner(folder / label, _base(spec, run))
    return learners


def _ensemble(spec: Any, members: dict[str, Any], tasks: list[str], folder: Any = None) -> Any:
    """The ensemble of ``spec`` over the learners ``members`` (its fitted weights loaded from
    ``folder`` when given)."""
    # deferred: the learners' package, when an ensemble is built
    from meta.learners import WEIGHTS_FILE, Ensemble, EnsembleParams

    ens = Ensemble(members, EnsembleParams.model_validate(spec.params), tasks)
    if folder is not None:
        state = load_tensors(folder / WEIGHTS_FILE)
        ens.prepare_for(state)
        ens.load_state_dict(state)
    return ens.eval()


def _meta_train(ctx: StageContext) -> dict[str, Any]:
    # deferred: torch, the learners and meta-training, when the stage runs
    import torch

    from meta.demographic import encoding_of
    from meta.evaluate import choose_fold_in, fit_demographic
    from meta.learners import build_learner, save_learner
    from meta.select import DEMOGRAPHIC
    from meta.train import MetaTrainingError, meta_train
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train.callbacks import ProgressCallback, TrackerCallback
    from recsys_mtl.train.evaluate import ranking_task

    cfg = ctx.config
    run = load_run(ctx.run_dir)
    _, _, data = _cold_data(run.run_dir, cfg)
    (steps, lr), maes = choose_fold_in(run.model, data, run.tasks)
    report: dict[str, Any] = {
        "fold_in": {"steps": steps, "lr": lr, "cold_valid_mae": maes},
        "learners": {},
    }
    metrics: dict[str, float] = {"fold_in/steps": steps, "fold_in/lr": lr}
    trained: dict[str, Any] = {}
    for n, spec in enumerate(cfg.meta.learners):
        label = spec.label or spec.name
        if spec.name == ENSEMBLE:
            ens = _ensemble(spec, trained, run.tasks)
            try:
                fit = ens.fit(data, ranking_task(run.tasks))
            except UserError as e:
                raise UserError(f"meta.learners.{n}.params.rating_map ({label}): {e}") from e
            save_learner(ens, ctx.out_dir / label, {"base": ENSEMBLE, "label": label})
            report["learners"][label] = {"name": ENSEMBLE, "base": ENSEMBLE, "best_epoch": -1,
                                         "epochs": 0, "seconds": 0.0,
                                         "cold_valid_mae": fit["cold_valid_mae"],
                                         "cold_valid_choice": fit}  # fmt: skip
            metrics[f"{label}/cold_valid_mae"] = fit["cold_valid_mae"]
            trained[label] = ens
            continue
        torch.manual_seed(cfg.train.seed)
        learner = build_learner(spec.name, spec.params, _base(spec, run), run.tasks)
        cbs = [TrackerCallback(ctx.tracker, f"{label}/"), ProgressCallback(f"{label} ")]
        try:
            res = meta_train(learner, data, build_weighting(cfg), ctx.checkpoint_dir / label, cbs,
                             seed=cfg.train.seed)  # fmt: skip
        except MetaTrainingError as e:
            raise UserError(f"meta-training {label!r} diverged: {e}") from e
        save_learner(learner, ctx.out_dir / label, {"base": spec.base, "label": label})
        report["learners"][label] = {"name": spec.name, "base": spec.base, "best_epoch": res.best_epoch,
                                     "epochs": res.epochs_run, "seconds": res.seconds,
                                     "cold_valid_mae": res.best_value}  # fmt: skip
        if res.chosen:
            report["learners"][label]["cold_valid_choice"] = res.chosen
        metrics[f"{label}/meta_seconds"] = res.seconds
        metrics[f"{label}/cold_valid_mae"] = res.best_value
        trained[label] = learner
    dem, rmse = fit_demographic(run.model, data, run.ctx.user_cat_vocab,
                                encoding_of(json.loads(run.run_dir.joinpath("features", "spec.json").read_text())))  # fmt: skip
    if dem is not None:
        dem.save(ctx.out_dir / DEMOGRAPHIC)
        report["demographic"] = {"precision": dem.precision, "cold_valid_k0_rmse": rmse}
    write_json(report, ctx.output("learners.json"))
    return {"metrics": metrics}


def _coldstart(ctx: StageContext) -> dict[str, Any]:
    # deferred: the cold-start evaluation (torch, polars), when the stage runs
    from meta.choose import choose_served, variant
    from meta.demographic import DemographicState
    from meta.evaluate import evaluate_coldstart
    from meta.evaluate import table as per_k_table
    from meta.items import items_report
    from meta.items_serve import new_item_rules
    from meta.select import DEMOGRAPHIC
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train.evaluate import ranking_task

    cfg = ctx.config
    run = load_run(ctx.run_dir)
    every, roles, data = _cold_data(run.run_dir, cfg)
    trained = json.loads(ctx.input(META_TRAIN.out("learners.json")).read_text())
    folder = ctx.input(META_TRAIN.out("learners.json")).parent
    learners = load_learners(folder, cfg, run)
    dem = DemographicState.load(folder / DEMOGRAPHIC) if DemographicState.saved(
        folder / DEMOGRAPHIC) else None  # fmt: skip
    choice = (trained["fold_in"]["steps"], trained["fold_in"]["lr"])
    served = choose_served(run.model, data, learners, run.tasks, ranking_task(run.tasks), dem,
                           choice, ctx.out_dir)  # fmt: skip
    measured = dict(learners)
    if served.get("shrink") is not None:  # a shrunk, split or cooc variant won: measure it too
        measured[served["name"]] = variant(learners[served["learner"]], served, ctx.out_dir)
    per_user: dict[str, Any] = {}
    rows = evaluate_coldstart(run.model, data, measured, run.tasks, ranking_task(run.tasks),
                              choice, demographic=dem, per_user=per_user)  # fmt: skip
    for r in rows:
        if r["labels"]["learner"] in trained["learners"]:
            r["metrics"]["meta/seconds"] = trained["learners"][r["labels"]["learner"]]["seconds"]
    write_json({"protocol": cfg.meta.protocol, "rows": rows}, ctx.output("coldstart.json"))
    items, items_flat = items_report(run, every, roles, cfg, served, ctx.output(OFFSETS))
    rules = new_item_rules(items)
    if rules:  # what serving ranks new items by, carried with the served record (and model)
        served["new_items_rank_by"] = rules
    write_json(served, ctx.output(RunLayout.SERVED))
    write_json({"served": served["name"], "per_user": per_user}, ctx.output(RunLayout.PAIRED))
    write_json(items, ctx.output(ITEMS))
    plot = plot_mae_vs_k([r for r in rows if r["labels"]["k"] != 0], ctx.output("mae_vs_k.png"))
    ctx.tracker.log_artifacts([plot, ctx.output("coldstart.json"), ctx.output(RunLayout.SERVED),
                               ctx.output(ITEMS)], "coldstart")  # fmt: skip
    flat = {}
    for r in rows:
        k = r["labels"]["k"]
        for m, v in r["metrics"].items():
            if isinstance(v, float) and v == v and "random" not in m:
                flat[
                    f"coldstart/{r['labels']['learner']}/k{k if k is not None else 'rest'}/{m}"
                ] = v
    flat["coldstart/served/mean_rank"] = served["mean_rank"][served["name"]]
    flat.update(items_flat)
    out = per_k_table(rows)
    out["served"] = served_summary(served, out)
    return {"metrics": flat, "table": out}


def served_summary(served: dict[str, Any], per_k: dict[str, Any]) -> dict[str, Any]:
    """The ``served`` entry of the per-K table of ``summary.json``: per K the served method,
    the rule, its cold-validation figures and ranks (no held-out metric, so that it is never
    read as a method of the table)."""
    name = served["name"]
    out = {}
    for key in per_k.get(name, {}):
        if key == "k0":
            continue
        ranks = {m.split("/", 1)[1]: r for m, r in served["ranks"][name].items()
                 if m.startswith(f"{key}/")}  # fmt: skip
        out[key] = {"method": name, "kind": served["kind"], "rule": served["rule"],
                    "mean_rank": served["mean_rank"][name],
                    "cold_valid": served["cold_valid"][name].get(key, {}),
                    "cold_valid_ranks": ranks}  # fmt: skip
    return out


COLD_SPLIT = Stage(
    "split",
    _split,
    reads=("meta", "split"),
    inputs=(INGEST.out("report.json"), *FEATURES.outs()),
    outputs=(*SPLIT.outputs, "users.parquet", "items.parquet"),
    code=(*DATA_CODE, "meta.data", "meta.protocol", "meta.rows", "meta.items"),
)
META_TRAIN = Stage(
    "meta_train",
    _meta_train,
    reads=("meta", "tasks", "weighting", "train"),
    inputs=(*FEATURES.outs(), *COLD_SPLIT.outs(), *TRAIN.outs()),
    outputs=("learners.json",),
    code=META_CODE,
)
COLDSTART = Stage(
    "coldstart",
    _coldstart,
    reads=("meta", "tasks"),
    inputs=(*FEATURES.outs(), *COLD_SPLIT.outs(), *TRAIN.outs(), *META_TRAIN.outs()),
    outputs=("coldstart.json", "mae_vs_k.png", RunLayout.SERVED, RunLayout.PAIRED, ITEMS),
    optional=(OFFSETS,),
    code=META_CODE,
)


def coldstart_pipeline() -> Pipeline:
    return Pipeline([INGEST, FEATURES, COLD_SPLIT, TRAIN, META_TRAIN, COLDSTART])
