"""A finished run as an MLflow model (pyfunc flavor), logged, registered and opened again.

:func:`save_pyfunc` wraps a run's bundle (:mod:`recsys_mtl.runs.bundle`) as an MLflow model
from code (``recsys_mtl/tracking/pyfunc_entry.py``: no cloudpickle) with a signature;
:func:`log_pyfunc` logs it as an MLflow ``LoggedModel`` of the pipeline's run; :func:`register`
puts it in the model registry, with a description, tags and aliases
(:mod:`recsys_mtl.tracking.versions`). :func:`load_source` opens a run directory, a bundle or an
MLflow model URI (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/ID/model``). MLflow
itself is imported inside the functions that use it (it takes over a second to import).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl

from recsys_mtl import __version__
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path
from recsys_mtl.layout import is_study_folder
from recsys_mtl.runs.bundle import BUNDLE_FORMAT, export_bundle, is_bundle, load_bundle, run_info
from recsys_mtl.runs.load import load_run
from recsys_mtl.tracking.names import check_store, default_tracking_uri
from recsys_mtl.tracking.versions import (
    check_alias,
    check_model_name,
    check_tag,
    default_description,
    version_tags,
)

__all__ = [
    "BUNDLE_DIR",
    "load_source",
    "log_pyfunc",
    "register",
    "save_pyfunc",
]

BUNDLE_DIR = "bundle"  # the bundle's folder inside the MLflow model
MODEL_NAME = "model"  # the LoggedModel's name: runs:/<run_id>/model
ENTRY = Path(__file__).with_name("pyfunc_entry.py")


def load_source(source: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A run directory, a bundle folder, an MLflow model folder or an MLflow model URI
    (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/model``,
    ``models:/MODEL_ID``) as ``(LoadedRun, info)``; ``info`` has the run id, model version
    (``NAME/VERSION``: an alias is resolved to the version it points at, once) and config hash."""
    if "://" not in source and ":/" not in source:
        path = Path(source)
        if is_bundle(path / "artifacts" / BUNDLE_DIR):  # an MLflow model folder
            path = path / "artifacts" / BUNDLE_DIR
        if is_bundle(path):
            return load_bundle(path, device), json.loads((path / "info.json").read_text())
        if not path.exists():
            raise UserError(f"{source}: no such run directory or model")
        if is_study_folder(path):
            raise UserError(f"{source}: a tuning study folder, not a run; score one of its "
                            f"trials ({path / 'trials' / 'NNNN'}) or the version "
                            "`tune --register NAME` registered")  # fmt: skip
        return load_run(path, device), run_info(path)
    check_store(default_tracking_uri())  # a dead server: one line now, not minutes of retries
    uri, model_version = _pin_version(source)
    local = _download(uri, source)
    bundle = local / "artifacts" / BUNDLE_DIR
    if not is_bundle(bundle):
        raise UserError(f"{source}: not a recsys-mtl model (no {BUNDLE_DIR}/ in its artifacts)")
    info = json.loads((bundle / "info.json").read_text())
    if model_version:
        info["model_version"] = model_version
    return load_bundle(bundle, device), info


def _pin_version(uri: str) -> tuple[str, str | None]:
    """``(uri, "NAME/VERSION")`` of a registry URI, with ``models:/NAME@ALIAS`` replaced by the
    version the alias points at now (so the model read and the version recorded agree);
    ``(uri, None)`` for any other URI."""
    if not uri.startswith("models:/"):
        return uri, None
    path = uri.removeprefix("models:/")
    if "/" in path:
        name, _, version = path.partition("/")
        return uri, f"{name}/{version}" if version.isdigit() else None
    if "@" not in path:
        return uri, None  # models:/MODEL_ID, a logged model
    from mlflow import MlflowClient  # deferred: mlflow (over a second to import)
    from mlflow.exceptions import MlflowException

    name, _, alias = path.rpartition("@")
    try:
        version = (
            MlflowClient(tracking_uri=default_tracking_uri())
            .get_model_version_by_alias(name, alias)
            .version
        )
    except MlflowException as e:
        raise UserError(f"{uri}: {_first_line(e)}") from e
    return f"models:/{name}/{version}", f"{name}/{version}"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _download(uri: str, source: str) -> Path:
    """Download an MLflow model's artifacts to a temporary folder; a missing one is a UserError
    naming ``source`` (the URI as the user wrote it)."""
    import mlflow  # deferred: mlflow (over a second to import)
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    dst = Path(tempfile.mkdtemp(prefix="recsys-mtl-model-"))
    try:
        mlflow.set_tracking_uri(default_tracking_uri())
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as e:
        shutil.rmtree(dst, ignore_errors=True)
        raise UserError(f"{source}: {_first_line(e)}") from e


