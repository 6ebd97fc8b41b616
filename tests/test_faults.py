"""Faults injected into real runs: SIGKILL mid-training, a loss turning NaN, a full disk, --deterministic."""

import signal
import subprocess
import sys
import time

import pytest
import torch

import common
import dcgan
from conftest import ROOT, SCRIPT_ENV, read_metrics, train_script
from test_scripts import SCRIPTS
from test_scripts import TINY as SCRIPT_TINY

TINY = ["--img_size", 16, "--batch_size", 8, "--latent_dim", 8, "--ngf", 8, "--ndf", 8]


def test_sigkill_loses_at_most_checkpoint_interval_and_resume_is_exact(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "dcgan.py"),
        *map(str, TINY),
        "--checkpoint_interval",
        "5",
        "--n_iters",
        "100000",
        "--out",
        str(tmp_path / "killed"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SCRIPT_ENV)
    deadline = time.monotonic() + 120
    while True:
        found = list((tmp_path / "killed").glob("*/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) > 13:
            break
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no handler can run: only what was already on disk survives
    process.wait()
    run_dir = found[0].parent
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    logged = len(read_metrics(run_dir))
    assert saved % 5 == 0 and 0 <= logged - saved <= 5  # a kill costs at most one --checkpoint_interval

    resumed = train_script("dcgan", tmp_path / "unused", "--resume", run_dir, "--n_iters", saved + 4)
    straight = train_script("dcgan", tmp_path / "straight", *TINY, "--n_iters", saved + 4)
    assert read_metrics(resumed.dir) == read_metrics(straight.dir)  # no duplicated or missing rows, same losses


def test_nan_stops_before_it_is_saved(tmp_path, monkeypatch):
    first = train_script("dcgan", tmp_path, *TINY, "--n_iters", 2)
    before = (first.dir / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(dcgan, "generator_loss", lambda logits: logits.mean() * float("nan"))
    with pytest.raises(
        common.Diverged, match=r"loss_G became nan at step 3: training diverged; --resume .* with a lower --lr"
    ):
        train_script("dcgan", tmp_path, "--resume", first.dir, "--n_iters", 5)
    assert (first.dir / "checkpoint.pt").read_bytes() == before
    assert [row["step"] for row in read_metrics(first.dir)] == ["1", "2"]


def poison_second_batch(monkeypatch):
    """Make the second batch each stream hands out all NaN, in every script and every domain."""
    clean = common.Batches.__iter__

    def batches(self):
        for images, labels in clean(self):
            yield (images * float("nan") if self.taken == 2 else images), labels

    monkeypatch.setattr(common.Batches, "__iter__", batches)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_nan_batch_stops_every_script_before_it_is_saved(script, tmp_path, monkeypatch):
    poison_second_batch(monkeypatch)
    args = [*SCRIPT_TINY, *SCRIPTS[script], "--n_critic", 1, "--n_iters", 4, "--checkpoint_interval", 1]
    with pytest.raises(common.Diverged, match="at step 2: training diverged; --resume .* with a lower --lr"):
        train_script(script, tmp_path, *args)
    (run_dir,) = tmp_path.iterdir()
    assert [row["step"] for row in read_metrics(run_dir)] == ["1"]  # the NaN row is never written
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 1  # nor saved


def test_nan_on_the_command_line_is_one_line_exit_1(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "dcgan.py"),
            *map(str, TINY),
            "--lr",
            "1e30",
            "--n_iters",
            "50",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=SCRIPT_ENV,
    )
    assert done.returncode == 1, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "training diverged" in error and "Traceback" not in done.stderr


def test_deterministic_flag_runs_and_same_seed_same_metrics(tmp_path):
    a = train_script("dcgan", tmp_path / "a", *TINY, "--n_iters", 3, "--deterministic")
    b = train_script("dcgan", tmp_path / "b", *TINY, "--n_iters", 3)
    assert read_metrics(a.dir) == read_metrics(b.dir)
    torch.use_deterministic_algorithms(False)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = train_script("dcgan", tmp_path, *TINY, "--n_iters", 2)
    before = (first.dir / "checkpoint.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        common.UsageError,
        match="could not write .*checkpoint.pt .No space left on device.: free disk space, then --resume",
    ):
        train_script("dcgan", tmp_path, "--resume", first.dir, "--n_iters", 4)
    assert (first.dir / "checkpoint.pt").read_bytes() == before
    assert not list(first.dir.glob("*.tmp"))


def test_out_of_gpu_memory_suggests_a_smaller_batch(capsys):
    def train(opt):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(SystemExit) as exit:
        common.main(train, lambda: None)
    assert exit.value.code == 1
    assert "out of memory: pass a smaller --batch_size" in capsys.readouterr().err


def test_a_signal_during_a_step_skips_the_scoring_due_then_and_stops(tmp_path, monkeypatch):
    """SIGTERM before a long scoring pass at --fid_interval is honoured before it, not after."""
    log = common.Run.log

    def signalled_at_step_2(run, step, **values):
        run.signalled = run.signalled or step == 2  # as if SIGTERM arrived while step 2 trained
        log(run, step, **values)

    monkeypatch.setattr(common.Run, "log", signalled_at_step_2)
    monkeypatch.setattr("scoring.Scorer.score", lambda *args: pytest.fail("scored after the signal"))
    monkeypatch.setattr("scoring.train_classifier.__defaults__", (20, 64))  # the classifier is not what is tested
    with pytest.raises(KeyboardInterrupt):
        scoring = ["--fcd", "--fid_interval", 2, "--fid_samples", 16, "--data_root", tmp_path / "data"]
        train_script("dcgan", tmp_path / "runs", *TINY, "--n_iters", 10, *scoring)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2
