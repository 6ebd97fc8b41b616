"""Several processes under torchrun, two on the CPU with gloo: every script (and dcgan compiled) trains
with both processes holding the same weights, one run folder, each epoch shared out between them, a
resumed group going on exactly, a NaN in one process stopping both, and a signal to one process
stopping both after the same step. Most jobs share one launch (tests/distributed_worker.py):
starting torch costs more than their steps."""

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import common
from conftest import ROOT, SCRIPT_ENV, read_metrics, train_script, write_images
from test_scripts import SCRIPTS, TINY

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)

ENV = dict(SCRIPT_ENV, OMP_NUM_THREADS="1")  # two processes on a small machine: no thread oversubscription
STEPS = 4
EXTRA = {
    "wgan": ["--log_grad_norms"],
    "wgan_gp": ["--log_grad_norms"],
}  # input gradients through the wrapped critic too
RESUMED = ("dcgan", "wgan_gp")


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]


def only_run(folder):
    (run_dir,) = folder.iterdir()  # one run folder: the other process wrote none
    return run_dir


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Train the jobs below in one launch of two processes; returns (folder, each rank's outcomes)."""
    tmp = tmp_path_factory.mktemp("distributed")
    args = {script: [*TINY, *SCRIPTS[script], *EXTRA.get(script, [])] for script in SCRIPTS}
    jobs = [
        dict(name=script, script=script, args=[*args[script], "--n_iters", STEPS, "--out", tmp / script])
        for script in SCRIPTS
    ]
    for script in RESUMED:
        jobs += [
            dict(
                name=f"{script}_first",
                script=script,
                args=[*args[script], "--n_iters", STEPS // 2, "--out", tmp / f"{script}_first"],
            ),
            dict(
                name=f"{script}_resumed",
                script=script,
                resume=f"{script}_first",
                args=["--n_iters", STEPS, "--out", tmp / "unused"],
            ),
        ]
    forty = write_images(tmp / "forty", 40)
    jobs += [
        dict(
            name="compiled",
            script="dcgan",
            args=[*args["dcgan"], "--n_iters", STEPS, "--compile", "--out", tmp / "compiled"],
        ),
        dict(
            name="scored",
            script="dcgan",
            args=[
                *args["dcgan"],
                "--n_iters",
                STEPS,
                "--fcd",
                "--fid_interval",
                2,
                "--fid_samples",
                32,
                "--save_fakes",
                8,
                "--data_root",
                tmp / "data",
                "--out",
                tmp / "scored",
            ],
        ),
        dict(
            name="epochs",
            script="dcgan",
            args=[
                *args["dcgan"],
                "--dataset",
                "folder",
                "--data_root",
                forty,
                "--n_epochs",
                2,
                "--out",
                tmp / "epochs",
            ],
        ),
        dict(
            name="nan_stop",
            script="dcgan",
            poison_rank=1,
            args=[*args["dcgan"], "--n_iters", STEPS, "--out", tmp / "nan_stop"],
        ),
    ]
    (tmp / "jobs.json").write_text(json.dumps(jobs, default=str))
    done = subprocess.run(
        torchrun(ROOT / "tests" / "distributed_worker.py", tmp / "jobs.json", tmp),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp, [json.loads((tmp / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_trains_in_two_processes_that_stay_identical(script, launch):
    tmp, outcomes = launch
    assert [outcome[script] for outcome in outcomes] == ["ok", "ok"]
    run_dir = only_run(tmp / script)
    assert [int(row["step"]) for row in read_metrics(run_dir)] == list(range(1, STEPS + 1))

    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert outcomes[0][f"{script}:weights"] == outcomes[1][f"{script}:weights"]  # DDP kept the weights equal

    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert not any(
        key.startswith("module.") for net in ("generator", "discriminator") for key in checkpoint[net]
    )  # a plain run's keys
    assert checkpoint["world_size"] == 2
    rng = checkpoint["rng"]
    assert not torch.equal(rng[0]["cpu"], rng[1]["cpu"])  # each process draws its own noise


def test_compiled_nets_train_the_same_in_two_processes(launch):
    tmp, outcomes = launch
    assert [outcome["compiled"] for outcome in outcomes] == ["ok", "ok"]
    compiled, eager = only_run(tmp / "compiled"), only_run(tmp / "dcgan")
    assert outcomes[0]["compiled:weights"] == outcomes[1]["compiled:weights"]
    for a, b in zip(read_metrics(compiled), read_metrics(eager), strict=True):
        assert all(float(a[k]) == pytest.approx(float(b[k]), rel=1e-3, abs=1e-4) for k in a)


def test_rank_0_scores_and_writes_the_fakes(launch):
    tmp, outcomes = launch
    assert [outcome["scored"] for outcome in outcomes] == ["ok", "ok"]
    run_dir = only_run(tmp / "scored")
    assert [row["step"] for row in read_metrics(run_dir, "scores.csv")] == ["2", "4"]
    assert "fcd" in json.loads((run_dir / "summary.json").read_text())
    assert len(list((run_dir / "fakes").glob("*.png"))) == 8


def test_an_epoch_is_shared_out_between_the_processes(launch):
    tmp, outcomes = launch
    assert [outcome["epochs"] for outcome in outcomes] == ["ok", "ok"]
    rows = read_metrics(only_run(tmp / "epochs"))
    # 40 images and 2 processes x 8 per batch: 2 steps per epoch, where one process alone would take 5.
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]


@pytest.mark.parametrize("script", RESUMED)
def test_a_resumed_group_goes_on_exactly(script, launch):
    tmp, outcomes = launch
    assert [outcome[f"{script}_{part}"] for outcome in outcomes for part in ("first", "resumed")] == ["ok"] * 4
    resumed = only_run(tmp / f"{script}_first")
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == STEPS
    # The same losses at every step as a run that never stopped: each process got back its own
    # random state and its own place in the epoch.
    assert read_metrics(resumed) == read_metrics(only_run(tmp / script))


def test_a_nan_in_one_process_stops_both(launch):
    tmp, outcomes = launch
    assert [outcome["nan_stop"] for outcome in outcomes] == [outcomes[0]["nan_stop"]] * 2
    assert outcomes[0]["nan_stop"].startswith("Diverged: loss_D became nan at step 2: training diverged")


def test_each_process_takes_every_other_image_of_the_batches_of_one(monkeypatch):
    data = common.load_images("digits", "unused", 8, 1)
    cpu = torch.device("cpu")
    whole = list(itertools.islice(common.Batches(data, 20, cpu, seed=3), 120))  # more than an epoch
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(common, "GROUP", argparse.Namespace(rank=rank, local_rank=rank, size=2, distributed=False))
        batches = common.Batches(data, 10, cpu, seed=3)
        assert len(batches) == 1797 // 20
        shares.append(list(itertools.islice(batches, 120)))
        batches.load_state_dict({"taken": 95})
        assert torch.equal(next(iter(batches))[0], shares[-1][95][0])  # resumable anywhere
    for (images, labels), *share in zip(whole, *shares, strict=True):
        for rank, (part, part_labels) in enumerate(share):
            assert torch.equal(part, images[rank::2]) and torch.equal(part_labels, labels[rank::2])
    with pytest.raises(common.UsageError, match=r"--batch_size 1000 x 2 process\(es\) is over the 1797 images"):
        common.Batches(data, 1000, cpu, seed=0)


@pytest.fixture
def fake_torchrun(monkeypatch):
    """torchrun's environment for one process and a fresh GROUP: the flags below are refused before a group starts."""
    for name, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29555"
    ).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(common, "GROUP", argparse.Namespace(rank=0, local_rank=0, size=1, distributed=False))


def test_sync_bn_without_torchrun_or_without_cuda_is_refused(tmp_path, fake_torchrun, monkeypatch):
    with pytest.raises(
        common.UsageError, match="--sync_bn synchronises BatchNorm between torchrun's processes on CUDA"
    ):
        train_script("dcgan", tmp_path, *TINY, "--sync_bn", "--device", "cpu")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name)
    with pytest.raises(common.UsageError, match="--sync_bn synchronises BatchNorm between torchrun's processes"):
        train_script("dcgan", tmp_path, *TINY, "--sync_bn")
    assert not common.GROUP.distributed and not list(tmp_path.iterdir())


def test_a_group_run_is_resumed_by_as_many_processes(launch, tmp_path):
    tmp, _ = launch
    with pytest.raises(common.UsageError, match=r"was trained by 2 process\(es\), not 1"):
        train_script("dcgan", tmp_path, "--resume", only_run(tmp / "dcgan"), "--n_iters", STEPS + 1)


def worker_pid(launcher, rank):
    """The pid of the torchrun worker of `rank` (Linux: found through /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc (Linux)")
def test_a_signal_to_one_process_stops_both_after_the_same_step(tmp_path):
    args = [*TINY, *SCRIPTS["dcgan"], "--out", tmp_path]
    launcher = subprocess.Popen(
        torchrun(ROOT / "dcgan.py", *args, "--n_iters", 100000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not list(tmp_path.glob("*/metrics.csv"))
            or len(list(tmp_path.glob("*/metrics.csv"))[0].read_text().splitlines()) < 4
        ):
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.1)
        os.kill(worker_pid(launcher, 1), signal.SIGINT)  # as if only rank 1 had been told to stop
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:  # a hung group: torchrun stops its workers on SIGTERM (SIGKILL after 30 seconds)
            launcher.terminate()
            launcher.wait(60)

    assert launcher.returncode != 0, stderr  # torchrun reports its workers' exit code 130 as a failure
    assert (
        stdout.count("stopped at step") == 1
        and "continue with: torchrun --nproc_per_node=2 dcgan.py --resume" in stdout
    )
    run_dir = only_run(tmp_path)
    steps = [int(row["step"]) for row in read_metrics(run_dir)]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == steps[-1] == len(steps)  # both stopped after the step that rank 0 logged last

    resumed = subprocess.run(
        torchrun(ROOT / "dcgan.py", "--resume", run_dir, "--n_iters", steps[-1] + 2),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stdout.count("done: ") == 1 and "Traceback" not in resumed.stderr
    assert [int(row["step"]) for row in read_metrics(run_dir)] == list(range(1, steps[-1] + 3))
