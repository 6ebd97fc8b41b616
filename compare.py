"""Compare the GAN variants on one data set: train (or reuse) each script within a budget, score its
samples, and write one table and a few figures.

Each script runs as its own process, `python <script>.py --out <out>/<dataset>/runs --n_iters STEPS
--fcd ...` (--fid instead with --fid), scored about --evals times during training into its run's
scores.csv. Under --minutes it is stopped as by Ctrl-C when its time is up, and `--resume RUN --n_iters
STEP` at its checkpoint's step then trains nothing and scores it. Then <out>/<dataset>/ gets:
    results.md              one row per script, best score first: steps, wall time, scores, final grid
    grids.png               the final sample grids side by side
    quality_vs_time.png     the score against wall-clock seconds of training, one line per script
    critic_weights.png      with wgan and wgan_gp: histograms of their critics' weights
                            (clipping piles them up at +-c, the penalty does not)
    critic_grad_norms.png   with wgan and wgan_gp: ||grad_x D(x)|| at real and fake images over training
A run that an earlier comparison finished with the same budget and flags is reused (with a note if
its script has changed since), and one it left unfinished is continued: the same command again
costs nothing (--retrain starts afresh).

Run:
    python compare.py --dataset digits                     # all seven, default budgets: < 30 min on 2 CPU cores
    python compare.py --dataset digits --scripts wgan wgan_gp --minutes 5
    python compare.py --dataset mnist --data_root data --steps 5000
    python compare.py --dataset cifar10 --data_root data --steps 20000 --fid
    python compare.py --plot runs/dcgan_digits_20260101-120000   # redraw one run's losses.png and progress.gif
"""

import argparse
import contextlib
import datetime
import hashlib
import importlib
import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common
import plots

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("dcgan", "lsgan", "cgan", "cogan", "wgan", "wgan_gp", "began")

# Generator steps per script when neither --steps nor --minutes is given: about three minutes each on
# 2 CPU cores with digits at 32x32 (see RATES; wgan's first 25 steps take 100 critic steps each), so
# that all seven finish in under 30 minutes.
DEFAULT_STEPS = dict(dcgan=1500, lsgan=1500, cgan=1500, cogan=750, wgan=1000, wgan_gp=800, began=2240)
# Generator steps per second on 2 CPU cores with digits at 32x32, measured in a default comparison;
# with --minutes they space the scores. wgan's is the mean over its first 1000 steps, boosts included;
# began's is of its digits batch, 16 (steps 100-600 of `python began.py` alone).
RATES = dict(dcgan=7.9, lsgan=7.6, cgan=7.6, cogan=5.0, wgan=5.5, wgan_gp=3.9, began=15.1)
# Flags that compare.py sets itself (or that its budget overrides), refused in --script_args.
OWN_FLAGS = (
    "--img_size", "--out", "--resume", "--n_iters", "--n_epochs", "--fid", "--fcd", "--fid_interval", "--generate",
    "--interpolate", "--ema",
)  # fmt: skip
# --n_iters under --minutes: more generator steps than any time budget reaches, so the clock ends the run.
TIME_BUDGET_STEPS = 10**9
REPORT_EVERY = 60  # seconds between progress lines while a script trains


