"""The learning-curve chart: an SVG with one panel per task, each part's losses as a polyline
in epoch order (a higher loss drawn higher), ticks covering the data, no plotting library."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from itertools import pairwise
from pathlib import Path

import pytest

from pipelines.plots import _ticks, learning_curves

REPO = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


def _history(epochs: int = 4) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train/rating/loss": 1.0 - 0.1 * e,
            "valid/rating/loss": 1.1 - 0.05 * e,
            "train/like/loss": 0.6 - 0.02 * e,
        }
        for e in range(epochs)
    ]


def test_each_task_and_part_is_a_polyline_in_epoch_order_with_higher_loss_drawn_higher(tmp_path):
    path = learning_curves(_history(), ["rating", "like", "interaction"], tmp_path / "c.svg")
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    titles = [t.text for t in root.iter(f"{SVG}text") if t.text and t.text.endswith(": loss")]
    assert titles == ["rating: loss", "like: loss"]  # interaction has no losses: no panel
    lines = root.findall(f"{SVG}polyline")
    assert [ln.get("class") for ln in lines] == ["train", "valid", "train"]
    for line, values in zip(
        lines, ([1.0, 0.9, 0.8, 0.7], [1.1, 1.05, 1.0, 0.95], [0.6, 0.58, 0.56, 0.54]), strict=True
    ):
        pts = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        assert len(pts) == 4
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        assert xs == sorted(xs) and len(set(xs)) == 4
        # SVG y grows downwards: the falling losses go down the chart, in proportion
        assert ys == sorted(ys)
        # in proportion to the losses: pixels per unit of loss are the same along the curve
        scale = [
            (b - a) / (u - v) for (a, b), (u, v) in zip(pairwise(ys), pairwise(values), strict=True)
        ]
        assert max(scale) == pytest.approx(min(scale), rel=2e-2)
    # the valid curve of the rating panel sits above its train curve (higher loss)
    train_y = [float(p.split(",")[1]) for p in lines[0].get("points").split()]
    valid_y = [float(p.split(",")[1]) for p in lines[1].get("points").split()]
    assert all(v < t for v, t in zip(valid_y, train_y, strict=True))


def test_a_history_without_losses_draws_nothing(tmp_path):
    assert learning_curves([{"epoch": 0, "train/fit": 1.0}], ["rating"], tmp_path / "c.svg") is None
    assert not (tmp_path / "c.svg").exists()


@pytest.mark.parametrize(
    ("lo", "hi"), [(0.416, 0.811), (0.5, 0.5), (1.23, 1.24), (0.0, 7.0), (1e-4, 3e-4)]
)
def test_ticks_are_round_and_cover_the_range(lo, hi):
    ticks = _ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 7
    steps = {round(b - a, 9) for a, b in pairwise(ticks)}
    assert len(steps) == 1
    assert re.fullmatch(r"[125]0*", f"{steps.pop():.0e}".split("e")[0].replace(".", ""))


def test_drawing_the_curves_imports_no_plotting_library(tmp_path):
    code = (
        "import sys; from pathlib import Path; from pipelines.plots import learning_curves; "
        f"learning_curves([{{'epoch': 0, 'train/rating/loss': 1.0}}], ['rating'], Path({str(tmp_path / 'c.svg')!r})); "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "False"


def _coldstart_rows(n_learners: int = 9, n_floors: int = 4) -> list[dict]:
    rows = []
    methods = [(f"learner-{i}", "learner") for i in range(n_learners)]
    methods += [(f"floor-{i}", "floor") for i in range(n_floors)]
    for j, (name, kind) in enumerate(methods):
        for k in (None, 1, 5, 10):
            mae = 0.9 - 0.01 * j - 0.002 * (k or 20)
            rows.append({"labels": {"learner": name, "kind": kind, "k": k},
                         "metrics": {"rating/mae": mae}})  # fmt: skip
    return rows


def test_the_cold_start_plot_tells_13_methods_apart_with_the_legends_outside(tmp_path):
    """9 learners and 4 floors, as a cold-start run draws them."""
    from pipelines.plots import mae_vs_k_figure, plot_mae_vs_k

    rows = _coldstart_rows()
    fig = mae_vs_k_figure(rows)
    try:
        ax = fig.axes[0]
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert len(lines) == 13
        looks = {
            (str(ln.get_color()), str(ln.get_linestyle()), ln.get_marker()) for ln in lines.values()
        }
        assert len(looks) == 13  # no two methods drawn alike
        for name, ln in lines.items():  # floors dashed and grey, learners solid and coloured
            if name.startswith("floor"):
                assert ln.get_linestyle() != "-" and str(ln.get_color()).startswith("0.")
            else:
                assert ln.get_linestyle() == "-" and str(ln.get_color()).startswith("C")
        learner_colours = {str(lines[f"learner-{i}"].get_color()) for i in range(9)}
        assert len(learner_colours) == 9
        fig.canvas.draw()
        box = ax.get_window_extent()
        legends = [c for c in ax.get_children() if type(c).__name__ == "Legend"]
        assert [lg.get_title().get_text() for lg in legends] == [
            "learners (solid)",
            "floors (dashed)",
        ]
        width = fig.get_size_inches()[0] * fig.dpi
        for lg in legends:  # right of the axes, inside the figure: over no line
            extent = lg.get_window_extent()
            assert extent.x0 >= box.x1 and extent.x1 <= width + 1
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    path = plot_mae_vs_k(rows, tmp_path / "mae_vs_k.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
