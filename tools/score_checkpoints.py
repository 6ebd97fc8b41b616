"""Score checkpoints kept while a run trained: the quality curve behind each anime default (docs/results.md).

Each checkpoint is resumed by its own script for no step with the score flags (--swd unless others are given), which
scores at the end as a finished run does: once as saved (G's average draws), once with G's own weights put in the
average's place (G alone). Keep the checkpoints as a run trains, for example with --checkpoint_interval 500 and a
copy of checkpoint.pt after each write.

    python tools/score_checkpoints.py runs/keep/*.pt --csv curve.csv              # --swd on --fid_samples 10000
    python tools/score_checkpoints.py runs/keep/*.pt --csv curve.csv --flags "--swd --fid_samples 5000"
"""

import argparse
import csv
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402 - the scripts' folder is put on the path first


def with_g_alone(checkpoint):
    """The checkpoint with G's weights and buffers in place of its average's (AveragedModel's 'module.' keys)."""
    average = {"module." + name: value for name, value in checkpoint["generator"].items()}
    return dict(checkpoint, ema_G=dict(average, n_averaged=checkpoint["ema_G"]["n_averaged"]))


def score(checkpoint, flags, folder):
    """The scores of one checkpoint, resumed into `folder` by its script for no step: a dict of scores.csv's row."""
    folder.mkdir()
    torch.save({k: v for k, v in checkpoint.items() if k != "dir"}, folder / "checkpoint.pt")
    command = [sys.executable, str(ROOT / f"{checkpoint['script']}.py"), "--resume", str(folder)]
    subprocess.run([*command, "--n_iters", str(checkpoint["step"]), *flags], check=True, stdout=subprocess.DEVNULL)
    with open(folder / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint files of one run")
    parser.add_argument("--csv", type=Path, required=True, help="the table to write: a row a checkpoint")
    parser.add_argument("--flags", default="--swd", help="the scripts' score flags, in one string")
    opt = parser.parse_args(argv)
    rows = []
    for path in opt.checkpoints:
        try:
            checkpoint = common.load_checkpoint(path)
        except common.UsageError as error:
            parser.error(str(error))
        row = dict(script=checkpoint["script"], step=checkpoint["step"], minutes=round(checkpoint["seconds"] / 60, 1))
        with tempfile.TemporaryDirectory() as tmp:
            for name, variant in (("average", checkpoint), ("G", with_g_alone(checkpoint))):
                scores = score(variant, shlex.split(opt.flags), Path(tmp) / name)
                row.update({f"{key}_{name}": value for key, value in scores.items() if key not in ("step", "seconds")})
        rows.append(row)
        print(", ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    rows.sort(key=lambda row: row["step"])
    with open(opt.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
