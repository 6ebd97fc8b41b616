"""Ctrl-C and SIGTERM: the step finishes, a checkpoint is written, the exit code is 130, and --resume goes on."""

import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, SCRIPT_ENV, read_metrics

ARGS = ["--img_size", "16", "--batch_size", "8", "--latent_dim", "8", "--ngf", "8", "--ndf", "8", "--n_iters", "100000"]


def logged_steps(run_folders):
    metrics = list(run_folders.glob("*/metrics.csv"))
    return len(metrics[0].read_text().splitlines()) - 1 if metrics else 0  # less the header


def stop_with(sig, command, run_folders, logged):
    """Start `command`; once its run has logged 3 steps more than `logged`, send it `sig`: it stops as it should."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SCRIPT_ENV)
    deadline = time.monotonic() + 120
    while logged_steps(run_folders) < logged + 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "continue with: python dcgan.py --resume" in stdout


def last_step_checkpointed(run):
    """The run's last logged step, checked to be its checkpoint's: the step under way finished and was saved."""
    steps = [int(row["step"]) for row in read_metrics(run)]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == steps[-1] == len(steps)
    return steps[-1]


def test_sigint_then_sigterm_save_a_checkpoint_and_resume_goes_on(tmp_path):
    """One run stopped by Ctrl-C, resumed, stopped by SIGTERM, resumed to its end: no step lost or repeated."""
    command = [sys.executable, str(ROOT / "dcgan.py")]
    stop_with(signal.SIGINT, [*command, *ARGS, "--out", str(tmp_path)], tmp_path, logged=0)
    run = next(tmp_path.iterdir())
    stop_with(signal.SIGTERM, [*command, "--resume", str(run)], tmp_path, logged=last_step_checkpointed(run))
    last = last_step_checkpointed(run)

    resumed = subprocess.run(
        [*command, "--resume", str(run), "--n_iters", str(last + 2)], capture_output=True, text=True, env=SCRIPT_ENV
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [int(row["step"]) for row in read_metrics(run)] == list(range(1, last + 3))
