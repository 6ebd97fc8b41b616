"""Compare the GAN variants on one data set: train (or reuse) each script within a budget, score its samples, and
write one table and a few figures.

Each script runs as its own process (`python <script>.py --out <out>/<dataset>/runs --n_iters STEPS --fcd ...`),
scored --evals times while it trains. Under --minutes it is stopped as by Ctrl-C when its time is up, and then
`--resume RUN --n_iters STEP` at its checkpoint's step trains nothing and scores it. <out>/<dataset>/ then gets:
    results.md              one row per script, best score first: steps, wall time, scores, final grid
    grids.png               the final sample grids side by side
    quality_vs_time.png     the score against wall-clock seconds of training, one line per script
    critic_weights.png      with wgan and wgan_gp: their critics' weights (clipping piles them up at +-c)
    critic_grad_norms.png   with wgan and wgan_gp: ||grad_x D(x)|| at real and fake images over training
A run that an earlier comparison finished with the same budget and flags is reused (with a note if its script has
changed since), one it left unfinished is continued: the same command again costs nothing (--retrain: afresh).

    python tools/compare.py --dataset digits    # all seven, default budgets: < 30 min on 2 CPU cores; or, say,
    python tools/compare.py --dataset cifar10 --data_root data --scripts wgan wgan_gp --minutes 5 --fid
"""

import contextlib
import functools
import hashlib
import importlib
import json
import math
import shlex
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the scripts, common.py and plots.py

import common
import lab
import plots

ROOT = Path(__file__).resolve().parent.parent  # where the scripts are
# Steps per script without --steps or --minutes: about 3 minutes each on 2 CPU cores with digits at 32x32 (RATES).
DEFAULT_STEPS = dict(dcgan=1500, lsgan=1500, cgan=1500, cogan=750, wgan=1000, wgan_gp=800, began=2240)
# Generator steps per second there, which space the scores under --minutes (wgan's: its first 1000, boosts included).
RATES = dict(dcgan=7.9, lsgan=7.6, cgan=7.6, cogan=5.0, wgan=5.5, wgan_gp=3.9, began=15.1)
# Flags that compare.py sets itself (or that its budget overrides), refused in --script_args.
OWN_FLAGS = ("--img_size", "--out", "--resume", "--n_iters", "--n_epochs", "--fid", "--fcd", "--fid_interval",
             "--generate", "--interpolate", "--ema")  # fmt: skip
TIME_BUDGET_STEPS = 10**9  # --n_iters under --minutes: more steps than any time budget reaches; the clock ends it
EXPLAIN = dict(  # results.md's words on each score
    fcd="FCD: the Fréchet distance of real and generated images in the features of a classifier of the labelled "
    "images (lower is better); confident: the share of fakes it classes with p >= 0.9; classes: how many they cover.",
    fid="FID: the Fréchet distance of real and generated images in pytorch-fid's Inception features, lower is better.",
)


def parse_args(argv=None):
    parser = lab.ToolParser("compare.py", "Train the GAN variants and compare their samples.", "compare")
    arg, budget = parser.add_argument, parser.add_mutually_exclusive_group().add_argument
    steps = ", ".join(f"{s} {n}" for s, n in DEFAULT_STEPS.items())
    budget("--steps", type=common.positive_int, help=f"generator steps for every script (default: per script, {steps})")
    budget("--defaults", action="store_true", help="each script at its own defaults: steps, image size; G scored too")
    budget("--minutes", type=common.positive_float, help="minutes of training each, then stopped as by Ctrl-C, scored")
    arg("--fid", action="store_true", help="score by FID (pytorch-fid; see the scripts' --fid_weights), not FCD")
    arg("--evals", type=common.positive_int, default=5, help="scores per run, evenly spaced, the last at the end")
    arg("--ema", type=common.ema_decay, default=0.995, help="the decay of G's average, which draws the grids; 0: G")
    arg("--out", default="compare", help="results go to <out>/<dataset>/, run folders to <out>/<dataset>/runs/")
    arg("--retrain", action="store_true", help="train every script afresh instead of reusing earlier runs")
    arg("--plot", metavar="RUN_DIR", help="only redraw losses.png and progress.gif in one run folder and exit")
    hint = " (use --img_size, --steps, --defaults, --minutes, --fid, --evals, --ema, --out)"
    opt = parser.parse(argv, OWN_FLAGS, hint)
    if opt.defaults and opt.img_size:
        parser.error("--defaults trains each script at its own image size: drop --img_size")
    opt.img_size = None if opt.defaults else opt.img_size or common.DATASETS[opt.dataset]["img_size"]
    return opt


