"""Progress bars only on a terminal: in a log, a stage is one line (and short-lived bars print nothing)."""
import io
import sys

from vfscreen.utils import progress


def test_a_log_gets_one_line_per_stage(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)  # a StringIO is not a terminal
    assert list(progress.progress_bar(range(500), desc="grader crops", unit="case")) == list(range(500))
    with progress.progress_bar(total=3, desc="epoch 1/2", leave=False) as bar:
        for _ in range(3):
            bar.update()
            bar.set_postfix(loss="0.1")
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grader crops: 500/500 case in ")


def test_a_terminal_gets_tqdm(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert type(progress.progress_bar(range(3), desc="x")).__name__ == "tqdm"
    assert type(progress.progress_bar(range(3), desc="x", disable=True)).__name__ == "tqdm"
