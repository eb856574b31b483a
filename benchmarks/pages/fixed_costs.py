"""The fixed-costs page: what a run pays besides its epochs, before and after each change
(``benchmarks/fixed_costs.py``), and the page faults of freed memory
(``benchmarks/page_faults.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, load, mean_std, pm, source_note, table

# what each probe measures, and its unit (the JSON stores every probe under ``*_seconds``)
PROBES = {
    "import": ("interpreter start + `import recsys_mtl, recsys_mtl.config`", "s"),
    "import_torch": ("interpreter start + `import torch`", "s"),
    "optimizers": ("creating the trainer's optimizers (after `import torch`)", "s"),
    "epoch": ("one epoch of the rating model at batches of 8192 (dim 64, Adam, constant rate; "
              "the best of the last 2 of 3 epochs)", "s"),
    "evaluate": ("the evaluate stage of a trained rating run (pointwise, sampled and full "
                 "ranking, test and valid)", "s"),
    "weights_plot": ("the train stage's weight plot with static weights (import of the "
                     "stages + plot)", "s"),
    "rating_epochs": ("first fit of the rating recipe (every epoch, no refit)", "s"),
    "ranking_epochs": ("first fit of the ranking recipe (every epoch, no refit)", "s"),
    "ranking_profile": ("`torch.profiler` of the ranking recipe's first fit: CPU time of all "
                        "operators", "s"),
    "rating_lazy_adam": ("lazy Adam, per step of the rating recipe's first fit", "ms"),
    "rating_checkpoints": ("writing the per-epoch checkpoints of the rating recipe's first "
                           "fit (`torch.save`)", "s"),
    "rating_warm_start": ("the rating recipe's closed-form start, each tree's own sweeps", "s"),
    "rating_warm_start_5_sweeps": ("the rating recipe's ALS start at 5 sweeps in both trees",
                                   "s"),
    "ranking_warm_start": ("the ranking recipe's implicit-ALS start", "s"),
    "rating_implicit_product": ("the SVD++ product over all users, forward + backward "
                                "(median of 50)", "ms"),
    "rating_small_steps": ("one training step of the rating model at batches of 64 rows, the "
                           "cost a step pays whatever its rows (median of 50)", "ms"),
}  # fmt: skip
DEFAULT_PROBES = ["import", "import_torch", "optimizers", "epoch", "evaluate", "weights_plot"]
DEFAULT_REPEATS = 2
# newest first: (raw files, heading, what changed between the trees)
SECTIONS = [
    (["fixed_costs-dim.json"], "The rating recipe's factor count",
     "Each tree's own `configs/ml100k_bellkor.yaml`: 128 factors with `train.l2` 0.4 before, "
     "64 factors with `train.l2` 0.5 after (the shipped recipe)."),
    (["fixed_costs-allocator.json"], "Freed memory kept",
     "The same models; the tree after keeps freed memory for reuse (its process set-up of "
     "`recsys-mtl run`; page faults below). These probes call `train_ranker` in a fresh "
     "interpreter, as a run with cached data stages does."),
    (["fixed_costs-lazy-dense.json"], "Plain Adam steps for the mostly-touched tables",
     "`train.lazy_dense_above: 0.5` in the rating recipe: the factor and bias tables take "
     "plain Adam steps, the per-time-bin, per-day and drift tables stay lazy. The cold-start "
     "benchmark ran on the other core."),
    (["fixed_costs-bags.json", "fixed_costs-bags-r3.json"], "`embedding_bag` products",
     "The SVD++ product and the ALS start's products as weighted `embedding_bag` calls, one "
     "product fewer per solve, the L2 penalty's written-out backward, the tasks' scores "
     "together, one Adam call for the whole tables and the gathered rows. The same models up "
     "to float rounding. `fixed_costs-bags-r3.json` is an earlier pass with 3 repeats; its "
     "`rating_warm_start` is each tree's own recipe (5 sweeps before, 3 after)."),
    (["fixed_costs-checkpoints.json"], "Checkpoints",
     "An epoch that improved writes its weights once (the best weights are the model's own) "
     "instead of twice."),
    (["fixed_costs-fused.json", "fixed_costs-forward.json"], "Fused Adam and BellKor's forward",
     "torch's fused Adam kernel for the tables (the mostly-touched tables in one call with "
     "the untouched rows put back, the sparsely touched ones gathered), and BellKor's forward: "
     "(user, day) bias rows from a dense table, the batch's distinct users from a presence "
     "mask, `index_select` gathers. Both trees train on the same prepared split. "
     "`fixed_costs-forward.json` has the forward change alone."),
    (["fixed_costs-epochs.json", "fixed_costs-profile.json"], "The user side once per user",
     "The training forward looks up the user side once per distinct user of the batch, "
     "gathers `p_u` and the SVD++ vector to the rows in one step, and computes the L2 penalty "
     "from per-row counts."),
    (["fixed_costs.json"], "Against the 0.1 release",
     "Own optimizers instead of `torch.optim` (which imports `torch._dynamo` on first use), "
     "the SVD++ term as one sparse product and one (user, day) search, BellKor scoring the "
     "full catalog as one matrix product and each sampled row from one user state, negatives "
     "drawn with a dense membership table, no weight plot for weights that do not move."),
]  # fmt: skip
# page faults: raw file, what ran
FAULTS = [
    ("page_faults.json", "The shipped rating recipe (64 factors)."),
    ("page_faults-128.json", "The previous rating recipe's factor count (128 factors)."),
]  # fmt: skip
CASES = {
    "train_ranker": "`train_ranker` three times in one interpreter: the 2nd and 3rd calls",
    "cached_run": "`recsys-mtl run`, data stages cached (whole process)",
    "full_run": "`recsys-mtl run`, every stage (whole process)",
}
SETTINGS = {"off (0)": "`RECSYS_MTL_KEEP_FREED_MB=0`", "default": "default"}


def _span(values: list[float], digits: int) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def _command(doc: dict[str, Any]) -> str:
    """The command that made ``doc``: baseline, probes and repeats read from its rows."""
    rows = doc["rows"]
    probes = [r["labels"]["cost"] for r in rows]
    repeats = len(rows[0]["metrics"]["before_all"])
    cmd = f"python benchmarks/fixed_costs.py --baseline {rows[0]['labels']['baseline']}"
    if probes != DEFAULT_PROBES:
        cmd += f" --probes {','.join(probes)}"
    if repeats != DEFAULT_REPEATS:
        cmd += f" --repeats {repeats}"
    return cmd


def _load_avg(doc: dict[str, Any]) -> str:
    avg = doc.get("machine", {}).get("load_average_at_end")
    return " / ".join(f"{v:.2f}" for v in avg) if avg else "–"


def _costs(doc: dict[str, Any], name: str) -> str:
    base = doc["rows"][0]["labels"]["baseline"]
    body = []
    for r in doc["rows"]:
        cost, m = r["labels"]["cost"], r["metrics"]
        what, unit = PROBES[cost]
        d = 2 if unit == "ms" else 3
        before, after = m["before_all"], m["after_all"]
        ratio = mean_std(after)[0] / mean_std(before)[0]
        body.append([
            what, f"`{cost}`", unit, pm(before, d), _span(before, d), pm(after, d),
            _span(after, d), f"{ratio:.{3 if ratio < 0.1 else 2}f}", str(len(before)),
        ])  # fmt: skip
    headers = ["cost", "probe", "unit", f"before ({base})", "before: range", "after",
               "after: range", "after / before (means)", "n per tree"]  # fmt: skip
    return (
        f"`{name}`, before = `git archive {base}`, after = the tree that made the file; load "
        f"average at the end {_load_avg(doc)}.\n\n" + table(headers, body, align="llllrlrrr")
    )


def _faults(doc: dict[str, Any]) -> str:
    rows = {(r["labels"]["case"], r["labels"]["setting"]): r["metrics"] for r in doc["rows"]}
    body = []
    for case, what in CASES.items():
        for setting, shown in SETTINGS.items():
            m = rows.get((case, setting))
            if m is None:
                continue
            secs = m.get("train_stage_seconds", m.get("seconds"))
            body.append([
                what, shown, " / ".join(f"{v:,}" for v in m["minor_faults"]),
                " / ".join(f"{v:.3f}" for v in m["system_seconds"]),
                " / ".join(f"{v:.2f}" for v in secs),
            ])  # fmt: skip
    headers = ["process", "setting", "minor page faults, each repeat",
               "system s, each repeat",
               "train stage s (`train_ranker`: both calls), each repeat"]  # fmt: skip
    return table(headers, body, align="llrrr")


def _faults_command(doc: dict[str, Any]) -> str:
    repeats = len(doc["rows"][0]["metrics"]["minor_faults"])
    sets = doc["rows"][0]["labels"].get("overrides", [])
    cmd = "python benchmarks/page_faults.py" + (f" --repeats {repeats}" if repeats != 3 else "")
    return cmd + "".join(f" --set {s}" for s in sets)


def page(results: Path) -> str:
    title = "Fixed costs of a run"
    parts = [
        "What a run pays besides its training epochs, measured before and after each change "
        "side by side in one run (`benchmarks/fixed_costs.py`): every measurement a fresh "
        "interpreter with one torch thread and the tree's own process set-up of `recsys-mtl "
        "run`, running the same code against the working tree and against `git archive` of "
        "the baseline commit, the two alternating. A first fit is `train_ranker` on a "
        "prepared run of the tree's own recipe with `train.refit=false` and "
        "`train.patience=null` (every epoch of the recipe). ± is the sample standard "
        "deviation over the n measurements of each tree; read the ratios within a row, as the "
        "machine's speed changed from hour to hour.\n",
    ]
    for files, heading, what in SECTIONS:
        parts += [f"## {heading}\n", what + "\n"]
        for name in files:
            doc = load(results, name)[0]
            parts += [_costs(doc, name), source_note(name, command=_command(doc))]
    parts += [
        "## Freed memory: page faults\n",
        "Minor page faults and system time of training, with and without keeping freed "
        "memory for reuse (`benchmarks/page_faults.py`): `configs/ml100k_bellkor.yaml` on "
        "ml-100k, tracking off, one torch thread, each setting in fresh processes, "
        "`RECSYS_MTL_KEEP_FREED_MB=0` (glibc's own behaviour) and the default alternating. "
        "The speed benchmark ran on the other core, so only the counts are worth reading.\n",
    ]
    for name, what in FAULTS:
        doc = load(results, name)[0]
        parts += [what + "\n", _faults(doc), source_note(name, command=_faults_command(doc))]
    return header(title, parts[0]) + "\n".join(parts[1:])


PAGES: dict[str, Callable[[Path], str]] = {"fixed-costs.md": page}
