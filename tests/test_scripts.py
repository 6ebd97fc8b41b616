"""Every model script trains a few steps on tiny settings, writes its run folder, and resumes exactly."""

import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, SCRIPT_ENV, read_metrics, train_script

# Per script: tiny network flags that keep a step cheap. A new script joins the suite with one line.
SCRIPTS = {
    "dcgan": ["--ngf", 8, "--ndf", 8],
    "cgan": ["--ngf", 8, "--ndf", 8],
    "began": ["--n_filters", 4, "--h_dim", 8],
    "cogan": ["--ngf", 8, "--ndf", 8],
    "lsgan": ["--ngf", 8, "--ndf", 8],
    "wgan": ["--ngf", 8, "--ndf", 8, "--n_critic_boost", 0],
    "wgan_gp": ["--ngf", 8, "--ndf", 8],
}
TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--sample_interval", 2]


@pytest.mark.parametrize("script", SCRIPTS)
def test_trains_and_writes_run_folder(script, tmp_path):
    run = train_script(script, tmp_path, *TINY, *SCRIPTS[script], "--n_iters", 3)

    rows = read_metrics(run.dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for row in rows:
        assert all(math.isfinite(float(v)) for v in row.values()), row

    samples = sorted(p.name for p in (run.dir / "samples").iterdir())
    assert samples == ["0000002.png", "0000003.png"]  # every --sample_interval steps, and at the end
    width, height = Image.open(run.dir / "samples" / samples[-1]).size
    assert (width - 2) % (16 + 2) == 0 and (height - 2) % (16 + 2) == 0  # a grid of 16x16 tiles

    checkpoint = torch.load(run.checkpoint_path, weights_only=False)
    assert {"generator", "discriminator", "optimizer_G", "optimizer_D", "step", "epoch", "args"} <= set(checkpoint)
    assert checkpoint["step"] == 3 and checkpoint["args"]["img_size"] == 16
    assert (run.dir / "config.json").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_continues_exactly(script, tmp_path):
    straight = train_script(script, tmp_path / "a", *TINY, *SCRIPTS[script], "--n_iters", 5)
    first = train_script(script, tmp_path / "b", *TINY, *SCRIPTS[script], "--n_iters", 3)
    resumed = train_script(script, tmp_path / "c", "--resume", first.dir, "--n_iters", 5)

    assert resumed.dir == first.dir  # a resumed run keeps writing into its own folder
    assert torch.load(resumed.checkpoint_path, weights_only=False)["step"] == 5
    assert read_metrics(resumed.dir) == read_metrics(straight.dir)


@pytest.mark.parametrize("script", SCRIPTS)
def test_command_line(script, tmp_path):
    """The script runs as a program: training, and a bad flag answered in one line with exit code 2."""
    args = [sys.executable, str(ROOT / f"{script}.py"), *map(str, TINY + SCRIPTS[script])]
    done = subprocess.run(args + ["--n_iters", "1", "--out", str(tmp_path)], capture_output=True, text=True, env=SCRIPT_ENV)
    assert done.returncode == 0, done.stderr
    assert "done: 1 generator steps" in done.stdout

    bad = subprocess.run(args + ["--batch_size", "0"], capture_output=True, text=True, env=SCRIPT_ENV)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--batch_size" in bad.stderr and "Traceback" not in bad.stderr
