"""The fixed costs of a run, this tree against an older commit, side by side in one run.

    python benchmarks/fixed_costs.py --baseline 02f618b      # before/after table rows
    python benchmarks/fixed_costs.py --baseline 02f618b --quick
    python benchmarks/fixed_costs.py --baseline c5b8c2a --probes rating_epochs,ranking_epochs --repeats 3

Each measurement is a fresh interpreter (one torch thread, and the tree's own process set-up of
``recsys-mtl run``: freed memory kept where the tree has :mod:`pipelines.allocator`) running
the same code against this tree and against ``git archive <baseline>`` unpacked in a temporary
folder, alternating ``--repeats`` times, on one prepared ml-100k run of ``configs/ml100k_bellkor.yaml``:

* ``import``: interpreter start + ``import recsys_mtl`` (+ ``import recsys_mtl.config``);
* ``import_torch``: interpreter start + ``import torch``;
* ``optimizers``: building the trainer's optimizers for each tree's own recipe after ``import
  torch`` (``torch.optim`` imports ``torch._dynamo`` on first use);
* ``epoch``: one training epoch of the recipe's model and data at batches of 8192, dim 64,
  Adam, constant rate (the same settings for both trees; 3 epochs, the best of the last 2);
* ``evaluate``: the evaluate stage (``evaluate_run``: pointwise, sampled and full ranking,
  test and valid) on the same trained run;
* ``weights_plot``: the train stage's weight-trajectory plot (matplotlib) with static weights;
* ``rating_epochs`` / ``ranking_epochs``: the first fit of each tree's own
  ``configs/ml100k_bellkor.yaml`` / ``configs/ml100k_ranking.yaml`` (``train_ranker`` with
  ``train.refit=false``, ``train.patience=null``: every epoch of the recipe), on a prepared run
  of that recipe; ``ranking_profile``: the CPU time of every operator (``torch.profiler``) in
  the ranking recipe's first fit, after one warm-up fit; ``rating_lazy_adam``: milliseconds
  per step of lazy Adam (the optimizer of the tables) in the rating recipe's first fit;
  ``rating_checkpoints``: seconds spent writing the per-epoch checkpoints (``torch.save``) of
  that fit; ``rating_warm_start`` / ``ranking_warm_start``: seconds of each recipe's
  closed-form start (``train.warm_start``), ``rating_warm_start_5_sweeps`` the rating
  recipe's at 5 sweeps in both trees; ``rating_implicit_product``: milliseconds of one
  forward + backward of the rating model's SVD++ product over all users (median of 50);
  ``rating_small_steps``: milliseconds of one training step (forward, backward, both
  optimizers) of the rating recipe's model at batches of 64 rows, the cost of a step that
  does not grow with its rows (median of 50). Not in the default set (``--probes`` picks
  probes).

stdout gets one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))

PROBES = {
    "import": """
import time, subprocess, sys
t = time.perf_counter()
subprocess.run([sys.executable, "-c", "import recsys_mtl, recsys_mtl.config"], check=True)
print(time.perf_counter() - t)
""",
    "import_torch": """
import time, subprocess, sys
t = time.perf_counter()
subprocess.run([sys.executable, "-c", "import torch"], check=True)
print(time.perf_counter() - t)
""",
    "optimizers": """
import sys, time, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.build import build_model
from recsys_mtl.models.context import load_context
from recsys_mtl.train.trainer import _optimizers
run = sys.argv[1]
cfg = load_config(sys.argv[2], ["tracking.enabled=false"])
model = build_model(cfg, load_context(f"{run}/features", f"{run}/split"), "cpu")
t = time.perf_counter()
_optimizers(model, cfg.train)
print(time.perf_counter() - t)
""",
    "epoch": """
import sys, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.train.recipe import train_ranker
run = sys.argv[1]
from recsys_mtl.config import TrainConfig
sets = ["tracking.enabled=false", "train.refit=false", "train.patience=null", "train.epochs=3",
        "train.batch_size=8192", "train.lr=0.01", "model.params.dim=64"]
if "schedule" in TrainConfig.model_fields:  # the same settings in both trees
    sets += ["train.schedule=constant", "train.embedding_optimizer=adam", "train.lr_scaling=none"]
cfg = load_config(sys.argv[2], sets)
from recsys_mtl.train import trainer
times = []
class Clock:
    def on_train_start(self, model, info):
        import time; self.t = time.perf_counter()
    def on_epoch_end(self, epoch, metrics):
        import time; now = time.perf_counter(); times.append(now - self.t); self.t = now
    def on_train_end(self, result):
        pass
train_ranker(cfg, f"{run}/features", f"{run}/split", callbacks=[Clock()])
print(min(times[1:]))
""",
    "evaluate": """
import sys, time, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.runs.load import load_run
from recsys_mtl.train.evaluate import evaluate_run
cfg = load_config(sys.argv[2], ["tracking.enabled=false"])
t = time.perf_counter()
evaluate_run(load_run(sys.argv[1], "cpu"), cfg.evaluate, "cpu")
print(time.perf_counter() - t)
""",
    "weights_plot": """
