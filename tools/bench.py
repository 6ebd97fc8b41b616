"""Benchmark: how far each script's training step is from what the device can do.

For each precision (float32, --amp, --amp --compile) and script, in a fresh process of its own, the script's own
train() runs, watched from outside: Run.progress marks where each generator step begins (synchronised on CUDA) and
the data stream counts the real images each step draws. Per script and precision:

    ms/step      the median time of a generator step (n_critic D updates, one G update, the log; the median
                 leaves out the sample grids and checkpoints that fall among the steps), after a warm-up
    images/s     real training images the loop consumes per second
    peak memory  torch.cuda.max_memory_allocated on CUDA, the process's peak resident set on the CPU
    GFLOP/step   the FLOPs of one generator step, its updates alone, counted once per script on its first
                 steady step with torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions)
    GFLOP/s      GFLOP/step / the step's time
    of peak      GFLOP/s as a fraction of the device's peak, measured in the same run by a large matmul in the same
                 precision: float32 (on CUDA with TF32 where cuDNN uses it for the scripts' convolutions, PyTorch's
                 default), and for --amp bfloat16, or float16 where the device lacks bfloat16

Run:
    python tools/bench.py                                # all seven, digits 32x32, batch 64, in all three precisions
    python tools/bench.py --scripts dcgan --steps 3 --precisions float32 amp    # on a CPU --compile takes minutes
    python tools/bench.py --dataset folder --data_root ../shared/data/anime64 --img_size 64 --device cuda
    python tools/bench.py --scripts wgan --script_args "wgan: --n_critic_boost 0"   # skip its 25 slow first steps

Prints one markdown table per precision and writes them, with every number, to --json (and the same name with
.md), rewritten after each row: a bench stopped early keeps what it measured. The tests run it on tiny sizes and
never assert a timing.
"""

import argparse
import collections
import contextlib
import importlib
import io
import itertools
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the scripts and common.py

import common
import lab

PRECISIONS = {"float32": [], "amp": ["--amp"], "amp_compile": ["--amp", "--compile"]}
# Flags that bench.py sets itself (or that its steps override), refused in --script_args.
OWN_FLAGS = (
    "--out", "--resume", "--n_iters", "--n_epochs", "--generate", "--interpolate", "--label", "--amp", "--compile",
)  # fmt: skip