class ToolParser(argparse.ArgumentParser):
    """compare.py's and bench.py's command line: common.ArgumentParser's one-line errors (exit code 2)
    and no abbreviations, without the scripts' per-data-set and --resume defaults."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    error = common.ArgumentParser.error


def split_script_args(texts, scripts, own_flags, tool, hint=""):
    """compare.py's and bench.py's --script_args: each text is '[SCRIPT:] FLAGS', flags for one script
    or, without a prefix, for all of `scripts`; returns {script: [flags]}. A flag in `own_flags`, which
    `tool` sets itself, or an abbreviation of one, an unknown script or unbalanced quotes raise UsageError."""
    extra = {script: [] for script in scripts}
    for text in texts:
        match = re.match(r"\s*(\w+):(?!\S)(.*)$", text, re.S)
        if match and match.group(1) not in scripts:
            raise common.UsageError(
                f"--script_args {text!r}: {match.group(1)!r} is not a script; choose one of {', '.join(scripts)}"
            )
        try:
            flags = shlex.split(match.group(2) if match else text)
        except ValueError as error:
            raise common.UsageError(f"--script_args {text!r}: {error}")
        for flag in flags:
            name = flag.split("=")[0]
            own = [own for own in own_flags if own == name] or [
                own for own in own_flags if name.startswith("--") and len(name) > 2 and own.startswith(name)
            ]
            if own:
                raise common.UsageError(f"--script_args: {tool} sets {own[0]} itself{hint}")
        for script in [match.group(1)] if match else scripts:
            extra[script] += flags
    return extra


def parse_args(argv=None):
    parser = ToolParser(description="Train the GAN variants on one data set and compare their samples.")
    arg = parser.add_argument
    arg("--dataset", choices=common.DATASETS, default="digits", help="training images, as for the scripts")
    arg("--data_root", default="data", help="where data sets are kept; with --dataset folder, the folder itself")
    arg(
        "--scripts",
        nargs="+",
        choices=SCRIPTS,
        default=list(SCRIPTS),
        metavar="SCRIPT",
        help=f"the variants to compare, in this order (default: all of {', '.join(SCRIPTS)})",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=common.positive_int,
        help="generator steps for every script (default: per script, "
        + ", ".join(f"{s} {n}" for s, n in DEFAULT_STEPS.items())
        + ": about 3 minutes each on 2 CPU cores with digits, under 30 minutes for all seven)",
    )
    budget.add_argument(
        "--defaults",
        action="store_true",
        help="each script at its own defaults for the data set (steps, image size); G and its average scored apart",
    )
    budget.add_argument(
        "--minutes",
        type=common.positive_float,
        help="minutes of training for every script, scoring during training included; each is then stopped "
        "as by Ctrl-C and scored at the step it reached; the scores during training are spaced by RATES, "
        "steps per second on 2 CPU cores, so a faster machine scores more often",
    )
    arg(
        "--fid",
        action="store_true",
        help="score by FID (pytorch-fid's Inception features; needs its weights, see the scripts' --fid_weights) "
        "instead of the offline FCD (a classifier trained on the labelled data)",
    )
    arg(
        "--img_size",
        type=common.positive_int,
        help="the one image size every script trains and is scored at, so that the scores compare "
        "(default: per data set, 32 for digits)",
    )
    arg(
        "--evals",
        type=common.positive_int,
        default=5,
        help="scores per run, evenly spaced over its budget, the last at the end (1: only at the end)",
    )
    arg(
        "--script_args",
        action="append",
        default=[],
        metavar="[SCRIPT:]FLAGS",
        help="more flags for the scripts: '--batch_size 32' for all of them, 'began: --h_dim 32' for one; repeatable",
    )
    arg("--ema", type=common.ema_decay, default=0.995, help="the decay of G's average, which draws the grids; 0: G")
    arg("--out", default="compare", help="results go to <out>/<dataset>/, run folders to <out>/<dataset>/runs/")
    arg("--retrain", action="store_true", help="train every script afresh instead of reusing earlier runs")
    arg("--plot", metavar="RUN_DIR", help="only redraw losses.png and progress.gif in one run folder and exit")
    opt = parser.parse_args(argv)
    opt.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]  # for results.md: how it was made
    if opt.defaults and opt.img_size:
        parser.error("--defaults trains each script at its own image size: drop --img_size")
    opt.img_size = None if opt.defaults else opt.img_size or common.DATASETS[opt.dataset]["img_size"]
    try:
        opt.extra = split_script_args(
            opt.script_args,
            SCRIPTS,
            OWN_FLAGS,
            "compare.py",
            hint=" (use --img_size, --steps, --defaults, --minutes, --fid, --evals, --ema, --out)",
        )
    except common.UsageError as error:
        parser.error(str(error))
    return opt


# ----------------------------------------------------------------------------------------------
# Running one script
# ----------------------------------------------------------------------------------------------
def compare_one(script, opt, folder):
    """Train (or reuse, or continue) `script` within the budget and score it; returns its result:
    a dict with script, status (trained, reused or failed), run_dir, summary and error."""
    key = run_key(script, opt)
    run_dir = None if opt.retrain else find_run(folder / "runs", key)
    result = dict(script=script, status="trained", run_dir=run_dir, summary=None, error=None, G=None)
    if run_dir and (run_dir / "summary.json").exists():
        changed = json.loads((run_dir / "compare.json").read_text()).get("code") != script_hash(script)
        print(
            f"{script}: reusing {run_dir}, finished earlier with the same budget and flags"
            + (f"; {script}.py has changed since: --retrain to train it again" if changed else "")
        )
        result.update(status="reused", summary=read_summary(run_dir))
        print(f"{script}: {describe(result['summary'])}")
        if opt.defaults:
            done = (run_dir / "G" / "summary.json").exists()
            flag = "--fid" if opt.fid else "--fcd"
            result["G"] = read_summary(run_dir / "G") if done else score_g_itself(script, run_dir, flag, folder, key)
        return result

    scores = ["--fid"] if opt.fid else ["--fcd"]
    if opt.evals > 1:
        expected = opt.minutes * 60 * RATES[script] if opt.minutes else budget_steps(script, opt)
        scores += ["--fid_interval", str(max(1, math.ceil(expected / opt.evals)))]
    if script in ("wgan", "wgan_gp"):
        scores.append("--log_grad_norms")
    limit = opt.minutes * 60 if opt.minutes else None
    if run_dir:  # an earlier comparison stopped it before the end: continue from its checkpoint
        checkpoint = common.load_checkpoint(run_dir)
        print(f"{script}: continuing {run_dir} from step {checkpoint['step']}")
        command = ["--resume", str(run_dir), *scores]
        if opt.minutes:
            limit -= checkpoint["seconds"]
    else:
        command = ["--dataset", opt.dataset, "--data_root", opt.data_root, "--out", str(folder / "runs")]
        command += ["--ema", str(opt.ema), *([] if opt.defaults else ["--img_size", str(opt.img_size)])]
        command += [*scores, *opt.extra[script]]
        print(
            f"{script}: training "
            + (f"for {opt.minutes:g} minutes" if opt.minutes else f"{budget_steps(script, opt)} steps")
        )
    # The budget in steps, or under --minutes steps enough that the clock (a Ctrl-C) ends the run.
    command += ["--n_iters", str(TIME_BUDGET_STEPS if opt.minutes else budget_steps(script, opt))]

    if limit is not None and limit <= 0:
        code, error = 130, None  # its time was spent before it was stopped: only score it
    else:
        code, run_dir, error = run_script(script, command, folder, key, run_dir, limit)
    if code == 130 and limit is not None and run_dir and (run_dir / "checkpoint.pt").exists():
        # Stopped by the time budget: --resume at the checkpoint's own step trains nothing, then scores.
        step = common.load_checkpoint(run_dir)["step"]
        print(f"{script}: {opt.minutes:g} minutes are up at step {step}; scoring it")
        resume = ["--resume", str(run_dir), "--n_iters", str(step), *scores[:1]]
        code, _, error = run_script(script, resume, folder, key, run_dir, append=True)
    if code == 2:  # a bad flag or missing data: every other script would fail the same way
        raise common.UsageError(f"{script}.py stopped: {error}")
    if code == 130:
        raise KeyboardInterrupt
    result["run_dir"] = run_dir
    if code == 0 and run_dir and (run_dir / "summary.json").exists():
        result["summary"] = read_summary(run_dir)
        print(f"{script}: {describe(result['summary'])}")
        if opt.defaults:
            result["G"] = score_g_itself(script, run_dir, scores[0], folder, key)
    else:
        result.update(status="failed", error=error or (f"exit code {code}" if code else "it wrote no summary.json"))
        print(f"{script}: FAILED: {result['error']} (its output: {folder / 'logs' / script}.out and .err)")
    return result


def run_key(script, opt):
    """What must match for a run to be reused: data, budget, scoring and flags."""
    budget = dict(minutes=opt.minutes) if opt.minutes else dict(steps=budget_steps(script, opt))
    budget.update(ema=opt.ema, **(dict(defaults=True) if opt.defaults else {}))
    return dict(
        script=script,
        dataset=opt.dataset,
        data_root=opt.data_root,
        img_size=opt.img_size,
        **budget,
        fid=opt.fid,
        evals=opt.evals,
        script_args=opt.extra[script],
    )


def script_hash(script):
    """A fingerprint of the script's file, kept with the run to tell when it has changed since."""
    return hashlib.sha256((ROOT / f"{script}.py").read_bytes()).hexdigest()[:16]


