"""Every model script trains a few steps on tiny settings, writes its run folder, and resumes exactly."""

import ast
import importlib
import math
import re
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import common
import dcgan
from conftest import ROOT, SCRIPT_ENV, read_metrics, train_script, write_images

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

    checkpoint = torch.load(run.checkpoint_path, weights_only=True)  # tensors and plain values only
    assert {"generator", "discriminator", "optimizer_G", "optimizer_D", "batches", "step", "args"} <= set(checkpoint)
    assert checkpoint["step"] == 3 and checkpoint["args"]["img_size"] == 16
    assert checkpoint["ema_G"]["n_averaged"] == 3  # G's average moves on generator steps only (wgan: 5 D steps each)
    assert (run.dir / "config.json").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_continues_exactly(script, tmp_path):
    straight = train_script(script, tmp_path / "a", *TINY, *SCRIPTS[script], "--n_iters", 5, "--ema", 0.5)
    first = train_script(script, tmp_path / "b", *TINY, *SCRIPTS[script], "--n_iters", 3, "--ema", 0.5)
    resumed = train_script(script, tmp_path / "c", "--resume", first.dir, "--n_iters", 5)

    assert resumed.dir == first.dir  # a resumed run keeps writing into its own folder
    assert torch.load(resumed.checkpoint_path, weights_only=True)["step"] == 5
    assert read_metrics(resumed.dir) == read_metrics(straight.dir)
    averages = [torch.load(run.checkpoint_path, weights_only=True)["ema_G"] for run in (straight, resumed)]
    assert averages[0]["n_averaged"] == 5  # G's average, resumed from the checkpoint and not begun again
    assert all(torch.equal(a, b) for a, b in zip(*(average.values() for average in averages), strict=True))


@pytest.mark.parametrize("script", SCRIPTS)
def test_command_line(script, tmp_path, monkeypatch, capsys):
    """The script's __main__ block, run as `python script.py` runs it (in this process: a new one would spend
    seconds importing torch; the copy-alone and signal tests run dcgan.py as a program): it trains and says
    where its run is."""
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, TINY + SCRIPTS[script]), "--n_iters", "1"])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / f"{script}.py"), run_name="__main__")
    assert "done: 1 generator steps" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_a_bad_flag_as_a_program_is_one_line_and_exit_code_2():
    """As a program too (test_bad_input.py checks bad input to each script in-process, through the same
    common.main): one line, exit code 2, no traceback."""
    args = [sys.executable, str(ROOT / "dcgan.py"), "--batch_size", "0"]
    bad = subprocess.run(args, capture_output=True, text=True, env=SCRIPT_ENV)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--batch_size" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_amp_trains_and_resumes_in_both_half_precisions(script, half, tmp_path, monkeypatch):
    # bfloat16 is what CUDA GPUs from Ampere on (and CPUs) get; float16 adds the GradScalers, as on older GPUs.
    monkeypatch.setattr(common, "amp_dtype", lambda device: half)
    run = train_script(script, tmp_path, *TINY, *SCRIPTS[script], "--n_iters", 3, "--amp")
    rows = read_metrics(run.dir)
    assert len(rows) == 3 and all(math.isfinite(float(v)) for row in rows for v in row.values())
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert bool(checkpoint["scaler_D"]) == (half == torch.float16)  # the loss scale is resumed too
    train_script(script, tmp_path, "--resume", run.dir, "--n_iters", 4)
    assert len(read_metrics(run.dir)) == 4


