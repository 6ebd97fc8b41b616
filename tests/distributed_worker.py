"""Run by test_distributed.py under torchrun: trains the jobs of a JSON file one after the other in
each process, so that one launch pays torch's import and the group's start once, and writes how each
job ended in this process to <results>/rank<RANK>.json.

A job is {"name", "script", "args"} plus, optionally, "resume": the name of an earlier job whose run
folder to continue, and "poison_rank": the rank whose second batch of the first epoch is all NaN.
The script "desync" is no script: two processes holding different weights save a checkpoint."""

import importlib
import json
import os
import sys
from pathlib import Path

import torch

import common

common.Run.plots_at_finish = False  # two seconds a run, and tested elsewhere (as in conftest.py)
CLEAN_EPOCH = common.Batches.epoch
# --compile: inductor generates C++ on the CPU for minutes; aot_eager traces the same graphs (as in test_scripts.py).
COMPILE_IN_PLACE = torch.nn.Module.compile
torch.nn.Module.compile = lambda self, **kwargs: COMPILE_IN_PLACE(self, backend="aot_eager")
# --fcd: a classifier of 50 steps, not 1,200; test_evaluation.py tests the scores, this the group around them.
common.train_classifier.__defaults__ = (50, 64)


def poisoned_epoch(rank):
    def epoch(self, epoch, skip=0):
        for index, (images, labels) in enumerate(CLEAN_EPOCH(self, epoch, skip), start=skip):
            poison = (epoch, index) == (0, 1) and common.GROUP.rank == rank
            yield (images * float("nan") if poison else images), labels

    return epoch


def desync(out):
    """Each process saves a checkpoint of a net whose weights differ from the other's."""
    import dcgan

    opt = dcgan.parse_args(["--out", out])
    run = common.Run(opt, "dcgan.py")
    net = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(net.weight, float(common.GROUP.rank))
    torch.nn.init.zeros_(net.bias)
    run.save_checkpoint({"generator": net}, opt, step=7)


def main(jobs_file, results_dir):
    outcome, folders = {}, {}
    for job in json.loads(Path(jobs_file).read_text()):
        args = list(map(str, job["args"]))
        if "resume" in job:
            args += ["--resume", folders[job["resume"]]]
        common.Batches.epoch = poisoned_epoch(job["poison_rank"]) if "poison_rank" in job else CLEAN_EPOCH
        try:
            if job["script"] == "desync":
                desync(args[args.index("--out") + 1])
            else:
                module = importlib.import_module(job["script"])
                folders[job["name"]] = str(module.train(module.parse_args(args)).dir)
            outcome[job["name"]] = "ok"
        except (common.UsageError, common.Diverged) as error:
            outcome[job["name"]] = f"{type(error).__name__}: {error}"
    Path(results_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(outcome, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
