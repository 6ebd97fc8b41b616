"""Faults injected into real runs: SIGKILL mid-training, a loss turning NaN, --deterministic."""

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
    command = [sys.executable, str(ROOT / "dcgan.py"), *map(str, TINY), "--checkpoint_interval", "5", "--n_iters", "100000", "--out", str(tmp_path / "killed")]
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
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    logged = len(read_metrics(run_dir))
    assert saved % 5 == 0 and 0 <= logged - saved <= 5  # a kill costs at most one --checkpoint_interval

    resumed = train_script("dcgan", tmp_path / "unused", "--resume", run_dir, "--n_iters", saved + 4)
    straight = train_script("dcgan", tmp_path / "straight", *TINY, "--n_iters", saved + 4)
    assert read_metrics(resumed.dir) == read_metrics(straight.dir)  # no duplicated or missing rows, same losses


def test_nan_stops_before_it_is_saved(tmp_path, monkeypatch):
    first = train_script("dcgan", tmp_path, *TINY, "--n_iters", 2)
    before = (first.dir / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(dcgan, "generator_loss", lambda logits: logits.mean() * float("nan"))
    with pytest.raises(common.Diverged, match=r"loss_G became nan at step 3: training diverged.*--lr; the last good checkpoint is .*--resume"):
        train_script("dcgan", tmp_path, "--resume", first.dir, "--n_iters", 5)
    assert (first.dir / "checkpoint.pt").read_bytes() == before
    assert [row["step"] for row in read_metrics(first.dir)] == ["1", "2"]


def poison_second_batch(monkeypatch):
    """Make the second batch of the first epoch all NaN, in every script and every domain."""
    clean_epoch = common.Batches.epoch

    def epoch(self, epoch, skip=0):
        for index, (images, labels) in enumerate(clean_epoch(self, epoch, skip), start=skip):
            yield (images * float("nan") if (epoch, index) == (0, 1) else images), labels

    monkeypatch.setattr(common.Batches, "epoch", epoch)


def all_finite(state):
    """Whether every floating-point tensor in a checkpoint (nets, optimizer moments, k_t) is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(state.isfinite().all())
    if isinstance(state, dict):
        return all(all_finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(value) for value in state)
    return True  # plain numbers: ReduceLROnPlateau keeps an infinite `mode_worse` by design


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_policy_skip_passes_over_a_bad_batch(script, tmp_path, monkeypatch):
    poison_second_batch(monkeypatch)
    run = train_script(script, tmp_path, *SCRIPT_TINY, *SCRIPTS[script], "--n_critic", 1, "--n_iters", 4, "--nan_policy", "skip")
    assert run.skipped == 1  # the poisoned D update; G's loss never sees the real batch
    assert [row["step"] for row in read_metrics(run.dir)] == ["1", "3", "4"]  # the NaN row is left out
    checkpoint = torch.load(run.checkpoint_path, weights_only=False)
    assert checkpoint["step"] == 4 and all_finite(checkpoint)  # weights, optimizer moments, k_t

    stopped = tmp_path / "stopped"
    with pytest.raises(common.Diverged, match="at step 2: training diverged"):
        train_script(script, stopped, *SCRIPT_TINY, *SCRIPTS[script], "--n_critic", 1, "--n_iters", 4)


def test_nan_policy_skip_gives_up_when_every_update_is_nan(tmp_path, monkeypatch):
    monkeypatch.setattr(dcgan, "generator_loss", lambda logits: logits.mean() * float("nan"))
    with pytest.raises(common.Diverged, match=f"{common.MAX_SKIPPED_IN_A_ROW} updates were skipped for a NaN or infinite loss with no finite step between them"):
        train_script("dcgan", tmp_path, *TINY, "--n_iters", 50, "--nan_policy", "skip")


def test_nan_on_the_command_line_is_one_line_exit_1(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "dcgan.py"), *map(str, TINY), "--lr", "1e30", "--n_iters", "50", "--out", str(tmp_path)],
        capture_output=True, text=True, env=SCRIPT_ENV,
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
    with pytest.raises(common.UsageError, match="could not save the checkpoint .*No space left on device.*free some disk space, then --resume"):
        train_script("dcgan", tmp_path, "--resume", first.dir, "--n_iters", 4)
    assert (first.dir / "checkpoint.pt").read_bytes() == before
    assert not list(first.dir.glob("*.tmp"))


def test_out_of_gpu_memory_suggests_a_smaller_batch(capsys):
    with pytest.raises(SystemExit) as exit:
        with common.friendly_errors():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert exit.value.code == 1
    assert "out of GPU memory: pass a smaller --batch_size" in capsys.readouterr().err
