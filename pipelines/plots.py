"""Every plot of a run or a study, and the one place a figure is made and saved.

The learning curves are an SVG drawn here as text: no plotting library is imported (matplotlib's
import and one figure cost 0.6-0.9 s, a tenth of a fast training run), and MLflow's artifact view
shows SVG. The other plots are PNGs drawn with matplotlib, loaded only when one is drawn; each
goes through :func:`figure` (a new figure) or :func:`save_figure` (one Optuna drew): the Agg
backend, a tight layout, an atomic write, the figure closed even when drawing fails.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import escape
from pathlib import Path
from typing import Any

from recsys_mtl.io import atomic_path

__all__ = [
    "figure",
    "learning_curves",
    "mae_vs_k_figure",
    "method_styles",
    "plot_mae_vs_k",
    "plot_runs",
    "plot_study",
    "plot_weights",
    "save_figure",
    "weights_move",
]

log = logging.getLogger("recsys_mtl.plots")


# --------------------------------------------------------------------------------------------
# Making and saving a figure


def _pyplot() -> Any:
    # deferred: matplotlib (0.6-0.9 s with its first figure) loads only when a PNG is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: pyplot, once the Agg backend is chosen

    return plt


def save_figure(
    fig: Any, path: Path, dpi: int = 100, size: tuple[float, float] | None = None
) -> Path:
    """Lay ``fig`` out (at ``size`` inches when given), write it to ``path`` as a PNG
    atomically, and close it (also when saving fails)."""
    plt = _pyplot()
    try:
        if size is not None:
            fig.set_size_inches(*size)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


@contextmanager
def figure(path: Path, size: tuple[float, float], dpi: int = 100) -> Iterator[Any]:
    """A new figure of ``size`` inches with one axes, yielded to draw on; saved to ``path``
    (:func:`save_figure`) when the block ends, closed unsaved when it raises."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Training: learning curves (SVG) and task weights


def weights_move(history: list[dict[str, float]], tasks: list[str], tol: float = 1e-6) -> bool:
    """Whether any task's mean weight changed between epochs (static weights never do)."""
    for t in tasks:
        values = [h[f"weight/{t}"] for h in history if f"weight/{t}" in h]
        if values and max(values) - min(values) > tol:
            return True
    return False


