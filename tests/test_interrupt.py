"""Ctrl-C and SIGTERM: the step finishes, a checkpoint is written, the exit code is 130, and --resume goes on."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, SCRIPT_ENV, read_metrics

ARGS = ["--img_size", "16", "--batch_size", "8", "--latent_dim", "8", "--ngf", "8", "--ndf", "8", "--n_iters", "100000"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint_and_resume_continues(sig, tmp_path):
    command = [sys.executable, str(ROOT / "dcgan.py"), *ARGS, "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SCRIPT_ENV)
    deadline = time.monotonic() + 120
    while (
        not list(tmp_path.glob("*/metrics.csv"))
        or len(list(tmp_path.glob("*/metrics.csv"))[0].read_text().splitlines()) < 4
    ):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "continue with: python dcgan.py --resume" in stdout
    run = next(tmp_path.iterdir())
    steps = [int(row["step"]) for row in read_metrics(run)]
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == steps[-1] == len(steps)  # saved after the last logged step, none lost

    resumed = subprocess.run(
        command[:2] + ["--resume", str(run), "--n_iters", str(steps[-1] + 2)],
        capture_output=True,
        text=True,
        env=SCRIPT_ENV,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [int(row["step"]) for row in read_metrics(run)] == list(range(1, steps[-1] + 3))
