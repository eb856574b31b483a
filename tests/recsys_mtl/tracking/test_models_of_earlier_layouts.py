"""MLflow models logged before the package's layout changed keep loading and predicting.

``tests/fixtures/pyfunc-0.1.0-layout1`` is a real MLflow model saved by recsys-mtl 0.1.0 (whose
code file imports ``recsys_mtl.pyfunc``), with the predictions it gave then beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
OLD = FIXTURES / "pyfunc-0.1.0-layout1"


def test_the_model_logged_by_0_1_0_imports_the_old_module_path():
    code = (OLD / "pyfunc_model.py").read_text()
    assert "from recsys_mtl.pyfunc import RecsysModel" in code


def test_a_model_logged_by_0_1_0_loads_and_predicts_what_it_predicted_then():
    mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc")
    model = mlflow_pyfunc.load_model(str(OLD))
    request = pd.DataFrame({"user_id": [0, 1, 2, 999], "item_id": [0, 1, 2, 3]})
    got = model.predict(request)
    want = pd.DataFrame(json.loads((FIXTURES / "pyfunc-0.1.0-layout1.expected.json").read_text()))
    assert list(got["served_by"]) == list(want["served_by"])
    pd.testing.assert_series_equal(
        got["score_rating"].astype(float), want["score_rating"].astype(float), check_names=False
    )
    pd.testing.assert_series_equal(
        got["score"].astype(float), want["score"].astype(float), check_names=False
    )


def test_the_old_module_path_is_the_new_class():
    from recsys_mtl.pyfunc import RecsysModel as Old
    from recsys_mtl.tracking.pyfunc import RecsysModel

    assert Old is RecsysModel