def compare_one(script, opt, folder):
    """Train `script` within the budget (or reuse a run that an earlier comparison finished, or continue one it
    stopped) and score it: a dict of script, run_dir, summary (None when it failed), error and G (G alone's)."""
    key = {name: getattr(opt, name) for name in ("dataset", "data_root", "img_size", "ema", "fid", "evals")}
    key.update(dict(minutes=opt.minutes) if opt.minutes else dict(steps=budget_steps(script, opt)), script=script)
    key.update(script_args=opt.extra[script], **(dict(defaults=True) if opt.defaults else {}))  # what a reuse matches
    run_dir, code, error = None if opt.retrain else find_run(folder / "runs", key), 0, None
    if run_dir and (run_dir / "summary.json").exists():
        changed = json.loads((run_dir / "compare.json").read_text()).get("code") != script_hash(script)
        note = f"; {script}.py has changed since: --retrain to train it again" if changed else ""
        print(f"{script}: reusing {run_dir}, finished earlier with the same budget and flags{note}")
    else:
        code, run_dir, error = train(script, opt, folder, key, run_dir)
    result = dict(script=script, run_dir=run_dir, summary=None, error=None, G=None)
    if code != 0 or not (run_dir and (run_dir / "summary.json").exists()):
        result["error"] = error or (f"exit code {code}" if code else "it wrote no summary.json")
        print(f"{script}: FAILED: {result['error']} (its output: {folder / 'logs' / script}.out and .err)")
        return result
    result["summary"] = json.loads((run_dir / "summary.json").read_text())
    print(f"{script}: {describe(result['summary'])}")
    if opt.defaults:
        result["G"] = score_g_itself(script, run_dir, "--fid" if opt.fid else "--fcd", folder, key)
    return result


def train(script, opt, folder, key, run_dir):
    """Train `script`, or continue `run_dir`, within the budget and score it; (exit code, run folder, error)."""
    scores = ["--fid" if opt.fid else "--fcd"]
    if opt.evals > 1:
        expected = opt.minutes * 60 * RATES[script] if opt.minutes else budget_steps(script, opt)
        scores += ["--fid_interval", str(max(1, math.ceil(expected / opt.evals)))]
    scores += ["--log_grad_norms"] if script in ("wgan", "wgan_gp") else []
    limit = opt.minutes * 60 if opt.minutes else None
    if run_dir:  # an earlier comparison stopped it before the end: continue from its checkpoint
        checkpoint = common.load_checkpoint(run_dir)
        print(f"{script}: continuing {run_dir} from step {checkpoint['step']}")
        command = ["--resume", str(run_dir), *scores]
        limit = limit and limit - checkpoint["seconds"]  # what is left of the time budget
    else:
        command = ["--dataset", opt.dataset, "--data_root", opt.data_root, "--out", str(folder / "runs")]
        command += ["--ema", str(opt.ema), *([] if opt.defaults else ["--img_size", str(opt.img_size)])]
        command += [*scores, *opt.extra[script]]
        print(f"{script}: training " + (f"for {opt.minutes:g} minutes" if opt.minutes else f"{key['steps']} steps"))
    command += ["--n_iters", str(TIME_BUDGET_STEPS if opt.minutes else budget_steps(script, opt))]
    code, error = 130, None  # unless it runs below: its time was spent before it was stopped, so only score it
    if limit is None or limit > 0:
        code, run_dir, error = run_script(script, command, folder, key, run_dir, limit)
    if code == 130 and limit is not None and run_dir and (run_dir / "checkpoint.pt").exists():
        # Stopped by the time budget: --resume at the checkpoint's own step trains nothing, then scores.
        step = common.load_checkpoint(run_dir)["step"]
        print(f"{script}: {opt.minutes:g} minutes are up at step {step}; scoring it")
        resume = ["--resume", str(run_dir), "--n_iters", str(step), scores[0]]
        code, _, error = run_script(script, resume, folder, key, run_dir, append=True)
    if code == 2:  # a bad flag or missing data: every other script would fail the same way
        raise common.UsageError(f"{script}.py stopped: {error}")
    if code == 130:
        raise KeyboardInterrupt
    return code, run_dir, error


