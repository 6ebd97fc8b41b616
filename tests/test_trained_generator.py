"""Using a trained generator: --interpolate's latent walks in every script, what --generate and --interpolate
refuse (one line, exit code 2, nothing written), and the README's snippet that rebuilds G from a checkpoint,
run exactly as printed."""

import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

import dcgan
import plots
from conftest import ROOT, read_metrics, skip_plots, train_script
from test_bad_input import run_cli
from test_scripts import SCRIPTS, TINY

TILE = 16 + 2  # TINY's images and the grids' padding


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-step run of each script in <folder>/runs, shared by the tests here: {script: run folder}."""
    out = tmp_path_factory.mktemp("trained") / "runs"
    with pytest.MonkeyPatch.context() as patch:  # the autouse fixture that skips the plots is per test
        patch.setattr(plots, "save_plots", skip_plots)
        return {script: train_script(script, out, *TINY, *SCRIPTS[script], "--n_iters", 2).dir for script in SCRIPTS}


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=int)


@pytest.mark.parametrize("script", SCRIPTS)
def test_interpolate_draws_walks_between_fixed_noise_without_training(script, runs, capsys):
    run_dir, before = runs[script], read_metrics(runs[script])
    train_script(script, run_dir.parent, "--resume", run_dir, "--interpolate", 3)
    rows, columns = {"cgan": (10, 3), "cogan": (8, 2 * 3)}.get(script, (8, 3))  # cgan: a class a row; cogan: pairs
    assert pixels(run_dir / "interpolation.png").shape == (2 + TILE * rows, 2 + TILE * columns)
    with Image.open(run_dir / "interpolation.gif") as gif:
        assert gif.n_frames == 4 and gif.info["loop"] == 0  # three frames there, one on the way back, for ever
    assert f"latent walks of 3 frames at step 2: {run_dir / 'interpolation.png'} and " in capsys.readouterr().out
    assert read_metrics(run_dir) == before and torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2


def test_the_walks_run_from_the_first_eight_fixed_noise_vectors_to_the_next_eight(runs, tmp_path):
    """Two frames, the ends alone: G's average at fixed_z[:8] and fixed_z[8:16], in evaluation mode."""
    train_script("dcgan", runs["dcgan"].parent, "--resume", runs["dcgan"], "--interpolate", 2)
    checkpoint = torch.load(runs["dcgan"] / "checkpoint.pt", weights_only=True)
    average = dcgan.Generator(8, 1, 16, 8)
    average.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["ema_G"].items() if k != "n_averaged"})
    with torch.no_grad():
        ends = torch.stack([average.eval()(checkpoint["fixed_z"][i : i + 8]) for i in (0, 8)], 1)
    save_image(ends.flatten(0, 1), tmp_path / "ends.png", nrow=2, normalize=True, value_range=(-1, 1))
    assert np.abs(pixels(runs["dcgan"] / "interpolation.png") - pixels(tmp_path / "ends.png")).max() <= 1


def test_slerp_keeps_the_norm_between_its_ends_and_is_a_line_where_no_arc_exists():
    a, b = torch.randn(2, 4, 100).unbind()
    b = b * a.norm(dim=-1, keepdim=True) / b.norm(dim=-1, keepdim=True)
    t = torch.linspace(0, 1, 5)[:, None, None]
    walk = plots.slerp(a, b, t)
    assert torch.allclose(walk[0], a, atol=1e-5) and torch.allclose(walk[-1], b, atol=1e-5)
    assert torch.allclose(walk.norm(dim=-1), a.norm(dim=-1).expand(5, 4), rtol=1e-5)  # the line would dip to 0.7x
    assert torch.allclose(plots.slerp(a, 2 * a, t), torch.lerp(a, 2 * a, t))  # parallel: the arc is the line
    one = torch.ones(1, 1)  # --latent_dim 1: every pair is parallel or opposite, and no arc exists
    assert torch.equal(plots.slerp(one, -2 * one, t), torch.lerp(one, -2 * one, t))
    assert torch.equal(plots.slerp(one, 3 * one, t), torch.lerp(one, 3 * one, t))


# (script, args built from the runs and a tmp_path, words the one line must contain)
REFUSALS = {
    "interpolate without a checkpoint": ("dcgan", lambda r, p: ["--interpolate", 4], "--interpolate draws from a"),
    "generate without a checkpoint": ("cogan", lambda r, p: ["--generate", 4], "--generate draws from a"),
    "interpolate from no checkpoint": ("dcgan", lambda r, p: ["--resume", p, "--interpolate", 4], "no such checkpoint"),
    "one frame": ("dcgan", lambda r, p: ["--resume", r["dcgan"], "--interpolate", 1], "--interpolate: 1 is out of"),
    "a thousand frames": ("dcgan", lambda r, p: ["--resume", r["dcgan"], "--interpolate", 1000], "< 1000"),
    "interpolate another script's run": (
        "wgan",
        lambda r, p: ["--resume", r["dcgan"], "--interpolate", 4],
        "written by dcgan.py, not wgan.py",
    ),
    "generate from another script's run": (
        "lsgan",
        lambda r, p: ["--resume", r["cgan"], "--generate", 4],
        "written by cgan.py, not lsgan.py",
    ),
    "generate and interpolate": (
        "dcgan",
        lambda r, p: ["--resume", r["dcgan"], "--generate", 4, "--interpolate", 4],
        "--interpolate: not allowed with argument --generate",
    ),
    "a class and every class": (
        "cgan",
        lambda r, p: ["--resume", r["cgan"], "--label", 1, "--interpolate", 4],
        "--label",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_what_generate_and_interpolate_cannot_do_is_one_line_and_exit_2(case, runs, tmp_path, capsys):
    script, make_args, words = REFUSALS[case]
    written = {script: sorted(run_dir.rglob("*")) for script, run_dir in runs.items()}
    assert run_cli(script, make_args(runs, tmp_path), tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err and "Traceback" not in err, err
    assert {script: sorted(run_dir.rglob("*")) for script, run_dir in runs.items()} == written
    assert not (tmp_path / "runs").exists()


def test_interpolate_without_plots_py_names_the_file_to_copy(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "plots", None)  # as a script copied alone with common.py
    assert run_cli("dcgan", ["--resume", runs["dcgan"], "--interpolate", 4], tmp_path) == 2
    assert "--interpolate and --tensorboard need plots.py: copy it" in capsys.readouterr().err


def test_the_readme_snippet_rebuilds_g_from_a_checkpoint_as_printed(runs, monkeypatch):
    """The README's one Python snippet, run as printed in the folder that holds runs/: it loads G's average,
    which then draws the run's last grid again, pixel for pixel."""
    (snippet,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    monkeypatch.chdir(runs["dcgan"].parent.parent)
    namespace = {}
    exec(snippet, namespace)
    checkpoint = torch.load(runs["dcgan"] / "checkpoint.pt", weights_only=True)
    assert namespace["images"].shape == (64, 1, 16, 16) and pixels("fakes.png").shape == (2 + TILE * 8,) * 2
    with torch.no_grad():
        again = namespace["G"](checkpoint["fixed_z"])
    save_image(again, "again.png", nrow=8, normalize=True, value_range=(-1, 1))
    assert np.array_equal(pixels("again.png"), pixels(runs["dcgan"] / "samples" / "0000002.png"))


def test_the_readme_starts_where_a_user_starts():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    first = "\n".join(lines[:30])
    for command in ("pip install -r requirements.txt && python dcgan.py", "--dataset anime", "--dataset folder"):
        assert command in first, command
    assert "python -m pytest -q" in "\n".join(lines) and "LICENSE" in "\n".join(lines)
