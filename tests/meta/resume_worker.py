"""Meta-train a tiny learner with checkpoints (run as a subprocess by test_resume.py).

    python -m tests.meta.resume_worker DATA_DIR CKPT_DIR OUT_FILE [PAUSE_AT_EPOCH]

With PAUSE_AT_EPOCH, after that epoch's metrics (before its checkpoint) the worker writes
``CKPT_DIR/paused`` and sleeps, so the test can kill it with SIGKILL at a known point.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from meta.learners import build_learner
from meta.train import meta_train
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.weighting import WEIGHTINGS
from tests.meta.helpers import TASKS, cold_data, ranker


class Pause(Callback):
    def __init__(self, at: int, flag: Path) -> None:
        self.at, self.flag = at, flag

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.at:
            self.flag.write_text(str(epoch))
            time.sleep(120)


def main() -> None:
    base, ckpt, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    pause = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    data = cold_data(base, epochs=4, patience=None)
    torch.manual_seed(0)
    learner = build_learner("meta_sgd", {"steps": 2}, ranker(base), TASKS)
    cbs = [Pause(pause, ckpt / "paused")] if pause is not None else []
    meta_train(learner, data, WEIGHTINGS.get("uw")(TASKS), ckpt, cbs)
    torch.save(learner.state_dict(), out)


if __name__ == "__main__":
    main()
