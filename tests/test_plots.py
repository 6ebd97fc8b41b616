"""plots.py on run folders written by hand: no training (test_evaluation.py draws a real run's plots)."""

import sys

import numpy as np
import pytest
from PIL import Image

import plots


def run_folder(path):
    """A run folder as a run leaves it: metrics.csv (its last row cut short by a live run), scores.csv
    and two sample grids."""
    path.mkdir()
    (path / "metrics.csv").write_text("step,loss_D,loss_G,seconds\n1,1.5,0.7,0.1\n2,1.25,0.75,0.2\n3,1.")
    (path / "scores.csv").write_text("step,fid,seconds\n2,40.5,0.3\n")
    (path / "samples").mkdir()
    for step, colour in ((1, "gray"), (2, "white")):
        Image.new("RGB", (20, 20), colour).save(path / "samples" / f"{step:07d}.png")
    return path


def test_metrics_and_scores_are_read_as_series(tmp_path):
    series = plots.metrics_series(run_folder(tmp_path / "run"))
    assert sorted(series) == ["fid", "loss_D", "loss_G", "seconds"]  # scores.csv's own seconds are not a series
    assert np.array_equal(series["loss_D"][1], [1.5, 1.25])  # the row cut short is skipped
    assert np.array_equal(series["fid"][0], [2]) and np.array_equal(series["fid"][1], [40.5])
    titles = [title for title, _, _ in plots.loss_panels(series)]
    assert titles == ["losses", "FID (Inception features; lower is better)"]


@pytest.mark.plots
def test_without_matplotlib_the_gif_is_drawn_and_one_line_says_why_not_the_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run = run_folder(tmp_path / "run")
    assert plots.save_plots(run) == [run / "progress.gif"]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: no losses.png") and line.endswith("(pip install matplotlib)")
    with Image.open(run / "progress.gif") as gif:
        assert gif.n_frames == 2