def budget_steps(script, opt):
    if opt.defaults:  # the script's own default for the data set
        return importlib.import_module(script).DATASET_DEFAULTS[opt.dataset]["n_iters"]
    return opt.steps or DEFAULT_STEPS[script]


def score_g_itself(script, run_dir, measure, folder, key):
    """The scores of G itself, where the run's grids and scores are its average's: a copy of the checkpoint
    in <run>/G whose average is G's weights, resumed at its step (no training) and scored; its summary."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    averaged = {f"module.{name}": value for name, value in checkpoint["generator"].items()}
    checkpoint["ema_G"] = dict(averaged, n_averaged=checkpoint["ema_G"]["n_averaged"])
    (run_dir / "G").mkdir(exist_ok=True)
    torch.save(checkpoint, run_dir / "G" / "checkpoint.pt")
    resume = ["--resume", str(run_dir / "G"), "--n_iters", str(checkpoint["step"]), measure]
    code, _, error = run_script(script, resume, folder, key, run_dir / "G", append=True)
    if code != 0 or not (run_dir / "G" / "summary.json").exists():
        print(f"{script}: scoring G itself FAILED: {error or f'exit code {code}'}")
        return None
    summary = read_summary(run_dir / "G")
    print(f"{script}: G itself, {describe(summary)}")
    return summary


def find_run(runs, key):
    """The run folder under `runs` that a comparison with the same key made and finished, or failing
    that one it stopped after a checkpoint; None when there is neither."""
    found = []
    for marker in runs.glob(f"{key['script']}_{key['dataset']}_*/compare.json"):
        if not any((marker.parent / name).exists() for name in ("summary.json", "checkpoint.pt")):
            continue
        try:
            if {name: value for name, value in json.loads(marker.read_text()).items() if name != "code"} == key:
                found.append(marker.parent)
        except (OSError, ValueError):  # a half-written or foreign file: not a match
            continue
    return max(found, key=lambda d: ((d / "summary.json").exists(), d.name), default=None)


def run_script(script, args, folder, key, run_dir=None, limit=None, append=False):
    """Run `script` with `args`, its output into (or `append`ed to) <folder>/logs/<script>.out and .err.
    With `limit`, stop it as Ctrl-C does (checkpoint, exit code 130) that many seconds after its
    training began. Returns (exit code, run folder, last line of its error output)."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    out, err = folder / "logs" / f"{script}.out", folder / "logs" / f"{script}.err"
    command = [sys.executable, str(ROOT / f"{script}.py"), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    earlier = set((folder / "runs").glob(f"{key['script']}_{key['dataset']}_*"))
    with open(out, "a" if append else "w") as stdout, open(err, "a" if append else "w") as stderr:
        stdout.write(shlex.join(command) + "\n")
        stdout.flush()
        launched = time.time()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        started = next_report = None
        try:
            while process.poll() is None:
                time.sleep(0.5)
                if started is None:  # training starts once the script's Run has written its config.json
                    found = started_run(folder / "runs", key, run_dir, earlier, launched)
                    if found:
                        run_dir, started = found, time.monotonic()
                        next_report = started + REPORT_EVERY
                        marker = json.dumps(dict(key, code=script_hash(script)), indent=2) + "\n"
                        (run_dir / "compare.json").write_text(marker)
                    continue
                now = time.monotonic()
                if limit is not None and now - started >= limit:
                    process.send_signal(signal.SIGINT)
                    limit = None
                if now >= next_report:
                    print(f"  {script}: {progress(run_dir)}", flush=True)
                    next_report += REPORT_EVERY
        except KeyboardInterrupt:  # Ctrl-C reached the script too: let it save its checkpoint
            message = "interrupted, waiting for its checkpoint; the same command continues the comparison"
            print(f"\n{script}: {message}", file=sys.stderr)
            process.wait()
            raise
    if started is None:  # it ended within half a second, or before its Run began
        found = started_run(folder / "runs", key, run_dir, earlier, launched)
        if found:
            run_dir = found
            (run_dir / "compare.json").write_text(json.dumps(dict(key, code=script_hash(script)), indent=2) + "\n")
    return process.returncode, run_dir, last_line(err)


def started_run(runs, key, run_dir, earlier, launched):
    """The run folder whose config.json the script wrote since `launched` (its Run writes it once the
    data and the scoring nets are ready, just before training): `run_dir` when resuming, else a new
    folder under `runs`; None until then."""
    for candidate in [run_dir] if run_dir else set(runs.glob(f"{key['script']}_{key['dataset']}_*")) - earlier:
        try:
            if (candidate / "config.json").stat().st_mtime >= launched:
                return candidate
        except OSError:  # not written yet
            continue
    return None


def progress(run_dir):
    """'step N, S s' from the last row of metrics.csv."""
    try:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        row = dict(zip(lines[0].split(","), lines[-1].split(",")))
        return f"step {row['step']}, {float(row['seconds']):.0f}s"
    except (OSError, IndexError, KeyError, ValueError):
        return "starting"


def last_line(path):
    """The last line of a script's error output that is not a progress bar."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in re.split(r"[\r\n]", text)]
    lines = [line for line in lines if line and not re.search(r"\d+/\d+ \[", line)]  # tqdm: '12/28 [00:03<...'
    return re.sub(r"^\S+\.py: error: ", "", lines[-1]) if lines else None


def read_summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def describe(summary):
    return f"{summary['step']} steps in {format_time(summary['seconds'])}" + "".join(
        f", {name} {summary[name]:.4g}" for name in ("fid", "fcd") if name in summary
    )


def format_time(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


# ----------------------------------------------------------------------------------------------
# Reference score: uniform noise
# ----------------------------------------------------------------------------------------------
def noise_scores(results):
    """The scores of uniform noise images, with the scoring setup of the first scored run: the mark
    that every variant must beat. None when there is no scored run."""
    import scoring  # as in the scripts, only where scores are asked for

    run_dir = next((r["run_dir"] for r in results if r["summary"] and {"fcd", "fid"} & set(r["summary"])), None)
    if run_dir is None:
        return None
    opt = argparse.Namespace(**json.loads((run_dir / "config.json").read_text()))
    device = common.get_device(opt.device)
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    scorer = scoring.Scorer(opt, data, device)  # the run's classifier or Inception net, and its real statistics

    def noise(generator, n, rng):
        return torch.rand(n, opt.channels, opt.img_size, opt.img_size, generator=rng, device=device) * 2 - 1, None

    sink = _Scores()
    with contextlib.redirect_stdout(io.StringIO()):  # score() prints a line for a run's log
        scorer.score(sink, 0, torch.nn.Identity(), noise)  # no generator: the noise is the fake
    return sink.scores


class _Scores:
    """What scoring.Scorer.score writes into, standing in for a common.Run: it keeps the scores, no file."""

    tensorboard, seconds, scores = None, 0.0, None

    def append(self, name, row):
        pass


# ----------------------------------------------------------------------------------------------
# Table and figures
# ----------------------------------------------------------------------------------------------
def write_results(results, noise, opt, folder):
    """results.md and the figures; returns the paths written."""
    from matplotlib.figure import Figure  # the object-oriented API renders with Agg, no pyplot state

    measure = "fid" if opt.fid else "fcd"
    written = []

    done = [r for r in results if r["summary"]]
    columns = min(4, len(results))
    rows = math.ceil(len(results) / columns)
    fig = Figure(figsize=(3.2 * columns, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, result in zip(axes, results):
        summary = result["summary"]
        ax.set_axis_off()
        if summary and summary.get("samples"):
            with Image.open(result["run_dir"] / summary["samples"]) as grid:
                ax.imshow(np.asarray(grid.convert("RGB")))
            score = f"{measure.upper()} {summary[measure]:.3g}, " if measure in summary else ""
            ax.set_title(
                f"{result['script']}\n{score}{summary['step']} steps, {format_time(summary['seconds'])}", fontsize=10
            )
        else:
            ax.set_title(f"{result['script']}\nfailed", fontsize=10)
    for ax in axes[len(results) :]:
        ax.set_axis_off()
    fig.savefig(folder / "grids.png", dpi=100)
    written.append(folder / "grids.png")

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    values = []
    for result in done:
        series = plots.metrics_series(result["run_dir"], x="seconds")
        if measure in series:
            seconds, scores = series[measure]
            ax.plot(seconds, scores, "o-", markersize=4, label=result["script"])
            values += list(scores)
    if noise and measure in noise:
        ax.axhline(noise[measure], color="grey", linestyle="--", label="uniform noise")
        values.append(noise[measure])
    if values and min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set(
        xlabel="wall-clock seconds of training",
        ylabel=f"{measure.upper()} (lower is better)",
        title=f"Sample quality against time on {opt.dataset}",
    )
    ax.grid(alpha=0.3)
    if values:
        ax.legend(fontsize=9)
    fig.savefig(folder / "quality_vs_time.png", dpi=100)
    written.append(folder / "quality_vs_time.png")

    critics = {
        r["script"]: r["run_dir"]
        for r in done
        if r["script"] in ("wgan", "wgan_gp") and (r["run_dir"] / "checkpoint.pt").exists()
    }
    if len(critics) == 2:
        written += plot_critics(critics, folder, Figure)
    (folder / "results.md").write_text(
        results_table(results, noise, opt, folder, measure)
    )  # last: it links the figures
    return [folder / "results.md"] + written


def results_table(results, noise, opt, folder, measure):
    """results.md: the setup, a table ranked by the score, and the figures."""
    ranked = sorted(results, key=lambda r: (r["summary"] is None, (r["summary"] or {}).get(measure, math.inf)))
    rows = [dict(kind="run", **r) for r in ranked]
    if noise and measure in noise:  # where uniform noise would rank, unnumbered
        at = next(
            (i for i, r in enumerate(rows) if not r["summary"] or r["summary"].get(measure, math.inf) > noise[measure]),
            len(rows),
        )
        rows.insert(at, dict(kind="noise"))
    scores = [
        name
        for name in ("fid", "fcd", "confident", "classes")
        if any(name in (r.get("summary") or {}) for r in results)
    ]
    names = dict(fid="FID ↓", fcd="FCD ↓", confident="confident", classes="classes")
    alone = [f"{measure.upper()} of G alone ↓"] if opt.defaults else []  # the other columns: G's average
    header = [names[s] for s in scores] + alone
    lines = [
        "| rank | script | steps | wall time | " + " | ".join(header) + " | final samples |",
        "|---:|---|---:|---:|" + "---:|" * len(header) + "---|",
    ]
    rank = 0
    for row in rows:
        if row["kind"] == "noise":
            cells = ["", "*uniform noise*", "", "", *(format_score(s, noise.get(s)) for s in scores)]
            cells += [""] * (len(alone) + 1)
        elif row["summary"]:
            rank += 1
            summary = row["summary"]
            image = (row["run_dir"] / summary["samples"]).relative_to(folder) if summary.get("samples") else None
            cells = [
                str(rank),
                row["script"],
                str(summary["step"]),
                format_time(summary["seconds"]),
                *(format_score(s, summary.get(s)) for s in scores),
                *[format_score(measure, (row["G"] or {}).get(measure))] * len(alone),
                f'<img src="{image.as_posix()}" width="128">' if image else "",
            ]
        else:
            cells = [
                "",
                row["script"],
                "",
                "",
                *(["failed"] + [""] * (len(scores) + len(alone) - 1) if scores else []),
                (row["error"] or "").replace("|", "/"),
            ]
        lines.append("| " + " | ".join(cells) + " |")

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {os.cpu_count()} cores"
        + (f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else "")
    )
    training = sum(r["summary"]["seconds"] for r in results if r["summary"])
    budget = (
        f"{opt.minutes:g} minutes of training each"
        if opt.minutes
        else f"each script's own defaults for {opt.dataset} (its steps and image size); the grids and scores are "
        f"of G's moving average (decay {opt.ema:g}), the column 'of G alone' of the same run's G"
        if opt.defaults
        else f"{opt.steps} generator steps each"
        if opt.steps
        else "generator steps per script from compare.py's DEFAULT_STEPS"
    )
    explain = dict(
        fcd="FCD: the Fréchet distance between real and generated images in the features of a small classifier "
        "trained on the real labelled images (lower is better). confident: the share of fakes the classifier "
        "assigns a class with probability >= 0.9; classes: how many classes those cover.",
        fid="FID: the Fréchet distance between real and generated images in pytorch-fid's Inception features "
        "(lower is better).",
    )
    text = [
        f"# GAN variants on {opt.dataset}",
        "",
        f"Written by `python compare.py {shlex.join(opt.argv)}` on {datetime.date.today()} ({device}; "
        f"{format_time(training)} of training in all). Budget: {budget}. Wall time is the training's own clock, "
        f"scoring during training included. {explain[measure]}",
        "",
        *lines,
        "",
        "![The final sample grids](grids.png)",
        "",
        "![Sample quality against wall-clock time](quality_vs_time.png)",
    ]
    for name, title in (
        ("critic_weights.png", "Critic weights: clipping against the gradient penalty"),
        ("critic_grad_norms.png", "Critic gradient norms over training"),
    ):
        if {"wgan", "wgan_gp"} <= {r["script"] for r in results if r["summary"]} and (folder / name).exists():
            text += ["", f"![{title}]({name})"]
    return "\n".join(text) + "\n"


def format_score(name, value):
    if value is None:
        return ""
    if name == "confident":
        return f"{value:.0%}"
    if name == "classes":
        return str(int(value))
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def plot_critics(critics, folder, Figure):
    """The two classic pictures of Gulrajani et al. (2017): where clipping puts the critic's weights,
    and the critic's gradient norms over training. Returns the paths written."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, (script, run_dir) in zip(fig.subplots(1, 2), critics.items()):
        checkpoint = common.load_checkpoint(run_dir)
        # Convolution (4-d) and linear (2-d) weights; norm layers' scales and all biases left out.
        weights = torch.cat(
            [
                w.flatten().float()
                for name, w in checkpoint["discriminator"].items()
                if name.endswith("weight") and w.dim() in (2, 4)
            ]
        ).numpy()
        edge = np.abs(weights).max() * 1.05
        ax.hist(weights, bins=np.linspace(-edge, edge, 101), color="C0" if script == "wgan" else "C1")
        ax.set_yscale("log")
        args = checkpoint["args"]
        if script == "wgan":
            c = args["clip_value"]
            for x in (-c, c):
                ax.axvline(x, color="red", linestyle="--", linewidth=1)
            share = float(np.mean(np.abs(weights) >= 0.999 * c))
            ax.set_title(f"wgan: weights clipped to ±c = {c:g}\n{share:.0%} of them sit at ±c", fontsize=10)
        else:
            spread = f"weights spread over ±{np.abs(weights).max():.2g}"
            ax.set_title(f"wgan_gp: gradient penalty, λ = {args.get('lambda_gp', 10):g}\n{spread}", fontsize=10)
        ax.set(xlabel=f"critic weight (conv and linear layers, step {checkpoint['step']})", ylabel="count")
    fig.savefig(folder / "critic_weights.png", dpi=100)
    written = [folder / "critic_weights.png"]

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for color, (script, run_dir) in zip(("C0", "C1"), critics.items()):
        series = plots.metrics_series(run_dir)
        for column, style, where in (("grad_norm_real", "-", "real"), ("grad_norm_fake", "--", "fake")):
            if column in series:
                steps, norms = series[column]
                ax.plot(steps, norms, color=color, linewidth=0.5, alpha=0.25)
                ax.plot(
                    *plots.moving_average(steps, norms),
                    color=color,
                    linestyle=style,
                    label=f"{script}, at {where} images",
                )
                drawn = True
    if not drawn:
        return written
    ax.axhline(1.0, color="grey", linestyle=":", label="the penalty's target, 1")
    ax.set_yscale("log")
    ax.set(
        xlabel="generator step",
        ylabel="mean ||grad_x D(x)||_2",
        title="Critic gradient norms: weight clipping (wgan) against the gradient penalty (wgan_gp)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.savefig(folder / "critic_grad_norms.png", dpi=100)
    return written + [folder / "critic_grad_norms.png"]


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def plot_run(run_dir):
    """--plot: redraw one run folder's losses.png and progress.gif."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "metrics.csv").exists() and not (run_dir / "samples").is_dir():
        raise common.UsageError(f"--plot {run_dir}: not a run folder (it holds no metrics.csv and no samples/)")
    for path in plots.save_plots(run_dir):
        print(path)


def main(opt):
    if opt.plot:
        return plot_run(opt.plot)
    folder = Path(opt.out) / opt.dataset
    try:
        (folder / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise common.UsageError(f"cannot write {folder} ({error.strerror}): pass --out with a writable folder")
    start = time.monotonic()
    results = []
    for number, script in enumerate(opt.scripts, 1):
        print(f"[{number}/{len(opt.scripts)}] ", end="")
        results.append(compare_one(script, opt, folder))
    noise = noise_scores(results)
    written = write_results(results, noise, opt, folder)
    failed = [r["script"] for r in results if not r["summary"]]
    print(
        f"done in {format_time(time.monotonic() - start)}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + "; wrote "
        + ", ".join(str(p) for p in written)
    )


if __name__ == "__main__":
    common.main(main, parse_args)