import sys, time, json
from pathlib import Path
t = time.perf_counter()
from pipelines import stages
from recsys_mtl.config import load_config
cfg = load_config(sys.argv[2], ["tracking.enabled=false"])
if len(cfg.tasks) > 1 and (cfg.weighting.name != "static" or "static weights are flat" not in
                            Path(stages.__file__).read_text()):
    hist = [{"epoch": e, **{f"weight/{t}": 1.0 for t in cfg.tasks}} for e in range(5)]
    try:
        from pipelines.plots import plot_weights as draw
    except ImportError:  # a checkout from before plots moved to pipelines/plots.py
        draw = stages._plot_weights
    draw(hist, cfg.tasks, Path(sys.argv[1]) / "probe-weights.png", "static")
print(time.perf_counter() - t)
""",
    "recipe_epochs": """
import sys, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.train.recipe import train_ranker
run = sys.argv[1]
sets = ["tracking.enabled=false", "train.refit=false", "train.patience=null"]
trained = train_ranker(load_config(sys.argv[2], sets), f"{run}/features", f"{run}/split")
print(trained.metrics["train/seconds"])
""",
    "recipe_warm_start": """
import sys, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.train.recipe import train_ranker
run = sys.argv[1]
sets = ["tracking.enabled=false", "train.refit=false", "train.patience=null", "train.epochs=1"]
trained = train_ranker(load_config(sys.argv[2], sets), f"{run}/features", f"{run}/split")
print(trained.metrics["train/warm_start_seconds"])
""",
    "recipe_implicit_product": """
import sys, time, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.build import build_model
from recsys_mtl.models.context import load_context
run = sys.argv[1]
cfg = load_config(sys.argv[2], ["tracking.enabled=false"])
model = build_model(cfg, load_context(f"{run}/features", f"{run}/split"), "cpu")
w = model.implicit.weight("implicit")
grad = torch.randn(int(model.ctx.n_users), w.shape[1])
times = []
for _ in range(60):
    t = time.perf_counter()
    model._implicit_all().backward(grad)
    times.append(time.perf_counter() - t)
    w.grad = None
print(1000 * sorted(times[10:])[25])
""",
    "recipe_small_steps": """
import sys, time, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.build import build_model, build_weighting
from recsys_mtl.models.context import load_context
from recsys_mtl.train.data import load_part, take
from recsys_mtl.train.losses import task_losses
from recsys_mtl.train.trainer import _optimizers
run = sys.argv[1]
cfg = load_config(sys.argv[2], ["tracking.enabled=false"])
model = build_model(cfg, load_context(f"{run}/features", f"{run}/split"), "cpu")
opts, weighting = _optimizers(model, cfg.train), build_weighting(cfg)
train = load_part(f"{run}/split/train.parquet", cfg.tasks)
rows = torch.randperm(train["user"].numel(), generator=torch.Generator().manual_seed(0))
batches = [take(train, rows[s : s + 64]) for s in range(0, 64 * 60, 64)]
times = []
for batch in batches:
    t = time.perf_counter()
    out = model(batch)
    total = weighting.combine(task_losses(out, batch, cfg.tasks))[0] + cfg.train.l2 * out["_reg"]
    for o in opts:
        o.zero_grad()
    total.backward()
    for o in opts:
        o.step()
    times.append(time.perf_counter() - t)
print(1000 * sorted(times[10:])[25])
""",
    "recipe_profile": """
import sys, torch
from torch.profiler import ProfilerActivity, profile
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.train.recipe import train_ranker
run = sys.argv[1]
cfg = load_config(sys.argv[2], ["tracking.enabled=false", "train.refit=false", "train.patience=null"])
train_ranker(cfg, f"{run}/features", f"{run}/split")  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as prof:
    train_ranker(cfg, f"{run}/features", f"{run}/split")
print(sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6)
""",
    "recipe_checkpoints": """
import sys, tempfile, time, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.train.recipe import train_ranker
run = sys.argv[1]
spent = [0.0]
save = torch.save
def timed(*args, **kwargs):
    t = time.perf_counter()
    save(*args, **kwargs)
    spent[0] += time.perf_counter() - t
torch.save = timed
sets = ["tracking.enabled=false", "train.refit=false", "train.patience=null"]
train_ranker(load_config(sys.argv[2], sets), f"{run}/features", f"{run}/split",
             checkpoint_dir=tempfile.mkdtemp())
print(spent[0])
""",
    "recipe_lazy_adam": """
import sys, time, torch
torch.set_num_threads(1)
from recsys_mtl.config import load_config
from recsys_mtl.train import optim
from recsys_mtl.train.recipe import train_ranker
run = sys.argv[1]
spent = [0.0, 0]
step = optim.LazyAdam.step
def timed(self):
    t = time.perf_counter()
    step(self)
    spent[0] += time.perf_counter() - t
    spent[1] += 1