def script_hash(script):
    """A fingerprint of the script's file, kept with the run to tell when it has changed since."""
    return hashlib.sha256((ROOT / f"{script}.py").read_bytes()).hexdigest()[:16]


def budget_steps(script, opt):
    if opt.defaults:  # the script's own default for the data set
        return importlib.import_module(script).DATASET_DEFAULTS[opt.dataset]["n_iters"]
    return opt.steps or DEFAULT_STEPS[script]


def score_g_itself(script, run_dir, measure, folder, key):
    """G alone's summary (the run's is its average's): the checkpoint copied to <run>/G with G as average, scored."""
    alone = run_dir / "G"
    if not (alone / "summary.json").exists():
        checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        averaged = {f"module.{name}": value for name, value in checkpoint["generator"].items()}
        checkpoint["ema_G"] = dict(averaged, n_averaged=checkpoint["ema_G"]["n_averaged"])
        alone.mkdir(exist_ok=True)
        torch.save(checkpoint, alone / "checkpoint.pt")
        resume = ["--resume", str(alone), "--n_iters", str(checkpoint["step"]), measure]
        code, _, error = run_script(script, resume, folder, key, alone, append=True)
        if code != 0 or not (alone / "summary.json").exists():
            print(f"{script}: scoring G itself FAILED: {error or f'exit code {code}'}")
            return None
    summary = json.loads((alone / "summary.json").read_text())
    print(f"{script}: G itself, {describe(summary)}")
    return summary


def find_run(runs, key):
    """The run folder that a comparison with the same key finished, else one it stopped after a checkpoint, or None."""
    found = []
    for marker in runs.glob(f"{key['script']}_{key['dataset']}_*/compare.json"):
        with contextlib.suppress(OSError, ValueError):  # a half-written or foreign file: not a match
            marked = {name: value for name, value in json.loads(marker.read_text()).items() if name != "code"}
            if marked == key and any((marker.parent / name).exists() for name in ("summary.json", "checkpoint.pt")):
                found.append(marker.parent)
    return max(found, key=lambda d: ((d / "summary.json").exists(), d.name), default=None)


