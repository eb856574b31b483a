"""Training plots logged as MLflow artifacts: learning curves, and task weights when they move."""

from __future__ import annotations

from pathlib import Path

from recsys_mtl.io import atomic_path

__all__ = ["learning_curves", "weights_move"]


def weights_move(history: list[dict[str, float]], tasks: list[str], tol: float = 1e-6) -> bool:
    """Whether any task's mean weight changed between epochs (static weights never do)."""
    for t in tasks:
        values = [h[f"weight/{t}"] for h in history if f"weight/{t}" in h]
        if values and max(values) - min(values) > tol:
            return True
    return False


def learning_curves(history: list[dict[str, float]], tasks: list[str], path: Path) -> Path | None:
    """Per task, its train and validation loss per epoch on one chart (one panel per task)."""
    panels = [t for t in tasks if any(f"train/{t}/loss" in h for h in history)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, t in zip(axes[0], panels, strict=True):
        for part, style in (("train", "o-"), ("valid", "s--")):
            points = [
                (h["epoch"], h[f"{part}/{t}/loss"]) for h in history if f"{part}/{t}/loss" in h
            ]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=part)
        ax.set(xlabel="epoch", ylabel="loss", title=f"{t}: train and valid loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
