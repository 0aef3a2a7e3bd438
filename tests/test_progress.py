"""What a run shows while it works, as a log or a pipe receives it: plain lines on stderr, flushed at once."""
from __future__ import annotations

import time

import pytest

from compress1img.progress import Bar, each, stage, write


def test_a_stage_that_outlasts_its_delay_is_one_line_with_its_duration(capsys):
    with stage("exporting model.onnx", delay=0.05):
        time.sleep(0.3)
    with stage("something quick", delay=5):
        pass
    err = capsys.readouterr().err
    assert err.startswith("exporting model.onnx ... done in ") and err.endswith(" s\n") and err.count("\n") == 1


def test_a_line_written_during_a_stage_starts_a_line_of_its_own_and_the_stage_says_how_it_ended(capsys):
    with pytest.raises(RuntimeError):
        with stage("timing", delay=0.01):
            time.sleep(0.2)
            write("warning: the machine is busy")
            raise RuntimeError("boom")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "timing ..." and lines[1] == "warning: the machine is busy"
    assert lines[2].startswith("timing failed in ")


def test_outside_a_terminal_training_writes_a_line_every_tenth_of_its_steps_with_an_eta(capsys):
    bar = Bar("healing", 20, every=0.1)
    for step in range(20):
        bar.update(1, loss=f"{1 / (step + 1):.3f}")
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and lines[0] == "healing 0/20 steps ..."
    assert [line.split()[1] for line in lines[1:-1]] == [f"{n}/20" for n in range(2, 20, 2)]
    assert "ETA" in lines[1] and "loss" in lines[1]
    assert lines[-1].startswith("healing 20/20 steps done in ") and lines[-1].endswith("loss 0.050")


def test_a_resumed_bar_counts_from_where_it_stopped(capsys):
    with Bar("healing", 10, initial=6, every=0.1) as bar:
        bar.update(4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "healing 6/10 steps ..." and lines[-1].startswith("healing 10/10 steps done")


def test_a_counted_loop_without_periodic_lines_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr("compress1img.progress.DELAY", 0.01)
    for _ in each(range(3), "repairing", unit="layer"):
        time.sleep(0.1)
    assert capsys.readouterr().err.startswith("repairing 3 layers ... done in ")


def test_nothing_is_shown_when_progress_is_off_or_by_ranks_other_than_0(capsys, monkeypatch):
    with stage("exporting", shown=False, delay=0):
        time.sleep(0.1)
    Bar("healing", 4, shown=False, every=0.1).update(4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with stage("exporting", delay=0):
        time.sleep(0.1)
    with Bar("healing", 4, every=0.1) as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""