def run_script(script, args, folder, key, run_dir=None, limit=None, append=False):
    """Run `script` with `args`, its output into (or `append`ed to) <folder>/logs/<script>.out and .err, stopped as
    by Ctrl-C (a checkpoint, exit code 130) `limit` seconds into its training; (exit code, run folder, error line)."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    out, err = folder / "logs" / f"{script}.out", folder / "logs" / f"{script}.err"
    command = [sys.executable, "-u", str(ROOT / f"{script}.py"), *args]  # -u: the logs fill as it runs
    launched, started = time.time(), None

    def started_run():  # the run folder (`run_dir`, or a new one) where its Run wrote config.json, as training began
        for candidate in [run_dir] if run_dir else (folder / "runs").glob(f"{key['script']}_{key['dataset']}_*"):
            with contextlib.suppress(OSError):  # not written yet
                if (candidate / "config.json").stat().st_mtime >= launched:
                    marker = dict(key, code=script_hash(key["script"]))
                    (candidate / "compare.json").write_text(json.dumps(marker, indent=2) + "\n")
                    return candidate

    with open(out, "a" if append else "w") as stdout, open(err, "a" if append else "w") as stderr:
        print(shlex.join(command), file=stdout, flush=True)
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        try:
            while process.poll() is None:
                time.sleep(0.5)
                if started is None and (found := started_run()):  # its Run wrote config.json: training begins
                    run_dir, started, report = found, time.monotonic(), time.monotonic() + 60
                if limit is not None and started and time.monotonic() - started >= limit:
                    process.send_signal(signal.SIGINT)
                    limit = None
                if started and time.monotonic() >= report:  # a progress line a minute
                    step = plots.metrics_series(run_dir).get("seconds", [[0]])[0][-1]  # the last step logged
                    print(f"  {script}: step {step:.0f}", flush=True)
                    report += 60
        except KeyboardInterrupt:  # Ctrl-C reached the script too: let it save its checkpoint
            print(f"\n{script}: interrupted, waiting for its checkpoint; the same command continues", file=sys.stderr)
            process.wait()
            raise
    if started is None:  # it ended within half a second, or before its Run began
        run_dir = started_run() or run_dir
    return process.returncode, run_dir, lab.error_line(err.read_text(errors="replace"))


def describe(summary):
    scores = "".join(f", {name} {summary[name]:.4g}" for name in ("fid", "fcd") if name in summary)
    return f"{summary['step']} steps in {format_time(summary['seconds'])}{scores}"


def format_time(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def noise_scores(results):
    """The scores of uniform noise, set up as the first scored run's (or None): the mark every variant must beat."""
    import scoring  # as in the scripts, only where scores are asked for

    run_dir = next((r["run_dir"] for r in results if r["summary"] and {"fcd", "fid"} & set(r["summary"])), None)
    if run_dir is None:
        return None
    opt = types.SimpleNamespace(**json.loads((run_dir / "config.json").read_text()))
    device, size = common.get_device(opt.device), (opt.channels, opt.img_size, opt.img_size)
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, opt.channels)
    reals = functools.partial(common.Batches, data, opt.batch_size, device, 0, opt.n_cpu, shard=False)
    scorer = scoring.Scorer(opt, data, device, reals)

    def noise(generator, n, rng):  # no generator: the noise is the fake
        return torch.rand(n, *size, generator=rng, device=device) * 2 - 1, None

    return scorer.measure(torch.nn.Identity(), noise)


def write_results(results, noise, opt, folder):
    """results.md and the figures; returns the paths written."""
    from matplotlib.figure import Figure  # the object-oriented API renders with Agg, no pyplot state
    from matplotlib.image import imread

    measure, done = "fid" if opt.fid else "fcd", [r for r in results if r["summary"]]
    columns, rows = min(4, len(results)), math.ceil(len(results) / 4)
    fig = Figure(figsize=(3.2 * columns, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, subplot_kw=dict(frame_on=False, xticks=[], yticks=[])).flatten()
    for ax, result in zip(axes, results):
        summary, title = result["summary"], "failed"
        if summary and summary.get("samples"):
            ax.imshow(imread(result["run_dir"] / summary["samples"]), cmap="gray", vmin=0, vmax=1)  # L or RGB
            score = f"{measure.upper()} {summary[measure]:.3g}, " if measure in summary else ""
            title = f"{score}{summary['step']} steps, {format_time(summary['seconds'])}"
        ax.set_title(f"{result['script']}\n{title}", fontsize=10)
    fig.savefig(folder / "grids.png", dpi=100)

    ax = Figure(figsize=(8, 5), layout="constrained").subplots()
    for result in done:
        if measure in (series := plots.metrics_series(result["run_dir"], x="seconds")):
            ax.plot(*series[measure], "o-", markersize=4, label=result["script"])
    if noise and measure in noise:
        ax.axhline(noise[measure], color="grey", linestyle="--", label="uniform noise")
    labels = dict(xlabel="wall-clock seconds of training", ylabel=f"{measure.upper()} (lower is better)")
    log = ax.dataLim.y1 > 30 * ax.dataLim.y0 > 0  # the scores span more than a factor 30: uniform noise's, often
    ax.set(**labels, title=f"Sample quality against time on {opt.dataset}", yscale="log" if log else "linear")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=9)
    ax.figure.savefig(folder / "quality_vs_time.png", dpi=100)
    figures = {"grids.png": "The final sample grids", "quality_vs_time.png": "Sample quality against wall-clock time"}

    critics = {r["script"]: r["run_dir"] for r in done if r["script"] in ("wgan", "wgan_gp")}
    if len(critics) == 2 and all((run_dir / "checkpoint.pt").exists() for run_dir in critics.values()):
        figures.update(plot_critics(critics, folder, Figure))
    (folder / "results.md").write_text(results_table(results, noise, opt, folder, measure, figures))
    return [folder / name for name in ["results.md", *figures]]


