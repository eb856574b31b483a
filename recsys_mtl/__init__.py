"""recsys-mtl: multi-task recommendation and cold-start meta-learning on rating logs.

Importing the package has no side effects and does not import torch, mlflow or optuna.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