@pytest.mark.parametrize("script", ["dcgan", "wgan_gp", "cogan"])  # plain, half compiled, shared layers
def test_compile_trains_with_the_same_checkpoint_keys(script, tmp_path, monkeypatch):
    # The default inductor backend generates C++ on CPU for minutes; aot_eager traces the same graphs, both ways.
    compile_in_place = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compile_in_place(self, backend="aot_eager"))
    compiled = train_script(script, tmp_path / "compiled", *TINY, *SCRIPTS[script], "--n_iters", 2, "--compile")
    eager = train_script(script, tmp_path / "eager", *TINY, *SCRIPTS[script], "--n_iters", 2)
    load = lambda run: torch.load(run.checkpoint_path, weights_only=True)  # noqa: E731
    assert load(compiled)["generator"].keys() == load(eager)["generator"].keys()
    for a, b in zip(read_metrics(compiled.dir), read_metrics(eager.dir)):
        assert all(float(a[k]) == pytest.approx(float(b[k]), rel=1e-3, abs=1e-4) for k in a)


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("decay", [0.5, 0.0])
def test_the_grids_are_drawn_by_the_average_of_g(decay, compile, tmp_path, monkeypatch):
    """--ema: G's moving average draws the grids (--ema 0: G itself), compiled or not. The scripts copy G before
    compiling it (in some torch versions a copy of a net compiled in place still runs the original)."""
    compile_in_place = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compile_in_place(self, backend="aot_eager"))
    drawn = []
    monkeypatch.setattr(common.Run, "save_grid", lambda self, images, name: drawn.append(images))
    flags = ["--n_iters", 3, "--ema", decay] + ["--compile"] * compile
    run = train_script("dcgan", tmp_path, *TINY, *SCRIPTS["dcgan"], *flags)
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    average, plain = dcgan.Generator(8, 1, 16, 8), dcgan.Generator(8, 1, 16, 8)
    average.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["ema_G"].items() if k != "n_averaged"})
    plain.load_state_dict(checkpoint["generator"])
    with torch.no_grad():
        expected, of_g = average.eval()(checkpoint["fixed_z"]), plain.eval()(checkpoint["fixed_z"])
    assert torch.allclose(drawn[-1], expected, atol=1e-6)
    assert torch.allclose(expected, of_g, atol=1e-6) == (decay == 0.0)


def test_the_average_draws_by_default_only_where_it_won_on_two_seeds():
    """docs/results.md's two-seed table: on the digits' default runs G's average beat G alone on seeds 0 and 1 for
    dcgan, lsgan, cgan, wgan_gp and began alone; elsewhere it lost on at least one seed, so G itself draws."""
    defaults = {script: importlib.import_module(script).parse_args([]).ema for script in SCRIPTS}
    assert defaults == dict(dcgan=0.995, lsgan=0.995, cgan=0.995, cogan=0.0, wgan=0.0, wgan_gp=0.995, began=0.995)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_needs_only_torch_and_common(script):
    """A student copies one script and common.py: nothing else of the repo may be imported at the top."""
    tree = ast.parse((ROOT / f"{script}.py").read_text())
    imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert imported <= {"argparse", "math", "torch", "common"}, imported


def test_a_script_copied_alone_with_common_trains_resumes_and_names_what_to_copy(tmp_path):
    for name in ("dcgan.py", "common.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {key: value for key, value in SCRIPT_ENV.items() if key != "PYTHONPATH"}
    command = [sys.executable, "dcgan.py", *map(str, TINY + SCRIPTS["dcgan"]), "--out", "runs"]
    done = subprocess.run([*command, "--n_iters", "2"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "copy plots.py beside this script" in done.stderr  # the plots are skipped, in one warning line
    (run_dir,) = (tmp_path / "runs").iterdir()
    resume = [sys.executable, "dcgan.py", "--resume", str(run_dir), "--n_iters", "3"]
    resumed = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert resumed.returncode == 0 and "done: 3 generator steps" in resumed.stdout, resumed.stderr


@pytest.mark.parametrize(
    "flags, module, message",
    [
        (["--fid"], "scoring", "--fid/--fcd/--swd, --save_fakes, --generate need scoring.py"),
        (["--dataset", "folder", "--data_root", "faces"], "folders", "--dataset folder and anime need folders.py"),
    ],
)
def test_a_script_without_an_optional_module_names_the_file_to_copy(
    flags, module, message, tmp_path, monkeypatch, capsys
):
    """As copied alone with common.py (importing a module that sys.modules holds as None fails as a missing file
    does): the flags that need the module are refused in one line."""
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "faces", 1)
    monkeypatch.setattr(sys, "argv", ["dcgan.py", *flags])
    with pytest.raises(SystemExit) as stopped:
        common.main(dcgan.train, dcgan.parse_args)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"dcgan.py: error: {message}: copy it from the repository beside this script\n"


def test_the_faces_defaults_are_the_steps_their_measured_curves_give():
    """docs/results.md names, for each script whose curve on the anime faces was measured, the steps its default
    trains ("### dcgan: 5,000 steps"); the scripts' defaults for anime and folders must be those."""
    measured = re.findall(r"^### (\w+): ([\d,]+) steps", (ROOT / "docs" / "results.md").read_text(), re.MULTILINE)
    assert measured, "docs/results.md names no measured anime default"
    for script, steps in measured:
        defaults = importlib.import_module(script).DATASET_DEFAULTS
        assert defaults["anime"]["n_iters"] == defaults["folder"]["n_iters"] == int(steps.replace(",", "")), script