optim.LazyAdam.step = timed
sets = ["tracking.enabled=false", "train.refit=false", "train.patience=null"]
train_ranker(load_config(sys.argv[2], sets), f"{run}/features", f"{run}/split")
print(1000 * spent[0] / spent[1])
""",
}
# the same start at 5 sweeps in both trees (the recipe's own sweep count aside)
PROBES["recipe_warm_start_5"] = PROBES["recipe_warm_start"].replace(
    '"train.epochs=1"]', '"train.epochs=1", "train.als_sweeps=5"]'
)
# probes of a recipe's epochs: (the probe's code, the recipe it trains)
RECIPE_PROBES = {
    "rating_epochs": ("recipe_epochs", "ml100k_bellkor.yaml"),
    "ranking_epochs": ("recipe_epochs", "ml100k_ranking.yaml"),
    "ranking_profile": ("recipe_profile", "ml100k_ranking.yaml"),
    "rating_warm_start": ("recipe_warm_start", "ml100k_bellkor.yaml"),
    "rating_warm_start_5_sweeps": ("recipe_warm_start_5", "ml100k_bellkor.yaml"),
    "rating_implicit_product": ("recipe_implicit_product", "ml100k_bellkor.yaml"),
    "rating_small_steps": ("recipe_small_steps", "ml100k_bellkor.yaml"),
    "ranking_warm_start": ("recipe_warm_start", "ml100k_ranking.yaml"),
    "rating_lazy_adam": ("recipe_lazy_adam", "ml100k_bellkor.yaml"),
    "rating_checkpoints": ("recipe_checkpoints", "ml100k_bellkor.yaml"),
}
DEFAULT_PROBES = ["import", "import_torch", "optimizers", "epoch", "evaluate", "weights_plot"]


# the process set-up of `recsys-mtl run` in each tree: one torch thread, and freed memory kept
# (pipelines.allocator) where the tree has it
_SETUP = """torch.set_num_threads(1)
import pathlib, recsys_mtl
if (pathlib.Path(recsys_mtl.__file__).parent / "allocator.py").exists():  # not an import: a
    from pipelines.allocator import keep_freed_memory  # module missing from the older tree
    keep_freed_memory()  # would resolve to this one through the editable install
"""


def _probe(name: str, tree: Path, run: Path) -> float:
    key, recipe = RECIPE_PROBES.get(name, (name, "ml100k_bellkor.yaml"))
    config = tree / "configs" / recipe  # each tree reads its own config keys
    code = PROBES[key].replace("torch.set_num_threads(1)\n", _SETUP)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    env.pop("RECSYS_MTL_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code, str(run), str(config)],
                         capture_output=True, text=True, env=env, cwd=tree)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{name} in {tree}: {out.stderr[-1500:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _prepare(base: Path, recipe: str = "ml100k_bellkor.yaml") -> Path:
    """One trained run of a shipped recipe (this tree), as the shared input."""
    run = base / ("run" if recipe == "ml100k_bellkor.yaml" else recipe.removesuffix(".yaml"))
    if (run / "summary.json").exists():
        return run
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "configs" / recipe),
           "--set", f"data.path={ML100K}", "--set", "tracking.enabled=false", "--out", str(run)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, cwd=base, capture_output=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="a commit of this repository")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--probes", default=",".join(DEFAULT_PROBES),
                    help=f"comma-separated, of {', '.join([*DEFAULT_PROBES, *RECIPE_PROBES])}")  # fmt: skip
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-fixed-"))
    base.mkdir(parents=True, exist_ok=True)
    old = base / "baseline"
    if not old.exists():
        archive = base / "baseline.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), args.baseline],
                       check=True)  # fmt: skip
        with tarfile.open(archive) as tar:
            tar.extractall(old, filter="data")
    probes = [p for p in args.probes.split(",") if p]
    unknown = [p for p in probes if p not in DEFAULT_PROBES and p not in RECIPE_PROBES]
    if unknown:
        ap.error(f"--probes: unknown {unknown}")
    print("preparing the shared runs", file=sys.stderr, flush=True)
    runs = {p: _prepare(base, RECIPE_PROBES.get(p, (p, "ml100k_bellkor.yaml"))[1]) for p in probes}
    rows = []
    for name in probes:
        run = runs[name]
        found: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(repeats):
            for label, tree in (("before", old), ("after", ROOT)):
                found[label].append(_probe(name, tree, run))
        metrics = {f"{label}_seconds": round(statistics.fmean(v), 3) for label, v in found.items()}
        metrics.update({f"{label}_all": [round(x, 3) for x in v] for label, v in found.items()})
        row = {"labels": {"cost": name, "baseline": args.baseline}, "metrics": metrics}
        print(f"  {row['labels']}: {metrics}", file=sys.stderr, flush=True)
        rows.append(row)
    machine = machine_info()
    print(json.dumps({"benchmark": "fixed_costs", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
