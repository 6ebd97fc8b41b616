"""Shared test helpers: run a script in-process on tiny settings, make image folders."""

import csv
import importlib
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"

# The environment for running a script as a program: it imports common.py from the repo root.
SCRIPT_ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def train_script(name, out, *args):
    """Parse `args` as the script's command line (plus --out) and train in-process; returns the Run."""
    module = importlib.import_module(name)
    opt = module.parse_args(["--out", str(out), *map(str, args)])
    return module.train(opt)


def read_metrics(run_dir, name="metrics.csv"):
    """metrics.csv (or scores.csv) as a list of dicts, without `seconds`: the one column that differs
    between otherwise identical runs."""
    with open(run_dir / name, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def log_sigmoid(x):
    """log(1 / (1 + e^-x)), by hand: the tests' reference for the cross-entropy losses."""
    return -math.log1p(math.exp(-x))


def write_images(folder, count, size=(12, 10), mode="RGB", start=0):
    """Write `count` random images into `folder` (created), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    for i in range(start, start + count):
        array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(folder / f"img{i:04d}.png")
    return folder


@pytest.fixture(autouse=True)
def no_plots_at_finish(monkeypatch):
    """Every run draws its plots at the end, two seconds each; the plot tests draw them explicitly."""
    import common

    monkeypatch.setattr(common.Run, "plots_at_finish", False)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
