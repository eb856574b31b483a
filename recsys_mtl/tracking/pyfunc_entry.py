"""MLflow model-from-code entry point: the pyfunc model of a recsys-mtl bundle (nothing pickled).

MLflow copies this file into every logged model and runs it when the model is loaded.
"""

from mlflow.models import set_model

from recsys_mtl.tracking.pyfunc import RecsysModel

set_model(RecsysModel())