def _signature(run: Any) -> Any:
    from mlflow.models import ModelSignature  # deferred: mlflow (over a second to import)
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    def kind(series: pl.Series) -> str:
        return "long" if series.dtype.is_integer() else "string"

    inputs = Schema(
        [
            ColSpec(kind(run.user_ids), "user_id"),
            ColSpec(kind(run.item_ids), "item_id", required=False),
            ColSpec("long", "k", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec(kind(run.user_ids), "user_id"),
            ColSpec(kind(run.item_ids), "item_id"),
            ColSpec("integer", "rank", required=False),
            ColSpec("float", "score"),
            *[ColSpec("float", f"score_{t}") for t in run.tasks],
            ColSpec("string", "served_by"),
        ]
    )
    params = ParamSchema([ParamSpec("blend", "string", "")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pd_example(run: Any) -> Any:
    """A two-row pairs request on real ids (the model's input example)."""
    return pl.DataFrame(
        {"user_id": run.user_ids.head(2), "item_id": run.item_ids.head(2)}
    ).to_pandas()


def _requirements() -> list[str]:
    reqs = [f"recsys-mtl=={__version__}"]
    for name in ("torch", "polars", "mlflow", "numpy", "pandas", "pydantic", "pyyaml"):
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def save_pyfunc(run_dir: str | Path, path: str | Path) -> Path:
    """Write the MLflow model (pyfunc flavor) of a finished run into the new folder ``path``."""
    import mlflow  # deferred: mlflow (over a second to import)

    path = Path(path)
    # MLflow copies artifacts with a progress bar by default: not for a few small files
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="recsys-mtl-bundle-") as tmp:
        bundle = export_bundle(run_dir, Path(tmp) / BUNDLE_DIR)
        run = load_bundle(bundle)
        example = pd_example(run)
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(ENTRY),
            artifacts={BUNDLE_DIR: str(bundle)},
            signature=_signature(run),
            pip_requirements=_requirements(),
            input_example=example,
            metadata={"recsys_mtl": json.loads((bundle / "info.json").read_text())},
        )
    return path


def log_pyfunc(
    client: Any, experiment_id: str, run_id: str | None, run_dir: str | Path
) -> dict[str, Any]:
    """Log the run's MLflow model as a ``LoggedModel`` (name ``model``) linked to ``run_id``;
    returns ``{"model_id", "model_uri", "seconds"}``."""
    from mlflow.entities import LoggedModelStatus  # deferred: mlflow (over a second to import)

    t0 = time.perf_counter()
    info = run_info(run_dir)
    tags = {k: str(info[k]) for k in ("config_hash", "weights_digest", "package_version")}
    tags["bundle_format"] = str(BUNDLE_FORMAT)
    logged = client.create_logged_model(
        experiment_id, name=MODEL_NAME, source_run_id=run_id, tags=tags, model_type="recsys-mtl"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-mtl-pyfunc-") as tmp:
            local = save_pyfunc(run_dir, Path(tmp) / "model")
            _stamp_model_id(local, logged.model_id, run_id)
            client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return {
        "model_id": logged.model_id,
        "model_uri": f"models:/{logged.model_id}",
        "seconds": round(time.perf_counter() - t0, 4),
    }


def _older_format(client: Any, source: str) -> bool:
    """Whether the logged model ``source`` (``models:/MODEL_ID``) carries a bundle of an earlier
    format than this version writes (no ``bundle_format`` tag: format 1); a model the store
    cannot show counts as current (the registry reports on it)."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow (over a second to import)

    model_id = source.removeprefix("models:/")
    if model_id == source or "/" in model_id or "@" in model_id:
        return False
    try:
        tags = client.get_logged_model(model_id).tags or {}
    except MlflowException:
        return False
    value = tags.get("bundle_format", "1")
    return int(value) < BUNDLE_FORMAT if value.isdigit() else False


def _stamp_model_id(local: Path, model_id: str, run_id: str | None) -> None:
    """Record the LoggedModel id and run id in the MLmodel file (what ``log_model`` does)."""
    from mlflow.models import Model  # deferred: mlflow (over a second to import)

    mlmodel = local / "MLmodel"
    model = Model.load(str(mlmodel))
    model.model_id = model_id
    model.run_id = run_id
    with atomic_path(mlmodel) as tmp:
        model.save(str(tmp))


def register(
    run_dir: str | Path,
    name: str,
    tracking_uri: str | None = None,
    *,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    aliases: list[str] | tuple[str, ...] = (),
    once_per: str | None = None,
) -> dict[str, Any]:
    """Register the run's MLflow model as a new version of ``name`` in the model registry.

    ``once_per``: a key of ``tags``; a version of ``name`` that already carries its value is
    returned instead of a new one (``"reused": True``), so that a command killed after
    registering registers nothing twice when run again.

    The model logged by the pipeline run is used; a run that logged none (tracking was off), or
    whose model predates this bundle format (:data:`recsys_mtl.runs.bundle.BUNDLE_FORMAT`:
    without what new items need), gets one logged now. The version carries ``description`` (default:
    :func:`default_description`), the tags of :func:`version_tags` updated with ``tags``, and
    each of ``aliases`` (moved to it from any version that held it). Names, aliases and tag
    keys are checked before anything is written. Returns ``{"name", "version", "model_uri",
    "aliases", "source", "tracking_uri"}``.
    """
    import mlflow  # deferred: mlflow (over a second to import)
    from mlflow.exceptions import MlflowException

    check_model_name(name)
    for alias in aliases:
        check_alias(alias)
    for key, value in (tags or {}).items():
        check_tag(key, value)
    load_run(run_dir)  # a clear error for what is not a finished run
    info = run_info(run_dir)
    uri = tracking_uri or info["tracking_uri"] or default_tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)  # MLflow resolves the version's models:/ source through it
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        run_tags = client.get_run(info["run_id"]).data.tags if info["run_id"] else {}
    except MlflowException:
        run_tags = {}  # the run is in another store, or gone: the defaults go without its tags
    source = info["model_uri"]
    if source is not None and _older_format(client, source):
        source = None
    try:
        if once_per is not None and (found := _version_with(client, name, once_per, tags)):
            return {"name": name, "version": int(found.version), "reused": True,
                    "model_uri": f"models:/{name}/{found.version}", "aliases": [],
                    "source": found.source, "tracking_uri": uri}  # fmt: skip
        if source is None:
            exp_name = info["experiment"] or "recsys-mtl"
            exp = client.get_experiment_by_name(exp_name)
            exp_id = exp.experiment_id if exp else client.create_experiment(exp_name)
            source = log_pyfunc(client, exp_id, info["run_id"], run_dir)["model_uri"]
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        mv = client.create_model_version(
            name,
            source=source,
            run_id=info["run_id"],
            model_id=source.removeprefix("models:/"),
            tags={**version_tags(run_dir, run_tags), **(tags or {})},
            description=default_description(run_dir, run_tags)
            if description is None
            else description,
        )
        for alias in aliases:
            client.set_registered_model_alias(name, alias, mv.version)
    except MlflowException as e:
        raise UserError(f"register {name!r} at {uri}: {str(e).splitlines()[0]}") from e
    return {
        "name": name,
        "version": int(mv.version),
        "model_uri": f"models:/{name}/{mv.version}",
        "aliases": [f"models:/{name}@{a}" for a in aliases],
        "source": source,
        "tracking_uri": uri,
    }


def _version_with(client: Any, name: str, key: str, tags: dict[str, str] | None) -> Any:
    """The first version of ``name`` whose tag ``key`` is ``tags[key]``, or None."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow (over a second to import)

    value = (tags or {}).get(key)
    if value is None:
        return None
    every = f"name='{name}'"
    try:  # the store filters by the tag (SQL stores, the server) unless a quote is in the way
        found = client.search_model_versions(
            every if "'" in value else f"{every} and tags.`{key}` = '{value}'"
        )
    except MlflowException:  # a store that cannot: every version of the name, read here
        found = client.search_model_versions(every)
    return next((mv for mv in found if (mv.tags or {}).get(key) == value), None)