def parse_args(argv=None):
    parser = lab.ToolParser("bench.py", "Time each GAN script's step against the device's peak.", "time")
    arg = parser.add_argument
    arg("--batch_size", type=common.positive_int, default=64, help="images per batch")
    arg("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    arg("--steps", type=common.positive_int, default=50, help="generator steps timed, after the warm-up")
    arg("--warmup", type=common.nonnegative_int, default=10, help="generator steps left out at the start")
    arg(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        metavar="PRECISION",
        help="float32, amp (--amp) and amp_compile (--amp --compile), in this order (default: all three)",
    )
    arg(
        "--matmul_size",
        type=common.positive_int,
        help="N of the N x N matmul of the peak (default: 8192 on CUDA, 2048 elsewhere)",
    )
    arg(
        "--json",
        help="where to write the results (default: bench/bench_<dataset>_<img_size>_<device>.json); "
        "the tables go to the same name with .md",
    )
    arg(
        "--in_process",
        action="store_true",
        help="measure every script in this process instead of a fresh process "
        "each: quicker to start (the tests use it), but the peak memory is then the highest so far",
    )
    arg("--_child", help=argparse.SUPPRESS)  # SCRIPT:PRECISION[:count]: measure one in this process...
    arg("--_result", help=argparse.SUPPRESS)  # ...and write its row there as JSON
    opt = parser.parse(argv, OWN_FLAGS, hint=" (use --precisions)")
    opt.img_size = opt.img_size or common.DATASETS[opt.dataset]["img_size"]
    return opt


def script_opt(name, opt, *more):
    """The script's module and options: the data and sizes asked for, its defaults for everything else, then
    --script_args and `more`. A bad flag is one line naming the script."""
    module = importlib.import_module(name)
    argv = ["--dataset", opt.dataset, "--data_root", opt.data_root, "--img_size", str(opt.img_size)]
    argv += ["--batch_size", str(opt.batch_size), "--device", opt.device, *opt.extra[name], *more]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return module, module.parse_args(argv)
    except SystemExit:
        message = (errors.getvalue().strip().splitlines() or ["bad flags"])[-1]
        message = re.sub(r" \(see --help\)$", "", re.sub(r"^.*?error: ", "", message))
        raise common.UsageError(f"{name}.py refuses the flags bench.py passes it ({message})")


def sync(device):  # kernels run asynchronously on GPUs: a timing waits for them
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mb(device):
    """This process's peak: max allocated on CUDA, else the resident set's high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def plan(module, script, opt):
    """(the step whose FLOPs are counted, the steps timed): the first steady step after step 1 (which pays for
    cuDNN's and torch.compile's first calls), then --warmup steps left out, then --steps timed. Steady: the
    script's usual number of D steps (wgan's own critic_steps boosts its first 25 and every 500th)."""
    boost = getattr(module, "critic_steps", None)
    steady = (
        s
        for s in itertools.count(2)
        if not boost or boost(s - 1, script.n_critic, script.n_critic_boost) == script.n_critic
    )
    count, *rest = itertools.islice(steady, 1 + opt.warmup + opt.steps)
    return count, rest[opt.warmup :]


class StepFlops(FlopCounterMode):
    """FlopCounterMode for the total alone: its per-module breakdown hooks every module's inputs, which breaks
    torch.autograd.grad on a leaf (wgan_gp's penalty; pytorch/pytorch#131753)."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = contextlib.nullcontext()
        self.mod_tracker.parents = {"Global"}  # where FlopCounterMode adds up the counts


def measure(name, precision, opt, count):
    """Train `name` in this process with `precision`'s flags for the planned steps, watching its loop; returns
    the row: the median seconds of the timed steps, the real images each drew, the peak memory and, with `count`,
    the FLOPs of one step."""
    module, script = script_opt(name, opt)
    count_step, timed = plan(module, script, opt)
    device = common.get_device(opt.device)
    starts, drawn, now, counting = {}, collections.Counter(), [0], contextlib.ExitStack()
    counter = StepFlops()
    progress, log, batches = common.Run.progress, common.Run.log, common.Batches.__iter__

    def watched_progress(run, start):
        for step in progress(run, start):
            sync(device)
            starts[step], now[0] = time.perf_counter(), step
            if count and step == count_step:
                counting.enter_context(counter)
            yield step

    def watched_log(run, step, **values):
        counting.close()  # the step's updates are done: its log, grid and checkpoint are no part of its FLOPs
        return log(run, step, **values)

    def watched_batches(stream):
        for images, labels in batches(stream):
            drawn[now[0]] += images.size(0)
            yield images, labels

    if device.type == "cuda":
        torch.cuda.init()  # the allocator's peak counters exist once CUDA does
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp, counting:
        script = script_opt(name, opt, *PRECISIONS[precision], "--out", tmp, "--n_iters", str(timed[-1] + 1))[1]
        loop = mock.patch.multiple(common.Run, progress=watched_progress, log=watched_log)
        stream, no_plots = (
            mock.patch.object(common.Batches, "__iter__", watched_batches),
            mock.patch("plots.save_plots"),
        )
        with loop, stream, no_plots:  # the plots at the end: a wait, untimed
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                module.train(script)
    seconds = statistics.median(starts[step + 1] - starts[step] for step in timed)
    images = statistics.median(drawn[step] for step in timed)
    return dict(
        script=name,
        precision=precision,
        ms_per_step=seconds * 1e3,
        images_per_s=images / seconds,
        real_images_per_step=images,
        peak_memory_mb=peak_memory_mb(device),
        timed_steps=len(timed),
        first_timed_step=timed[0],
        flops=counter.get_total_flops() if count else None,
    )


def matmul_peak(device, dtype, n):
    """FLOP/s of the fastest of ten n x n matmuls in `dtype` after one: the device's peak as this run measures it.
    float32 runs as the scripts' convolutions do: with TF32 on CUDA where cuDNN allows it (PyTorch's default)."""
    a, b = torch.randn(2, n, n, device=device).to(dtype)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    times = []
    try:
        for _ in range(11):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / min(times[1:])


def run_child(name, precision, opt, count):
    """measure() in a fresh process, so that its peak memory is its own; a failure is the row's one-line error."""
    with tempfile.TemporaryDirectory() as tmp:
        result, child = Path(tmp) / "row.json", f"{name}:{precision}" + ":count" * count
        command = [sys.executable, __file__, *opt.argv, "--_child", child, "--_result", str(result)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and result.exists():
            return json.loads(result.read_text())
    return dict(script=name, precision=precision, error=lab.error_line(done.stderr) or f"exit code {done.returncode}")


def measure_here(name, precision, opt, count):
    """measure() in this process; a failure is the row's one-line error, as in a fresh process."""
    try:
        return measure(name, precision, opt, count)
    except Exception as error:  # a script that cannot run here (its data, a compiler...): the others still can
        message = str(error) if isinstance(error, tuple(common.USAGE_ERRORS)) else f"{type(error).__name__}: {error}"
        return dict(script=name, precision=precision, error=common.first_line(message))


def number(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def render(results):
    """The markdown tables, one per precision."""
    s = results["settings"]
    out = [
        f"{s['dataset']} at {s['img_size']}x{s['img_size']}, batch {s['batch_size']}, on {s['device']}: medians over "
        f"{s['steps']} generator steps after {s['warmup']} warm-up steps; the peak of {s['matmul_size']}x"
        f"{s['matmul_size']} matmuls.",
        f"Machine: {lab.describe(results['machine'])}.",
    ]
    for precision in s["precisions"]:
        dtype = results["dtypes"][precision]
        tf32 = " with TF32, as cuDNN runs float32 convolutions" if s["tf32"] and dtype == "float32" else ""
        out += [
            "",
            f"{precision} ({' '.join(PRECISIONS[precision]) or 'no flag'}): the peak of a {dtype} matmul{tf32}, "
            f"{number(results['peak_gflop_per_s'][dtype])} GFLOP/s",
            "",
            "| script | ms/step | images/s | peak memory MB | GFLOP/step | GFLOP/s | of peak |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in (row for row in results["rows"] if row["precision"] == precision):
            if "error" in row:
                out.append(f"| {row['script']} | not measured: {row['error']} | | | | | |")
                continue
            flops = [number(row[key]) if row.get(key) else "-" for key in ("gflop_per_step", "gflop_per_s")]
            fraction = f"{row['of_peak']:.2g}" if row.get("of_peak") else "-"
            out.append(
                f"| {row['script']} | {number(row['ms_per_step'])} | {number(row['images_per_s'])} | "
                f"{number(row['peak_memory_mb'])} | {' | '.join(flops)} | {fraction} |"
            )
    return "\n".join(out)


def benchmark(opt):
    if opt._child:
        name, precision, *count = opt._child.split(":")
        return Path(opt._result).write_text(json.dumps(measure(name, precision, opt, bool(count))))
    device = common.get_device(opt.device)
    for name in opt.scripts:
        script_opt(name, opt)  # a flag a script refuses fails now, in one line, not after minutes
    path = Path(opt.json or f"bench/bench_{opt.dataset}_{opt.img_size}_{device.type}.json")
    dtypes = {p: str(common.amp_dtype(device) if "--amp" in PRECISIONS[p] else torch.float32) for p in opt.precisions}
    dtypes = {p: dtype.removeprefix("torch.") for p, dtype in dtypes.items()}
    print(f"measuring the peak of {', '.join(sorted(set(dtypes.values())))} matmuls...", file=sys.stderr, flush=True)
    n = opt.matmul_size or (8192 if device.type == "cuda" else 2048)
    peaks = {dtype: matmul_peak(device, getattr(torch, dtype), n) / 1e9 for dtype in set(dtypes.values())}
    settings = {key: getattr(opt, key) for key in ("dataset", "data_root", "img_size", "batch_size", "steps", "warmup")}
    settings.update(device=str(device), precisions=opt.precisions, script_args=opt.script_args, matmul_size=n)
    settings["tf32"] = device.type == "cuda" and torch.backends.cudnn.allow_tf32  # float32 convolutions, and its peak
    results = dict(machine=lab.machine(device), settings=settings, dtypes=dtypes, peak_gflop_per_s=peaks, rows=[])
    flops = {}  # per script, counted in its first row measured
    for precision, name in itertools.product(opt.precisions, opt.scripts):
        print(f"timing {name}, {precision}...", file=sys.stderr, flush=True)
        row = (measure_here if opt.in_process else run_child)(name, precision, opt, name not in flops)
        if "error" in row:
            print(f"  not measured: {row['error']}", file=sys.stderr)
        else:
            flops.setdefault(name, row.pop("flops"))
            row.update(gflop_per_step=flops[name] / 1e9, gflop_per_s=flops[name] / 1e6 / row["ms_per_step"])
            row["of_peak"] = row["gflop_per_s"] / peaks[dtypes[precision]]
            print(f"  {number(row['ms_per_step'])} ms/step, {number(row['gflop_per_s'])} GFLOP/s", file=sys.stderr)
        results["rows"].append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        path.with_suffix(".md").write_text(render(results) + "\n")
    if all("error" in row for row in results["rows"]):
        first = results["rows"][0]
        raise common.UsageError(f"nothing could be measured; {first['script']}: {first['error']}")
    print(render(results))
    print(f"\nwrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return results


def main(argv=None):
    return benchmark(parse_args(argv))


if __name__ == "__main__":
    common.main(benchmark, parse_args)