def _ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``: steps of 1, 2 or 5 times a power of ten."""
    span = hi - lo if hi > lo else abs(hi) or 1.0
    raw = span / max(1, most - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    count = max(1, round((last - first) / step))
    return [round(first + i * step, 12) for i in range(count + 1)]


def _label(v: float) -> str:
    return f"{v:.4g}"


def learning_curves(history: list[dict[str, float]], tasks: list[str], path: Path) -> Path | None:
    """Per task, its train and validation loss per epoch on one chart (one panel per task), as
    an SVG drawn here: no plotting library is imported (matplotlib's import and one figure
    cost 0.6-0.9 s, a tenth of a fast training run), and MLflow's artifact view shows SVG."""
    panels = [t for t in tasks if any(f"train/{t}/loss" in h for h in history)]
    if not panels:
        return None
    width, height, left, right, top, bottom = 420, 300, 64, 16, 34, 44
    styles = {"train": ("#1f77b4", "", "circle"), "valid": ("#ff7f0e", "6 4", "square")}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(panels)}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width * len(panels)}" height="{height}" fill="white"/>',
    ]
    for n, task in enumerate(panels):
        series = {
            part: [
                (h["epoch"], h[f"{part}/{task}/loss"])
                for h in history
                if f"{part}/{task}/loss" in h
            ]
            for part in ("train", "valid")
        }
        points = [p for pts in series.values() for p in pts]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        pad = 0.04 * (x_hi - x_lo)  # markers off the frame
        x_lo, x_hi = x_lo - pad, x_hi + pad
        y_ticks = _ticks(min(ys), max(ys))
        y_lo, y_hi = y_ticks[0], y_ticks[-1]
        x0, x1, y0, y1 = n * width + left, (n + 1) * width - right, height - bottom, top

        def px(
            x: float, x0: float = x0, x1: float = x1, lo: float = x_lo, hi: float = x_hi
        ) -> float:
            return x0 + (x - lo) / (hi - lo) * (x1 - x0)

        def py(
            y: float, y0: float = y0, y1: float = y1, lo: float = y_lo, hi: float = y_hi
        ) -> float:
            return y0 - (y - lo) / ((hi - lo) or 1.0) * (y0 - y1)

        out.append(
            f'<text x="{x0}" y="{y1 - 4}" font-size="13">{escape(task, quote=False)}: loss</text>'
        )
        out.append(
            f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#333"/>'
        )
        for e in range(math.ceil(x_lo), math.floor(x_hi) + 1):
            out.append(f'<line x1="{px(e):.1f}" y1="{y0}" x2="{px(e):.1f}" y2="{y0 + 4}" stroke="#333"/>'
                       f'<text x="{px(e):.1f}" y="{y0 + 16}" text-anchor="middle">{e}</text>')  # fmt: skip
        for v in y_ticks:
            out.append(f'<line x1="{x0 - 4}" y1="{py(v):.1f}" x2="{x1}" y2="{py(v):.1f}" stroke="#ddd"/>'
                       f'<text x="{x0 - 7}" y="{py(v) + 4:.1f}" text-anchor="end">{_label(v)}</text>')  # fmt: skip
        out.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 8}" text-anchor="middle">epoch</text>'
        )
        out.append(f'<text x="{n * width + 14}" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 {n * width + 14} {(y0 + y1) / 2:.1f})">loss</text>')  # fmt: skip
        for k, (part, pts) in enumerate(series.items()):
            if not pts:
                continue
            color, dash, marker = styles[part]
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            dashed = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline class="{part}" points="{coords}" fill="none" stroke="{color}" '
                       f'stroke-width="1.8"{dashed}/>')  # fmt: skip
            for x, y in pts:
                if marker == "circle":
                    out.append(
                        f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>'
                    )
                else:
                    out.append(f'<rect x="{px(x) - 3.5:.1f}" y="{py(y) - 3.5:.1f}" width="7" '
                               f'height="7" fill="{color}"/>')  # fmt: skip
            lx = x1 - 120 + 62 * k  # the legend: on the title's line, right
            out.append(f'<line x1="{lx}" y1="{y1 - 8}" x2="{lx + 18}" y2="{y1 - 8}" stroke="{color}" '
                       f'stroke-width="1.8"{dashed}/><text x="{lx + 22}" y="{y1 - 4}">{part}</text>')  # fmt: skip
    out.append("</svg>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out) + "\n")
    return path


def plot_weights(
    history: list[dict[str, float]], tasks: list[str], path: Path, method: str
) -> Path:
    """The task weights per epoch (the MLflow artifact ``weights.png``)."""
    with figure(path, (6, 3.5)) as ax:
        epochs = [h["epoch"] for h in history]
        for t in tasks:
            ax.plot(epochs, [h[f"weight/{t}"] for h in history], marker="o", label=t)
        ax.set(xlabel="epoch", ylabel="mean task weight", title=f"task weights ({method})")
        ax.xaxis.set_major_locator(_pyplot().MaxNLocator(integer=True))
        ax.legend()
    return path


# --------------------------------------------------------------------------------------------
# Comparing runs, cold start, tuning studies


def plot_runs(records: list[dict[str, Any]], x: str, y: str, path: Path) -> Path:
    """Metric ``y`` against metric ``x``, one point per run (``recsys-mtl compare --plot``),
    coloured by the run's kind and labelled with its name."""
    with figure(path, (6.5, 4.5)) as ax:
        for kind in sorted({r["kind"] for r in records}):
            sel = [r for r in records if r["kind"] == kind]
            ax.scatter([r[x] for r in sel], [r[y] for r in sel], label=kind, alpha=0.8)
        for r in records:
            ax.annotate(r["run"], (r[x], r[y]), fontsize=7, alpha=0.7)
        ax.set(xlabel=x, ylabel=y, title=f"{len(records)} runs")
        ax.legend()
    return path


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_FLOOR_GREYS = ("0.2", "0.45", "0.65")
_FLOOR_DASHES = ("--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)))


def method_styles(kinds: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One line style per method (``{name: "floor" | "learner"}``), no two alike: learners
    solid in colours, floors dashed in greys, each with its own marker."""
    palette = [f"C{i}" for i in range(10) if i != 7]  # tab10 without its grey (the floors')
    out: dict[str, dict[str, Any]] = {}
    n_learner = n_floor = 0
    for name, kind in kinds.items():
        if kind == "floor":
            i, n_floor = n_floor, n_floor + 1
            out[name] = {
                "color": _FLOOR_GREYS[i % len(_FLOOR_GREYS)],
                "linestyle": _FLOOR_DASHES[(i // len(_FLOOR_GREYS)) % len(_FLOOR_DASHES)],
                "marker": _MARKERS[-1 - i % len(_MARKERS)],
                "linewidth": 1.2,
            }
        else:
            i, n_learner = n_learner, n_learner + 1
            out[name] = {
                "color": palette[i % len(palette)],
                "linestyle": "-",
                "marker": _MARKERS[i % len(_MARKERS)],
                "linewidth": 1.8,
            }
    return out


def mae_vs_k_figure(rows: list[dict[str, Any]]) -> Any:
    """The figure of :func:`plot_mae_vs_k`, laid out and not yet saved."""
    plt = _pyplot()
    by: dict[str, list[tuple[int, float]]] = {}
    kinds: dict[str, str] = {}
    for r in rows:
        k = r["labels"]["k"] if r["labels"]["k"] is not None else 0
        by.setdefault(r["labels"]["learner"], []).append((k, r["metrics"]["rating/mae"]))
        kinds[r["labels"]["learner"]] = r["labels"]["kind"]
    order = sorted(kinds, key=lambda n: (kinds[n] == "floor", n))  # learners first
    styles = method_styles({n: kinds[n] for n in order})
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    handles: dict[str, list[Any]] = {"learner": [], "floor": []}
    for name in order:
        pts = sorted(by[name])
        (line,) = ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], label=name, markersize=5, **styles[name]
        )
        handles["floor" if kinds[name] == "floor" else "learner"].append(line)
    ax.set(
        xlabel="support size K", ylabel="query MAE (held-out users)", title="cold start: MAE vs K"
    )
    ax.grid(True, alpha=0.3)
    outside = {"fontsize": 7, "title_fontsize": 8, "borderaxespad": 0.0, "frameon": False}
    legends = []
    if handles["learner"]:
        legends.append(
            ax.legend(handles=handles["learner"], title="learners (solid)", loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), **outside)
        )  # fmt: skip
    if handles["floor"]:
        if legends:
            ax.add_artist(legends[0])
        ax.legend(handles=handles["floor"], title="floors (dashed)", loc="lower left",
                  bbox_to_anchor=(1.02, 0.0), **outside)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_mae_vs_k(rows: list[dict[str, Any]], path: Path) -> Path:
    """MAE against K for every learner (solid, in colours) and floor (dashed, in greys) of a
    cold-start evaluation, each method with its own marker, the legends outside the axes
    (rows of :func:`meta.evaluate.evaluate_coldstart`; the MLflow artifact ``mae_vs_k.png``)."""
    return save_figure(mae_vs_k_figure(rows), path)


def plot_study(study: Any, names: list[str], out: Path) -> list[Path]:
    """A study's optimization history, parameter importances and intermediate values (one
    objective) or Pareto front and one history per objective (several), as PNGs in ``out``.
    A plot Optuna cannot draw for this study (e.g. no variance) is left out with a log line."""
    _pyplot()  # the Agg backend before Optuna's plots load pyplot
    # deferred: Optuna's matplotlib plots (optuna) load only when a study has finished trials
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], Any]]] = []
    if len(names) == 1:
        jobs.append(
            (
                "optimization_history",
                lambda: ovm.plot_optimization_history(study, target_name=names[0]),
            )
        )
        jobs.append(("intermediate_values", lambda: ovm.plot_intermediate_values(study)))
        if len(complete) >= 2 and complete[0].params:
            jobs.append(("param_importances", lambda: ovm.plot_param_importances(study)))
    else:
        jobs.append(("pareto_front", lambda: ovm.plot_pareto_front(study, target_names=names[:3])))
        for i, n in enumerate(names):
            jobs.append(
                (
                    f"optimization_history_{i}",
                    lambda i=i, n=n: ovm.plot_optimization_history(
                        study, target=lambda t: t.values[i], target_name=n
                    ),
                )
            )
    written = []
    for fname, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            written.append(save_figure(fig, out / f"{fname}.png", dpi=90, size=(8, 5)))
        except Exception as e:  # a plot Optuna cannot draw for this study (e.g. no variance)
            log.info("tune: no %s plot (%s)", fname, e)
    return written


# --------------------------------------------------------------------------------------------
# Continual training (recsys-mtl stream)


def plot_stream(
    curves: dict[str, dict[int, float]], costs: dict[str, float], metric: str, path: Path
) -> Path:
    """Next-period ``metric`` per period, one line per strategy (``curves``: strategy ->
    {period: value}), beside each strategy's total update cost relative to a full retrain
    (``costs``: strategy -> rows x epochs ratio; a strategy without one is left out)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), width_ratios=(2.2, 1))
    names = sorted(curves)
    styles = method_styles({n: "floor" if n in ("none", "full") else "learner" for n in names})
    for name in names:
        pts = sorted(curves[name].items())
        left.plot([p for p, _ in pts], [v for _, v in pts], label=name, **styles[name])
    left.set(xlabel="period", ylabel=metric, title=f"next-period {metric}")
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend(fontsize=8)
    shown = [n for n in names if n in costs]
    right.barh(shown, [costs[n] for n in shown], color="0.5")
    right.set(xlabel="update cost / full retrain (rows x epochs)", title="cost")
    return save_figure(fig, path)
