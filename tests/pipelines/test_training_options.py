"""Training options through the command: refit on train + valid, and their config errors."""

from __future__ import annotations

import json

import torch
from torch.testing import assert_close

from tests.conftest import REPO

SMALL = [
    "--set", "data.synthetic.users=120", "--set", "data.synthetic.items=150",
    "--set", "data.synthetic.ratings=6000", "--set", "model.name=bellkor",
    "--set", "model.params={dim: 8}", "--set", "tasks=[rating, interaction]",
    "--set", "train.epochs=4", "--set", "train.patience=1", "--set", "train.batch_size=256",
    "--set", "train.lr=0.01", "--set", "tracking.enabled=false",
]  # fmt: skip


def test_refit_trains_a_fresh_model_on_train_and_valid_for_the_chosen_epochs(tmp_path, cli):
    from recsys_mtl.config import TrainConfig
    from recsys_mtl.models import RANKERS, load_context
    from recsys_mtl.train.data import concat, load_part
    from recsys_mtl.train.trainer import fit
    from recsys_mtl.weighting import WEIGHTINGS

    out = tmp_path / "r"
    args = ["run", REPO / "configs" / "quickstart.yaml", *SMALL, "--out", out]
    code, _, err = cli(*args, "--set", "train.refit=true")
    assert code == 0, err
    result = json.loads((out / "train" / "_stage.json").read_text())["result"]
    epochs = result["refit_epochs"]
    assert epochs == result["metrics"]["train/best_epoch"] + 1 >= 1
    assert "refit on train + valid" in err

    # the same thing by hand: a model seeded like the run, trained on both parts
    tasks = ["rating", "interaction"]
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    model = cls(cls.config_class(dim=8), load_context(out / "features", out / "split"), tasks)
    parts = [load_part(out / "split" / f"{p}.parquet", tasks) for p in ("train", "valid")]
    cfg = TrainConfig(epochs=epochs, patience=None, batch_size=256, lr=0.01)
    fit(model, concat(*parts), None, tasks, cfg, WEIGHTINGS.get("static")(tasks))
    saved = torch.load(out / "train" / "model.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert_close(saved[k], v, msg=k)

    code, _, err = cli(*args, "--out", tmp_path / "plain")
    plain = torch.load(tmp_path / "plain" / "train" / "model.pt", weights_only=True)
    assert code == 0 and not torch.equal(plain["global_bias"], saved["global_bias"])


def test_monitor_must_name_a_task_of_the_run(tmp_path, cli):
    code, _, err = cli(
        "run", REPO / "configs" / "quickstart.yaml", *SMALL, "--set", "train.monitor=like",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert code == 2
    assert "train.monitor must be 'objective' or one of tasks ['rating', 'interaction']" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_refit_with_neumf_pretraining_is_refused_before_any_stage(tmp_path, cli):
    code, _, err = cli(
        "run", REPO / "configs" / "quickstart.yaml", *SMALL, "--set", "model.name=neumf",
        "--set", "model.params={pretrain: true}", "--set", "train.refit=true",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert code == 2 and "train.refit: not available with model.params.pretrain" in err
    assert not (tmp_path / "r").exists()
