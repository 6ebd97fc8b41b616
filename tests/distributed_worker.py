"""Run by test_distributed.py under torchrun: trains the jobs of a JSON file one after the other in
each process, so that one launch pays torch's import and the group's start once, and writes how each
job ended in this process, with a checksum of its generator's weights, to <results>/rank<RANK>.json.

A job is {"name", "script", "args"} plus, optionally, "resume": the name of an earlier job whose run
folder to continue, and "poison_rank": the rank whose second batch is all NaN."""

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import torch

import common
import plots
import scoring

plots.save_plots = lambda folder: []  # two seconds a run, and tested elsewhere (as in conftest.py)
CLEAN_BATCHES, FINISH = common.Batches.__iter__, common.Run.finish
# --compile: inductor generates C++ on the CPU for minutes; aot_eager traces the same graphs (as in test_scripts.py).
COMPILE_IN_PLACE = torch.nn.Module.compile
torch.nn.Module.compile = lambda self, **kwargs: COMPILE_IN_PLACE(self, backend="aot_eager")
# --fcd: a classifier of 50 steps, not 1,200; test_evaluation.py tests the scores, this the group around them.
scoring.train_classifier.__defaults__ = (50, 64)
WEIGHTS = {}


def poisoned(rank):
    def batches(self):
        for images, labels in CLEAN_BATCHES(self):
            yield (images * float("nan") if self.taken == 2 and common.GROUP.rank == rank else images), labels

    return batches


def finish(run, generator, fakes):
    """Run.finish, noting a checksum of this process's generator weights first."""
    digest = hashlib.sha256()
    for tensor in common.unwrap(generator).parameters():  # BatchNorm's running statistics: each process's own
        digest.update(tensor.detach().cpu().numpy().tobytes())
    WEIGHTS["last"] = digest.hexdigest()
    return FINISH(run, generator, fakes)


def main(jobs_file, results_dir):
    outcome, folders = {}, {}
    common.Run.finish = finish
    for job in json.loads(Path(jobs_file).read_text()):
        args = list(map(str, job["args"]))
        if "resume" in job:
            args += ["--resume", folders[job["resume"]]]
        common.Batches.__iter__ = poisoned(job["poison_rank"]) if "poison_rank" in job else CLEAN_BATCHES
        try:
            module = importlib.import_module(job["script"])
            folders[job["name"]] = str(module.train(module.parse_args(args)).dir)
            outcome[job["name"]] = "ok"
            outcome[job["name"] + ":weights"] = WEIGHTS.pop("last")
        except (*common.USAGE_ERRORS, common.Diverged) as error:
            outcome[job["name"]] = f"{type(error).__name__}: {error}"
    Path(results_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(outcome, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
