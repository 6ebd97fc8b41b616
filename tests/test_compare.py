"""The run plots (losses.png, progress.gif) and tools/compare.py: two tiny scripts compared end to end, with
a third that fails; reuse of finished runs; --plot; the critic pictures; bad input."""

import json
import shutil
import sys

import pytest
from matplotlib.figure import Figure
from PIL import Image

import common
import plots
from conftest import ROOT, train_script
from test_scripts import SCRIPTS, TINY

sys.path.insert(0, str(ROOT / "tools"))
import compare

# Flags for every compared script: tiny nets, and few fakes per score.
TINY_FLAGS = "--batch_size 8 --latent_dim 8 --ngf 8 --ndf 8 --sample_interval 2 --fid_samples 64"


@pytest.fixture(scope="module")
def scoring_root(tmp_path_factory):
    """A --data_root whose fid_stats cache the module shares, so the FCD classifier trains once."""
    return tmp_path_factory.mktemp("scoring_data")


@pytest.mark.plots
@pytest.mark.parametrize(
    "script, panel",
    [("dcgan", "mean discriminator output"), ("wgan", "Wasserstein"), ("began", "convergence measure M")],
)
def test_save_plots_draws_the_losses_and_the_progress(script, panel, tmp_path):
    run = train_script(script, tmp_path, *TINY, *SCRIPTS[script], "--n_iters", 6)
    for name in ("losses.png", "progress.gif"):  # drawn by finish() at the end; drawn again on demand
        (run.dir / name).unlink(missing_ok=True)

    assert sorted(path.name for path in plots.save_plots(run.dir)) == ["losses.png", "progress.gif"]
    with Image.open(run.dir / "losses.png") as image:
        assert image.format == "PNG" and image.width >= 600
    with Image.open(run.dir / "progress.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 3  # the grids of steps 2, 4 and 6
    titles = [title for title, _, _ in plots.loss_panels(plots.metrics_series(run.dir))]
    assert titles[0] == "losses" and any(panel in title for title in titles)


@pytest.mark.plots
def test_progress_gif_keeps_at_most_sixty_frames(tmp_path):
    run = train_script("dcgan", tmp_path, *TINY, *SCRIPTS["dcgan"], "--n_iters", 2)
    grid = run.dir / "samples" / "0000002.png"
    for step in range(4, 302, 2):
        shutil.copy(grid, grid.with_name(f"{step:07d}.png"))

    plots.save_plots(run.dir)
    with Image.open(run.dir / "progress.gif") as gif:
        assert gif.n_frames == plots.GIF_FRAMES


@pytest.mark.plots
def test_a_plot_that_cannot_be_written_costs_one_warning_line(tmp_path, capsys):
    run = train_script("dcgan", tmp_path, *TINY, *SCRIPTS["dcgan"], "--n_iters", 2)
    (run.dir / "losses.png").unlink(missing_ok=True)
    (run.dir / "losses.png").mkdir()  # savefig cannot write over a folder
    capsys.readouterr()

    assert [path.name for path in plots.save_plots(run.dir)] == ["progress.gif"]
    err = capsys.readouterr().err
    assert err.startswith("warning: no losses.png") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """A folder of links to the real dcgan.py and lsgan.py and the modules they import, and a cgan.py
    that crashes at once; compare.py runs the scripts it finds there."""
    folder = tmp_path_factory.mktemp("scripts")
    for name in ("dcgan.py", "lsgan.py", "common.py", "scoring.py", "plots.py", "folders.py", "anime.py"):
        (folder / name).symlink_to(ROOT / name)
    crash = (
        "import sys\nprint('Traceback (most recent call last):\\nRuntimeError: boom', file=sys.stderr)\nsys.exit(1)\n"
    )
    (folder / "cgan.py").write_text(crash)
    return folder


@pytest.fixture(scope="module")
def compared(tmp_path_factory, scoring_root, scripts):
    """compare.py on dcgan for 4 tiny steps, and on the cgan.py that crashes (one real script is enough: a second
    would cost seconds of starting a process and importing torch)."""
    out = tmp_path_factory.mktemp("compare")
    argv = ["--scripts", "dcgan", "cgan", "--img_size", "16", "--steps", "4", "--evals", "2"]
    argv += ["--script_args", TINY_FLAGS, "--out", str(out), "--data_root", str(scoring_root)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "ROOT", scripts)
        compare.main(compare.parse_args(argv))
        yield out / "digits", lambda: compare.main(compare.parse_args(argv))


def test_compare_writes_the_table_and_figures(compared):
    folder, _ = compared
    table = (folder / "results.md").read_text()
    rows = {
        line.split("|")[2].strip(): line for line in table.splitlines() if line.startswith("| ") and "---" not in line
    }
    assert {"dcgan", "cgan", "*uniform noise*"} <= set(rows)
    cells = [cell.strip() for cell in rows["dcgan"].split("|")[1:-1]]
    assert cells[2] == "4" and float(cells[4]) > 0  # steps, FCD
    image = cells[-1].split('src="')[1].split('"')[0]
    assert (folder / image).is_file()
    run_dir = (folder / image).parent.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 4
    assert json.loads((run_dir / "config.json").read_text())["img_size"] == 16  # compare.py's one size for all
    scored = plots.metrics_series(run_dir)["fcd"][0]
    assert list(scored) == [2, 4]  # --evals 2: every 2 steps, the last at the end
    assert "failed" in rows["cgan"] and "RuntimeError: boom" in rows["cgan"]
    for name in ("grids.png", "quality_vs_time.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG"


def test_compare_reuses_finished_runs(compared, capsys):
    folder, again = compared
    runs = sorted((folder / "runs").iterdir())
    capsys.readouterr()
    again()

    out = capsys.readouterr().out
    assert "dcgan: reusing" in out and "cgan: FAILED: RuntimeError: boom" in out
    assert sorted((folder / "runs").iterdir()) == runs  # nothing trained again


@pytest.mark.plots
def test_plot_redraws_one_run(compared, capsys):
    folder, _ = compared
    run_dir = next((folder / "runs").glob("dcgan_*"))
    (run_dir / "losses.png").unlink(missing_ok=True)
    compare.main(compare.parse_args(["--plot", str(run_dir)]))
    assert (run_dir / "losses.png").is_file() and str(run_dir / "losses.png") in capsys.readouterr().out


def test_critic_pictures(tmp_path):
    runs = {
        script: train_script(script, tmp_path, *TINY, *SCRIPTS[script], "--n_iters", 4, "--log_grad_norms").dir
        for script in ("wgan", "wgan_gp")
    }
    written = compare.plot_critics(runs, tmp_path, Figure)
    assert list(written) == ["critic_weights.png", "critic_grad_norms.png"]
    for name in written:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scripts", "dcgan", "nosuch"], "invalid choice: 'nosuch'"),
        (["--script_args", "nosuch: --lr 1"], "'nosuch' is not a script"),
        (["--script_args", "--n_iters 5"], "compare.py sets --n_iters itself"),
        (["--script_args", "began: --img_size 16"], "compare.py sets --img_size itself"),
        (["--script_args", "--lr '1"], "No closing quotation"),
        (["--steps", "5", "--minutes", "1"], "not allowed with argument"),
        (["--steps", "0"], "out of range"),
        (["--script_args", "--n_epochs 2"], "compare.py sets --n_epochs itself"),  # the budget is in steps
        (["--script_args", "dcgan: --n_it 5"], "compare.py sets --n_iters itself"),  # an abbreviation of it
        (["--scr", "dcgan"], "unrecognized arguments: --scr"),  # no abbreviations of its own flags either
        (["--defaults", "--img_size", "32"], "--defaults trains each script at its own image size"),
        (["--defaults", "--steps", "5"], "not allowed with argument"),
        (["--script_args", "--ema 0"], "compare.py sets --ema itself"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        compare.parse_args(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and err.count("\n") == 1


def test_plot_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(common.UsageError, match="not a run folder"):
        compare.main(compare.parse_args(["--plot", str(tmp_path)]))


def test_missing_data_stops_the_comparison(tmp_path):
    """A script's usage error (exit code 2) would hit every script: compare.py stops with it, as a
    UsageError that common.main prints in one line with exit code 2."""
    missing = str(tmp_path / "missing")
    argv = ["--dataset", "folder", "--data_root", missing, "--scripts", "dcgan", "lsgan", "--out", str(tmp_path)]
    with pytest.raises(common.UsageError, match=r"^dcgan.py stopped: --data_root .*missing is not a folder"):
        compare.main(compare.parse_args(argv))
    assert not list((tmp_path / "folder" / "logs").glob("lsgan.*"))  # lsgan never started


def test_script_args_and_the_one_image_size():
    opt = compare.parse_args(["--script_args", "--lr 1e-3", "--script_args", "lsgan: --coding pearson"])
    assert opt.extra["dcgan"] == ["--lr", "1e-3"] and opt.extra["lsgan"] == ["--lr", "1e-3", "--coding", "pearson"]
    assert opt.img_size == 32 and compare.parse_args(["--dataset", "folder"]).img_size == 64


def test_a_time_budget_stops_each_run_and_scores_where_it_stopped(tmp_path, scoring_root, scripts, monkeypatch, capsys):
    """--minutes: the run trains until its time is up (a Ctrl-C: checkpoint, exit code 130), then
    `--resume RUN --n_iters STEP` trains nothing and scores it. Run again once its summary is lost, the
    spent budget only scores it again."""
    monkeypatch.setattr(compare, "ROOT", scripts)
    argv = ["--scripts", "dcgan", "--minutes", "0.05", "--evals", "1", "--img_size", "16"]
    argv += ["--script_args", TINY_FLAGS, "--out", str(tmp_path), "--data_root", str(scoring_root)]
    compare.main(compare.parse_args(argv))

    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "digits" / "runs").iterdir()
    step = common.load_checkpoint(run_dir)["step"]
    assert f"dcgan: 0.05 minutes are up at step {step}; scoring it" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == step and summary["fcd"] > 0
    assert list(plots.metrics_series(run_dir)["fcd"][0]) == [step]  # scored once, where it stopped
    assert common.load_checkpoint(run_dir)["args"]["n_iters"] == compare.TIME_BUDGET_STEPS  # the clock ended it
    assert f"| dcgan | {step} |" in (tmp_path / "digits" / "results.md").read_text()

    (run_dir / "summary.json").unlink()  # as if the comparison had been stopped while it scored
    compare.main(compare.parse_args(argv))
    assert f"dcgan: continuing {run_dir} from step {step}" in capsys.readouterr().out
    assert json.loads((run_dir / "summary.json").read_text())["step"] == step


def test_defaults_scores_g_alone_beside_its_average(tmp_path, scoring_root, scripts, monkeypatch):
    """--defaults: a run's grids and scores are G's average, and a copy of its checkpoint whose average is G
    scores G alone, as the same run trained with --ema 0 (G itself draws) does: the EMA costs no second run."""
    monkeypatch.setattr(compare, "ROOT", scripts)
    args = [*TINY, *SCRIPTS["dcgan"], "--n_iters", 30, "--fcd", "--fid_samples", 64, "--data_root", scoring_root]
    averaged = train_script("dcgan", tmp_path / "a", *args, "--ema", 0.9)
    plain = train_script("dcgan", tmp_path / "b", *args, "--ema", 0)
    alone = compare.score_g_itself("dcgan", averaged.dir, "--fcd", tmp_path, dict(script="dcgan", dataset="digits"))
    assert alone["step"] == 30 and alone["fcd"] == pytest.approx(plain.scorer.scores["fcd"], rel=1e-4)
    assert alone["fcd"] != pytest.approx(averaged.scorer.scores["fcd"], rel=1e-2)
    opt = compare.parse_args(["--defaults"])
    assert (
        opt.img_size is None
        and compare.budget_steps("began", opt)
        == compare.importlib.import_module("began").DATASET_DEFAULTS["digits"]["n_iters"]
    )
