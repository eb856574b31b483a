"""MLflow model-from-code entry point: the pyfunc model of a recsys-mtl bundle (nothing pickled)."""

from mlflow.models import set_model

from recsys_mtl.pyfunc import RecsysModel

set_model(RecsysModel())
