"""The per-epoch progress bar: drawn on a terminal, silent otherwise; fit reports every step."""

from __future__ import annotations

import io

from recsys_mtl.train.callbacks import Callback, ProgressCallback
from tests.recsys_mtl.train.test_callbacks_and_devices import _fit


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_fit_reports_every_step_to_callbacks_that_ask_for_steps():
    class Steps(Callback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, epoch, step, steps):
            self.seen.append((epoch, step, steps))

    cb = Steps()
    _fit([cb], epochs=2)  # 300 rows, batches of 64: 5 steps an epoch
    assert cb.seen == [(e, s, 5) for e in range(2) for s in range(1, 6)]


def test_the_progress_bar_is_drawn_on_a_terminal_only():
    term, pipe = _Stream(tty=True), _Stream(tty=False)
    _fit([ProgressCallback(stream=term), ProgressCallback(stream=pipe)], epochs=2)
    drawn = term.getvalue()
    assert "\r    epoch 0:" in drawn and "\r    epoch 1:" in drawn and "/5 [" in drawn
    assert pipe.getvalue() == ""


def test_full_ranking_draws_a_bar_over_users_only_on_a_terminal(monkeypatch) -> None:
    import io
    import sys

    from recsys_mtl.train.evaluate import _progress_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, shown in ((Tty(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = _progress_bar(10, "    full ranking")
        for _ in range(2):
            bar.update(5)
        bar.close()
        assert ("full ranking" in stream.getvalue()) is shown
        assert ("/10 " in stream.getvalue()) is shown  # counted over the 10 users
