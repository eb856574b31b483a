"""Kept so that MLflow models logged by recsys-mtl 0.1.0 keep loading.

Their code file (``pyfunc_model.py``, copied into each logged model) imports
``recsys_mtl.pyfunc.RecsysModel``; the class now lives in :mod:`recsys_mtl.tracking.pyfunc`.
"""

from recsys_mtl.tracking.pyfunc import RecsysModel

__all__ = ["RecsysModel"]
