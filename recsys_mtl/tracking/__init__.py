"""MLflow tracking: names and the store (:mod:`.names`), trackers (:mod:`.store`,
:mod:`.background`), the MLflow model of a run (:mod:`.model`) and its pyfunc (:mod:`.pyfunc`).

Importing this package imports neither MLflow nor torch: the trackers import MLflow when they
first talk to the store; import :mod:`recsys_mtl.tracking.model` for the model functions.
"""

from recsys_mtl.tracking.background import BackgroundTracker
from recsys_mtl.tracking.names import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KIND_TAG,
    KINDS,
    STUDY_TAG,
    TRIAL_STATE_TAG,
    UNTRACKED_HINT,
    bound_http_retries,
    canonical_metric_name,
    check_store,
    default_tracking_uri,
    git_commit,
    mlflow_metric_name,
    store_lock,
    store_unreachable,
    summary_metric_name,
)
from recsys_mtl.tracking.store import MlflowTracker, NullTracker

__all__ = [
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "KINDS",
    "KIND_TAG",
    "STUDY_TAG",
    "TRIAL_STATE_TAG",
    "UNTRACKED_HINT",
    "BackgroundTracker",
    "MlflowTracker",
    "NullTracker",
    "bound_http_retries",
    "canonical_metric_name",
    "check_store",
    "default_tracking_uri",
    "git_commit",
    "mlflow_metric_name",
    "store_lock",
    "store_unreachable",
    "summary_metric_name",
]