def results_table(results, noise, opt, folder, measure, figures):
    """results.md: the setup, the runs ranked by the score (uniform noise among them), the `figures` {name: title}."""
    rows = results + ([dict(script="*uniform noise*", summary=noise, noise=True)] if noise and measure in noise else [])
    rows.sort(key=lambda row: (not row["summary"], (row["summary"] or {}).get(measure, math.inf)))
    scores = [s for s in ("fid", "fcd", "confident", "classes") if any(s in (r["summary"] or {}) for r in results)]
    alone = [f"{measure.upper()} of G alone ↓"] * opt.defaults  # the other scores are G's average's
    header = [dict(fid="FID ↓", fcd="FCD ↓").get(s, s) for s in scores] + alone
    lines = ["| rank | script | steps | wall time | " + " | ".join(header) + " | final samples |"]
    lines.append("|---:|---|---:|---:|" + "---:|" * len(header) + "---|")
    rank = 0
    for row in rows:
        summary = row["summary"] or {}
        cells = ["", row["script"], "", "", *(format_score(s, summary.get(s)) for s in scores)]
        if row.get("noise"):
            cells += [""] * (opt.defaults + 1)
        elif summary:
            rank += 1
            image = (row["run_dir"] / summary["samples"]).relative_to(folder) if summary.get("samples") else None
            cells[0], cells[2], cells[3] = str(rank), str(summary["step"]), format_time(summary["seconds"])
            cells += [format_score(measure, (row["G"] or {}).get(measure))] * opt.defaults
            cells.append(f'<img src="{image.as_posix()}" width="128">' if image else "")
        else:
            cells[4:] = ["failed"] + [""] * (len(header) - 1) if scores else []
            cells.append((row["error"] or "").replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")

    device = lab.describe(lab.machine(common.get_device("auto")))
    training = format_time(sum(r["summary"]["seconds"] for r in results if r["summary"]))
    budget = f"{opt.steps} generator steps each" if opt.steps else "generator steps per script from DEFAULT_STEPS"
    budget = f"{opt.minutes:g} minutes of training each" if opt.minutes else budget
    if opt.defaults:
        budget = f"each script's defaults for {opt.dataset}; grids and scores of G's average (decay {opt.ema:g})"
    text = f"# GAN variants on {opt.dataset}\n\nWritten by `python tools/compare.py {shlex.join(opt.argv)}` on "
    text += f"{time.strftime('%Y-%m-%d')} ({device}; {training} of training in all). Budget: {budget}. Wall time is "
    text += f"the training's own clock, scoring during training included. {EXPLAIN[measure]}\n\n" + "\n".join(lines)
    return text + "".join(f"\n\n![{title}]({name})" for name, title in figures.items()) + "\n"


def format_score(name, value):
    if value is None or name in ("confident", "classes"):
        return "" if value is None else f"{value:.0%}" if name == "confident" else str(int(value))
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def plot_critics(critics, folder, Figure):
    """Gulrajani et al.'s (2017) pictures: the critics' weights and gradient norms; {file name: title} of each."""
    axes = Figure(figsize=(10, 4), layout="constrained").subplots(1, 2)
    for ax, (script, run_dir) in zip(axes, critics.items()):
        checkpoint = common.load_checkpoint(run_dir)
        # Convolution (4-d) and linear (2-d) weights; norm layers' scales and all biases left out.
        layers = [w for name, w in checkpoint["discriminator"].items() if name.endswith("weight") and w.dim() in (2, 4)]
        weights = torch.cat([w.flatten().float() for w in layers]).numpy()
        edge, c = np.abs(weights).max(), checkpoint["args"].get("clip_value")
        ax.hist(weights, bins=np.linspace(-1.05 * edge, 1.05 * edge, 101), color="C0" if script == "wgan" else "C1")
        if script == "wgan":
            ax.vlines([-c, c], 0, 1, transform=ax.get_xaxis_transform(), colors="red", linestyles="--", linewidth=1)
            share = float(np.mean(np.abs(weights) >= 0.999 * c))
            ax.set_title(f"wgan: weights clipped to ±c = {c:g}\n{share:.0%} of them sit at ±c", fontsize=10)
        else:
            penalty = checkpoint["args"].get("lambda_gp", 10)
            ax.set_title(f"wgan_gp: gradient penalty, λ = {penalty:g}\nweights spread over ±{edge:.2g}", fontsize=10)
        ax.set(xlabel=f"critic weight (conv and linear layers, step {checkpoint['step']})", ylabel="count")
        ax.set_yscale("log")
    ax.figure.savefig(folder / "critic_weights.png", dpi=100)
    figures = {"critic_weights.png": "Critic weights: clipping against the gradient penalty"}

    ax = Figure(figsize=(8, 5), layout="constrained").subplots()
    for color, (script, run_dir) in zip(("C0", "C1"), critics.items()):
        series = plots.metrics_series(run_dir)
        for column, style, where in (("grad_norm_real", "-", "real"), ("grad_norm_fake", "--", "fake")):
            if column in series:
                ax.plot(*series[column], color=color, linewidth=0.5, alpha=0.25)
                label = f"{script}, at {where} images"
                ax.plot(*plots.moving_average(*series[column]), color=color, linestyle=style, label=label)
    if ax.lines:
        ax.axhline(1.0, color="grey", linestyle=":", label="the penalty's target, 1")
        title = "Critic gradient norms: weight clipping (wgan) against the gradient penalty (wgan_gp)"
        ax.set(xlabel="generator step", ylabel="mean ||grad_x D(x)||_2", yscale="log", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        ax.figure.savefig(folder / "critic_grad_norms.png", dpi=100)
        figures["critic_grad_norms.png"] = "Critic gradient norms over training"
    return figures


def main(opt):
    if opt.plot:  # redraw one run folder's losses.png and progress.gif
        run_dir = Path(opt.plot).expanduser()
        if not (run_dir / "metrics.csv").exists() and not (run_dir / "samples").is_dir():
            raise common.UsageError(f"--plot {run_dir}: not a run folder (it holds no metrics.csv and no samples/)")
        for path in plots.save_plots(run_dir):
            print(path)
        return
    folder = Path(opt.out) / opt.dataset
    try:
        (folder / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise common.UsageError(f"cannot write {folder} ({error.strerror}): pass --out with a writable folder")
    start, results = time.monotonic(), []
    for number, script in enumerate(opt.scripts, 1):
        print(f"[{number}/{len(opt.scripts)}] ", end="")
        results.append(compare_one(script, opt, folder))
    written = write_results(results, noise_scores(results), opt, folder)
    failed = [r["script"] for r in results if not r["summary"]]
    failed = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"done in {format_time(time.monotonic() - start)}{failed}; wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    common.main(main, parse_args)
