"""Benchmark: how close each script's training step comes to the cost of its networks alone.

A script's speed is how close its real training step comes to the forward and backward passes and
optimizer updates of its own networks; everything else (data loading, transfers, logging, sampling,
checkpointing, Python) is overhead. For each script this measures, in a fresh process of its own:

    loop      the median time per generator step of the script's own train(), in-process, read from
              the `seconds` column of its metrics.csv, after a warm-up, at the default logging,
              sample and checkpoint intervals (the mean over the same steps is reported as well:
              it includes the periodic work that falls among them, sample grids every
              --sample_interval steps and checkpoints every --checkpoint_interval, which the
              median leaves out);
    floor     the median time of one generator step's work (n_critic D updates and one G update,
              with the script's own classes, losses, optimizers and defaults) on one real batch
              already on the device, nothing else;
    overhead  loop / floor; images/s: real training images the loop consumes per second; peak
              memory: RSS on the CPU, torch.cuda.max_memory_allocated on CUDA;
    G step    the floor's G update timed both ways in the same run, alternated on the same noise:
              the old way, D requiring gradients (its weights' gradients computed by the backward
              and never used), and through common.frozen(D) as the scripts do it; both medians
              and their ratio, the saving of the frozen D.

Also: the data path alone (images/s out of common.Batches, from memory and streamed from a folder
of JPEGs by DataLoader workers) against what the fastest script consumes, and a reference row: a
straightforward DCGAN loop with dcgan.py's networks, the way older single-file collections write it
(per-sample PIL transforms in a DataLoader with num_workers=0, noise made on the CPU and moved, the
D step's fakes reused by the G step after .detach(), .item() logging every step).

Targets (issue #7): overhead at most 1.10x on CPU (digits at 32x32, a 64x64 folder, batch 64), the
in-memory data path at least 20x faster than the fastest step consumes images, and dcgan.py faster
per image than the reference loop.

Run:
    python bench.py                                                  # all seven, digits 32x32, batch 64
    python bench.py --dataset folder --data_root ../shared/data/anime64 --img_size 64
    python bench.py --scripts dcgan wgan_gp --steps 100 --device cuda
    python bench.py --scripts wgan --script_args "wgan: --n_critic_boost 0"   # skip WGAN's slow first 25 steps

Prints markdown tables and writes them, with every number, to --json (and the same name with .md).
Timings are never asserted by the tests: tests/test_bench.py only runs this on tiny sizes.
"""

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image

import common
import folders
from compare import ToolParser, split_script_args

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("dcgan", "lsgan", "cgan", "cogan", "wgan", "wgan_gp", "began")
STREAM_ROOT = ROOT.parent / "shared" / "data" / "anime64"  # a folder of 64x64 JPEGs, where present
# Flags that bench.py sets itself for the real loop (or that its --n_iters overrides), refused in --script_args.
OWN_FLAGS = ("--out", "--resume", "--n_iters", "--n_epochs", "--generate", "--interpolate", "--label")


def parse_args(argv=None):
    parser = ToolParser(description="Time each GAN script's training step against the cost of its networks alone.")
    arg = parser.add_argument
    arg(
        "--scripts",
        nargs="+",
        choices=SCRIPTS,
        default=list(SCRIPTS),
        metavar="SCRIPT",
        help=f"the scripts to time, in this order (default: all of {', '.join(SCRIPTS)})",
    )
    arg("--dataset", choices=common.DATASETS, default="digits", help="training images, as for the scripts")
    arg("--data_root", default="data", help="where data sets are kept; with --dataset folder, the folder itself")
    arg("--img_size", type=common.positive_int, help="image height and width (default: per data set, 32 for digits)")
    arg("--batch_size", type=common.positive_int, default=64, help="images per batch")
    arg("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    arg(
        "--steps",
        type=common.positive_int,
        default=50,
        help="generator steps whose times give each median, after the warm-up",
    )
    arg(
        "--warmup",
        type=common.nonnegative_int,
        default=10,
        help="generator steps left out at the start (wgan also leaves out its first 25: 100 critic steps each)",
    )
    arg(
        "--script_args",
        action="append",
        default=[],
        metavar="[SCRIPT:]FLAGS",
        help="more flags for the scripts, also used by their floors: '--latent_dim 32' for all of them, "
        "'began: --h_dim 32' for one; repeatable",
    )
    arg(
        "--stream_root",
        default=str(STREAM_ROOT) if STREAM_ROOT.is_dir() else "",
        help="a folder of images to time the streamed data path on (default: ../shared/data/anime64 where present; "
        "'' skips it)",
    )
    arg("--data_seconds", type=common.positive_float, default=3.0, help="seconds of batches per data-path measurement")
    arg(
        "--json",
        help="where to write the results (default: bench/bench_<dataset>_<img_size>_<device>.json); "
        "the tables go to the same name with .md",
    )
    arg(
        "--in_process",
        action="store_true",
        help="measure every script in this process instead of a fresh process each: quicker to start (the tests "
        "use it), but the peak memory column is then the highest so far",
    )
    arg("--_child", help=argparse.SUPPRESS)  # measure one script (or 'naive') in this process
    arg("--_result", help=argparse.SUPPRESS)  # ...and write its result there as JSON
    opt = parser.parse_args(argv)
    opt.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    opt.img_size = opt.img_size or common.DATASETS[opt.dataset]["img_size"]
    try:
        opt.extra = split_script_args(opt.script_args, SCRIPTS, OWN_FLAGS, "bench.py")
    except common.UsageError as error:
        parser.error(str(error))
    return opt


def script_opt(name, opt, *more):
    """The script's own options for this benchmark: the data and sizes asked for, its defaults for
    everything else, then --script_args. A bad flag is one line naming the script."""
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


# ----------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device):
    """This process's peak: max allocated on CUDA, else the resident set's high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def quiet():
    """Keep a script's progress bars and prints out of the benchmark's output."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def median_step(step, warmup, steps, device):
    """Run step() warmup + steps times; the median seconds of the last `steps`, each synchronised."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_batches(name, module, opt, step=None):
    """Real batches that generator step `step` (1-based) consumes, by default in the steady state:
    n_critic (wgan's boosted count in its first 25 steps and every 500th), twice for cogan (a batch
    per domain)."""
    per_step = opt.n_critic
    if name == "wgan" and step is not None:
        per_step = module.critic_steps(step - 1, opt.n_critic, opt.n_critic_boost)
    return per_step * (2 if name == "cogan" else 1)


def measured_steps(name, module, opt, warmup, steps):
    """The generator steps whose times count: after the warm-up (and after wgan's boosted first 25),
    with the steady number of real batches; the first step never counts (it has no predecessor)."""
    steady, skip = real_batches(name, module, opt), warmup
    if name == "wgan" and opt.n_critic_boost:
        skip += 25
    chosen, step = [], 1
    while len(chosen) < steps:
        step += 1
        if step > skip + 1 and real_batches(name, module, opt, step) == steady:
            chosen.append(step)
    return chosen


# ----------------------------------------------------------------------------------------------
# Floors: one generator step's work per script, nothing else. Each mirrors its script's loop.
# ----------------------------------------------------------------------------------------------
class Floor:
    """One script's networks and optimizers, and one generator step's work split in two: d_step(),
    its n_critic D updates, and g_loss(D, *inputs), the G loss through D (the nets at hand or D
    frozen), with noise() drawing the inputs of one G step."""

    def __init__(self, opt, device, generator, discriminator, optimizer_G, d_step, g_loss, noise):
        self.generator, self.discriminator, self.optimizer_G = generator, discriminator, optimizer_G
        self.d_step, self.g_loss, self.noise = d_step, g_loss, noise
        self.autocast, self.scaler_G = _precision(opt, device)[:2]

    def g_step(self, inputs, frozen=True):
        """One G update on `inputs`: as the scripts do it, through common.frozen(D), so that D's weight
        gradients are neither computed nor kept; or (frozen=False) the old way, D requiring gradients
        and its weights' gradients computed (and accumulated) by the same backward."""
        D = self.discriminator
        with self.autocast, common.frozen(D) if frozen else contextlib.nullcontext(D) as D:
            loss = self.g_loss(D, *inputs)
        _update(self.optimizer_G, self.scaler_G, loss)

    def step(self):
        """One generator step's work, as the script's loop does it."""
        self.d_step()
        self.g_step(self.noise())


def _precision(opt, device):
    """The script's --amp: its autocast (re-entered each step, as the scripts do) and a GradScaler per
    optimizer, scaling with float16 only; all no-ops without --amp."""
    amp = getattr(opt, "amp", False)
    autocast = torch.autocast(device.type, common.amp_dtype(device), enabled=amp)
    scaling = amp and autocast.fast_dtype == torch.float16
    return (
        autocast,
        torch.amp.GradScaler(device.type, enabled=scaling),
        torch.amp.GradScaler(device.type, enabled=scaling),
    )


def _update(optimizer, scaler, loss):
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _nets(opt, device, generator, discriminator, init=None, compile_d=True):
    """The nets on the device, initialised as the script does, and compiled in place with --compile
    (common.distribute; `compile_d` False keeps D eager, as wgan_gp.py does)."""
    generator, discriminator = generator.to(device), discriminator.to(device)
    if init:
        generator.apply(init)
        discriminator.apply(init)
    compiled = getattr(opt, "compile", False)
    return common.distribute(opt, generator, discriminator, compile=[compiled, compiled and compile_d])


def _adam(net, opt, device):
    return torch.optim.Adam(net.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2), fused=device.type == "cuda")


def _gaussian(opt, device, real):
    return lambda: (torch.randn(real.size(0), opt.latent_dim, device=device),)


def floor_dcgan(m, opt, device, data, real, labels, real_b):
    G = m.Generator(opt.latent_dim, opt.channels, opt.img_size, opt.ngf)
    G, D = _nets(opt, device, G, m.Discriminator(opt.channels, opt.img_size, opt.ndf), m.init_weights)
    opt_G, opt_D = _adam(G, opt, device), _adam(D, opt, device)
    autocast, scaler_D, _ = _precision(opt, device)
    loss_args = tuple(m.CODINGS[opt.coding]) if hasattr(opt, "coding") else ()  # lsgan: (a, b, c)

    def d_step():
        for _ in range(opt.n_critic):
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():
                    fake = G(z)
                loss_D = m.discriminator_loss(D(real), D(fake), *loss_args[:2])
            _update(opt_D, scaler_D, loss_D)

    def g_loss(D, z):
        return m.generator_loss(D(G(z)), *loss_args[2:])

    return Floor(opt, device, G, D, opt_G, d_step, g_loss, _gaussian(opt, device, real))


floor_lsgan = floor_dcgan  # the same loop with least-squares losses


def floor_cgan(m, opt, device, data, real, labels, real_b):
    n_classes = data.n_classes
    G = m.Generator(opt.latent_dim, n_classes, opt.channels, opt.img_size, opt.ngf)
    G, D = _nets(opt, device, G, m.Discriminator(n_classes, opt.channels, opt.img_size, opt.ndf), m.init_weights)
    opt_G, opt_D = _adam(G, opt, device), _adam(D, opt, device)
    autocast, scaler_D, _ = _precision(opt, device)

    def d_step():
        for _ in range(opt.n_critic):
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            fake_labels = torch.randint(n_classes, (real.size(0),), device=device)
            with autocast:
                with torch.no_grad():
                    fake = G(z, fake_labels)
                loss_D = m.discriminator_loss(D(real, labels), D(fake, fake_labels))
            _update(opt_D, scaler_D, loss_D)

    def g_loss(D, z, fake_labels):
        return m.generator_loss(D(G(z, fake_labels), fake_labels))

    def noise():
        z = torch.randn(real.size(0), opt.latent_dim, device=device)
        return z, torch.randint(n_classes, (real.size(0),), device=device)

    return Floor(opt, device, G, D, opt_G, d_step, g_loss, noise)


def floor_cogan(m, opt, device, data, real, labels, real_b):
    G = m.CoupledGenerators(opt.latent_dim, opt.channels, opt.img_size, opt.ngf)
    G, D = _nets(opt, device, G, m.CoupledDiscriminators(opt.channels, opt.img_size, opt.ndf), m.init_weights)
    opt_G, opt_D = _adam(G, opt, device), _adam(D, opt, device)
    autocast, scaler_D, _ = _precision(opt, device)

    def d_step():
        for _ in range(opt.n_critic):
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():
                    fake_a, fake_b = G(z)
                loss_D = m.discriminator_loss(torch.cat(D(real, real_b)), torch.cat(D(fake_a, fake_b)))
            _update(opt_D, scaler_D, loss_D)

    def g_loss(D, z):
        return m.generator_loss(torch.cat(D(*G(z))))

    return Floor(opt, device, G, D, opt_G, d_step, g_loss, _gaussian(opt, device, real))


def floor_wgan(m, opt, device, data, real, labels, real_b):
    G = m.Generator(opt.latent_dim, opt.channels, opt.img_size, opt.ngf)
    G, D = _nets(opt, device, G, m.Critic(opt.channels, opt.img_size, opt.ndf), m.init_weights)
    opt_G, opt_D = torch.optim.RMSprop(G.parameters(), lr=opt.lr), torch.optim.RMSprop(D.parameters(), lr=opt.lr)
    autocast, scaler_D, _ = _precision(opt, device)

    def d_step():  # the steady state: n_critic critic steps (the boosted steps are not timed in the loop either)
        for _ in range(opt.n_critic):
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():
                    fake = G(z)
                loss_D = m.critic_loss(D(real), D(fake))
            _update(opt_D, scaler_D, loss_D)
            m.clip_weights(D, opt.clip_value)

    def g_loss(D, z):
        return m.generator_loss(D(G(z)))

    return Floor(opt, device, G, D, opt_G, d_step, g_loss, _gaussian(opt, device, real))


def floor_wgan_gp(m, opt, device, data, real, labels, real_b):
    # As in wgan_gp.py, --compile leaves the critic eager (its penalty needs a double backward).
    G = m.Generator(opt.latent_dim, opt.channels, opt.img_size, opt.ngf)
    G, D = _nets(opt, device, G, m.Critic(opt.channels, opt.img_size, opt.ndf), m.init_weights, compile_d=False)
    opt_G, opt_D = _adam(G, opt, device), _adam(D, opt, device)
    autocast, scaler_D, _ = _precision(opt, device)

    def d_step():
        for _ in range(opt.n_critic):
            z = torch.randn(real.size(0), opt.latent_dim, device=device)
            with autocast:
                with torch.no_grad():
                    fake = G(z)
                d_real, d_fake = D(real), D(fake)
                penalty, _ = m.gradient_penalty(D, real, fake)
                loss_D = m.critic_loss(d_real, d_fake) + opt.lambda_gp * penalty
            _update(opt_D, scaler_D, loss_D)

    def g_loss(D, z):
        return m.generator_loss(D(G(z)))

    return Floor(opt, device, G, D, opt_G, d_step, g_loss, _gaussian(opt, device, real))


def floor_began(m, opt, device, data, real, labels, real_b):
    generator = m.DCGANGenerator if opt.generator == "dcgan" else m.Generator  # the digits' nets are DCGAN-style
    discriminator = m.DCGANDiscriminator if opt.discriminator == "dcgan" else m.Discriminator
    G = generator(opt.latent_dim, opt.channels, opt.img_size, opt.n_filters)
    G, D = _nets(opt, device, G, discriminator(opt.channels, opt.img_size, opt.h_dim, opt.n_filters))
    opt_G, opt_D = _adam(G, opt, device), _adam(D, opt, device)
    schedulers = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=opt.lr_patience)
        for optimizer in (opt_G, opt_D)
    ]
    autocast, scaler_D, _ = _precision(opt, device)
    k_t = torch.zeros((), device=device)

    def d_step():
        for _ in range(opt.n_critic):
            z = torch.rand(real.size(0), opt.latent_dim, device=device) * 2 - 1
            with autocast:
                with torch.no_grad():
                    fake = G(z)
                loss_real, loss_fake = m.reconstruction_loss(real, D), m.reconstruction_loss(fake, D)
                loss_D = m.discriminator_loss(loss_real, loss_fake, k_t)
            _update(opt_D, scaler_D, loss_D)
            loss_real, loss_fake = torch.stack([loss_real, loss_fake]).detach().float()
            k_t.copy_(m.update_k(k_t, loss_real, loss_fake, opt.gamma, opt.lambda_k))
        m_global = m.convergence_measure(loss_real, loss_fake, opt.gamma)
        if opt.lr_patience:  # after the G update in the script: the same work
            for scheduler in schedulers:
                scheduler.step(m_global)

    def g_loss(D, z):
        return m.reconstruction_loss(G(z), D)

    def noise():
        return (torch.rand(real.size(0), opt.latent_dim, device=device) * 2 - 1,)

    return Floor(opt, device, G, D, opt_G, d_step, g_loss, noise)


# ----------------------------------------------------------------------------------------------
# One script, in its own process: the real loop, then the floor
# ----------------------------------------------------------------------------------------------
def first_batch(data, batch_size, device):
    """The first batch_size images of `data` in [-1, 1] on `device`, with their labels (or None)."""
    if data.images is not None:
        images = data.images[:batch_size]
    else:
        images = torch.stack(
            [folders.open_image(path, data.img_size, data.channels) for path in data.files[:batch_size]]
        )
    labels = data.labels[:batch_size].to(device) if data.labels is not None else None
    return images.to(device).float().div_(127.5).sub_(1.0), labels


def g_step_both_ways(floor, warmup, steps, device):
    """Median seconds of the G step with D's weight gradients (the old way) and through
    common.frozen(D) (the scripts' way), alternated step by step on the same inputs."""
    inputs, times = floor.noise(), {False: [], True: []}
    for i in range(warmup + steps):
        for frozen in (False, True):
            start = time.perf_counter()
            floor.g_step(inputs, frozen)
            sync(device)
            if i >= warmup:
                times[frozen].append(time.perf_counter() - start)
    return statistics.median(times[False]), statistics.median(times[True])


def measure_script(name, opt):
    """Time `name`'s real loop (its own train()), its floor and its G step both ways; returns the row."""
    module, probe = script_opt(name, opt)
    chosen = measured_steps(name, module, probe, opt.warmup, opt.steps)
    loaded = []  # the ImageData sets that train() loads, reused for the floor's real batch
    load_images = common.load_images

    def remember(*args, **kwargs):
        loaded.append(load_images(*args, **kwargs))
        return loaded[-1]

    device = common.get_device(opt.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        _, script = script_opt(name, opt, "--out", tmp, "--n_iters", str(chosen[-1]))
        common.load_images, plots_at_finish = remember, common.Run.plots_at_finish
        common.Run.plots_at_finish = False  # drawn after the last step: no part of the timing, only a wait
        try:
            with quiet():
                run = module.train(script)
        finally:
            common.load_images, common.Run.plots_at_finish = load_images, plots_at_finish
        peak = peak_memory_mb(device)
        seconds = read_seconds(run.dir / "metrics.csv")
    loop = [seconds[s] - seconds[s - 1] for s in chosen]

    data = loaded[0]
    real, labels = first_batch(data, opt.batch_size, device)
    if name == "cogan":
        real_b = {"negative": torch.neg, "edges": module.edges}.get(script.domain_b)
        real_b = real_b(real) if real_b else first_batch(loaded[1], opt.batch_size, device)[0]
    else:
        real_b = None
    floor = globals()[f"floor_{name}"](module, script, device, data, real, labels, real_b)
    floor_s = median_step(floor.step, max(opt.warmup, 2), opt.steps, device)
    g_step_s, g_step_frozen_s = g_step_both_ways(floor, max(opt.warmup, 2), opt.steps, device)

    loop_median = statistics.median(loop)
    images_per_step = real_batches(name, module, script) * opt.batch_size
    return dict(
        script=name,
        loop_s_per_step=loop_median,
        loop_mean_s_per_step=statistics.fmean(loop),
        floor_s_per_step=floor_s,
        overhead=loop_median / floor_s,
        overhead_mean=statistics.fmean(loop) / floor_s,
        images_per_s=images_per_step / loop_median,
        real_images_per_step=images_per_step,
        peak_memory_mb=peak,
        measured_steps=len(chosen),
        first_measured_step=chosen[0],
        last_step=chosen[-1],
        g_step_s=g_step_s,
        g_step_frozen_s=g_step_frozen_s,
        g_step_ratio=g_step_s / g_step_frozen_s,
        data=f"{len(data)} {data.name} images, {'in memory' if data.images is not None else 'streamed'}",
    )


def read_seconds(metrics_path):
    """{step: cumulative wall seconds} from a run's metrics.csv."""
    with open(metrics_path, newline="") as f:
        return {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(f) if row.get("seconds")}


# ----------------------------------------------------------------------------------------------
# The reference: a straightforward DCGAN loop with dcgan.py's networks
# ----------------------------------------------------------------------------------------------
class _PILImages(torch.utils.data.Dataset):
    """Images served one at a time as PIL images through a per-sample transform, as torchvision's
    data sets do: scikit-learn's digits, or every image file below a folder."""

    def __init__(self, opt, transform):
        self.transform = transform
        if opt.dataset == "digits":
            from sklearn.datasets import load_digits

            self.items = list((load_digits().images * 255.0 / 16.0).round().astype("uint8"))
        else:
            root = Path(opt.data_root) / ("anime" if opt.dataset == "anime" else "")
            self.items = sorted(p for p in root.rglob("*") if p.suffix.lower() in folders.IMAGE_EXTENSIONS)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        return self.transform(Image.open(item) if isinstance(item, Path) else Image.fromarray(item)), 0


def naive_loader(opt, channels):
    from torchvision import datasets, transforms

    mode = "L" if channels == 1 else "RGB"
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda image: image.convert(mode)),
            transforms.Resize(opt.img_size),
            transforms.CenterCrop(opt.img_size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )
    if opt.dataset in ("mnist", "fashion", "cifar10"):
        cls = {"mnist": datasets.MNIST, "fashion": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[opt.dataset]
        dataset = cls(opt.data_root, train=True, download=False, transform=transform)
    else:
        dataset = _PILImages(opt, transform)
    return torch.utils.data.DataLoader(dataset, batch_size=opt.batch_size, shuffle=True, num_workers=0, drop_last=True)


def measure_naive(opt):
    """The reference loop, after pytorch/examples' dcgan/main.py: D on a real batch, then on G(z)
    detached; G through the same fakes; .item() logging and a print every step."""
    m, dopt = script_opt("dcgan", opt)
    device = common.get_device(opt.device)
    torch.manual_seed(dopt.seed)
    loader = naive_loader(opt, dopt.channels)
    netG = m.Generator(dopt.latent_dim, dopt.channels, dopt.img_size, dopt.ngf).to(device)
    netG.apply(m.init_weights)
    netD = m.Discriminator(dopt.channels, dopt.img_size, dopt.ndf).to(device)
    netD.apply(m.init_weights)
    criterion = nn.BCEWithLogitsLoss()  # dcgan.py's D ends in a logit
    optimizerD = torch.optim.Adam(netD.parameters(), lr=dopt.lr, betas=(dopt.b1, dopt.b2))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=dopt.lr, betas=(dopt.b1, dopt.b2))
    total = 1 + opt.warmup + opt.steps
    times, last = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, quiet():
        from torchvision.utils import save_image

        while len(times) < total:
            for data, _ in loader:
                real = data.to(device)
                b_size = real.size(0)
                # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
                netD.zero_grad()
                label = torch.full((b_size,), 1.0, device=device)
                output = netD(real)
                errD_real = criterion(output, label)
                errD_real.backward()
                D_x = output.sigmoid().mean().item()
                noise = torch.randn(b_size, dopt.latent_dim).to(device)
                fake = netG(noise)
                label.fill_(0.0)
                output = netD(fake.detach())
                errD_fake = criterion(output, label)
                errD_fake.backward()
                D_G_z1 = output.sigmoid().mean().item()
                errD = errD_real + errD_fake
                optimizerD.step()
                # (2) Update G: maximize log(D(G(z)))
                netG.zero_grad()
                label.fill_(1.0)
                output = netD(fake)
                errG = criterion(output, label)
                errG.backward()
                D_G_z2 = output.sigmoid().mean().item()
                optimizerG.step()
                print(
                    f"[{len(times) + 1}/{total}] Loss_D: {errD.item():.4f} Loss_G: {errG.item():.4f} "
                    f"D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}"
                )
                if (len(times) + 1) % dopt.sample_interval == 0:
                    save_image(fake.detach(), f"{tmp}/fake_samples_{len(times) + 1}.png", normalize=True)
                now = time.perf_counter()
                times.append(now - last)
                last = now
                if len(times) == total:
                    break
    peak = peak_memory_mb(device)
    loop = times[1 + opt.warmup :]
    return dict(
        script="naive",
        loop_s_per_step=statistics.median(loop),
        loop_mean_s_per_step=statistics.fmean(loop),
        images_per_s=opt.batch_size / statistics.median(loop),
        real_images_per_step=opt.batch_size,
        peak_memory_mb=peak,
        measured_steps=len(loop),
    )


# ----------------------------------------------------------------------------------------------
# The data path alone
# ----------------------------------------------------------------------------------------------
def loader_rate(batches, device, seconds):
    """Images per second out of common.Batches, an endless stream, counted from its first batch
    (worker start-up left out), over at least 20 batches and `seconds` seconds."""
    count, start = 0, None
    for _ in batches:
        sync(device)
        if start is None:
            start = time.perf_counter()
            continue
        count += 1
        elapsed = time.perf_counter() - start
        if count >= 20 and elapsed >= seconds:
            return count * batches.batch_size / elapsed


def measure_data_path(opt, device):
    """Images/s of the in-memory data set and of a folder streamed from disk, at the training size."""
    channels = common.DATASETS[opt.dataset]["channels"]
    rows = []
    data = common.load_images(opt.dataset, opt.data_root, opt.img_size, channels)
    if data.images is not None:
        rate = loader_rate(common.Batches(data, opt.batch_size, device, 0), device, opt.data_seconds)
        rows.append(dict(path="in memory", source=f"{len(data)} {data.name} images", images_per_s=rate))
    if opt.stream_root:
        limit, folders.IN_MEMORY_LIMIT = folders.IN_MEMORY_LIMIT, 0  # force streaming from the files
        try:
            files = common.load_images("folder", opt.stream_root, opt.img_size, channels)
        finally:
            folders.IN_MEMORY_LIMIT = limit
        workers = min(8, os.cpu_count() or 1)  # the scripts' default --n_cpu
        rate = loader_rate(common.Batches(files, opt.batch_size, device, 0, workers), device, opt.data_seconds)
        source = f"{len(files)} files in {opt.stream_root}"
        rows.append(dict(path=f"streamed, {workers} workers", source=source, images_per_s=rate))
    for row in rows:
        row["size"] = f"{opt.img_size}x{opt.img_size}x{channels}"
    return rows


# ----------------------------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------------------------
def machine(device):
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = dict(
        cpu=cpu,
        cores=os.cpu_count(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        system=platform.system(),
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_child(name, opt):
    """Measure one script (or the reference) in a fresh process, so its peak memory is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), *opt.argv, "--_child", name, "--_result", str(result)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and result.exists():
            return json.loads(result.read_text())
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    error = re.sub(r"^\S+: error: ", "", lines[-1]) if lines else f"exit code {done.returncode}"
    return dict(script=name, error=error)


def measure_in_process(name, opt):
    try:
        return measure_naive(opt) if name == "naive" else measure_script(name, opt)
    except common.UsageError as error:
        return dict(script=name, error=str(error))


def ms(seconds):
    return f"{seconds * 1000:.1f}"


def render(results):
    """The markdown tables."""
    s, m = results["settings"], results["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    out = [
        f"{s['dataset']} at {s['img_size']}x{s['img_size']}, batch {s['batch_size']}, on {s['device']}: "
        f"medians over {s['steps']} generator steps after {s['warmup']} warm-up steps.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads{gpu}; "
        f"torch {m['torch']}, Python {m['python']}, {m['system']}.",
        "",
        "| script | loop ms/step | floor ms/step | overhead | loop mean ms/step | mean overhead | real images/s "
        "| peak memory MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floors = {}
    for row in results["scripts"]:
        if "error" in row:
            out.append(f"| {row['script']} | not measured: {row['error']} | | | | | | |")
            continue
        floors[row["script"]] = row["floor_s_per_step"]
        out.append(
            f"| {row['script']} | {ms(row['loop_s_per_step'])} | {ms(row['floor_s_per_step'])} | "
            f"{row['overhead']:.2f}x | {ms(row['loop_mean_s_per_step'])} | {row['overhead_mean']:.2f}x | "
            f"{row['images_per_s']:,.0f} | {row['peak_memory_mb']:,.0f} |"
        )
    naive = results.get("naive")
    if naive and "error" in naive:
        out.append(f"| reference DCGAN loop | not measured: {naive['error']} | | | | | | |")
    elif naive:
        versus = lambda t: f"{t / floors['dcgan']:.2f}x" if "dcgan" in floors else "-"  # noqa: E731
        out.append(
            f"| reference DCGAN loop | {ms(naive['loop_s_per_step'])} | - | {versus(naive['loop_s_per_step'])} | "
            f"{ms(naive['loop_mean_s_per_step'])} | {versus(naive['loop_mean_s_per_step'])} | "
            f"{naive['images_per_s']:,.0f} | {naive['peak_memory_mb']:,.0f} |"
        )
    out += [
        "",
        "loop: the script's own train(); floor: the same networks' n_critic D updates and one G update on one batch "
        "in memory; overhead: loop / floor (the mean includes the periodic work inside the measured steps, such as "
        "sample grids and checkpoints). The reference's overhead is against dcgan's floor; it does one G forward less "
        "per step than dcgan.py (its G step reuses the D step's fakes).",
    ]
    measured = [row for row in results["scripts"] if "error" not in row]
    if measured:
        out += [
            "",
            "| script | G step, D's weight gradients too ms | G step, D frozen ms | with / frozen |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in measured:
            out.append(
                f"| {row['script']} | {ms(row['g_step_s'])} | {ms(row['g_step_frozen_s'])} | "
                f"{row['g_step_ratio']:.2f}x |"
            )
        out += [
            "",
            "G step: one generator update on the same noise, alternately the old way (D requiring gradients, so "
            "the backward also computes D's weight gradients, which no optimizer uses) and through common.frozen(D), "
            "as the scripts do it (only the gradients with respect to D's inputs); medians over as many steps as "
            "the floor.",
        ]
    if results["data_path"]:
        fastest = max(measured, key=lambda row: row["images_per_s"], default=None)
        out += [
            "",
            "| data path | source | size | images/s | x the fastest loop's consumption |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        for row in results["data_path"]:
            versus = "-"
            if fastest:
                rate = fastest["images_per_s"]
                versus = f"{row['images_per_s'] / rate:,.1f}x ({fastest['script']}, {rate:,.0f}/s)"
            out.append(f"| {row['path']} | {row['source']} | {row['size']} | {row['images_per_s']:,.0f} | {versus} |")
    return "\n".join(out)


def measure_all(opt):
    device = common.get_device(opt.device)
    for name in dict.fromkeys([*opt.scripts, "dcgan"]):
        script_opt(name, opt)  # a flag a script refuses fails now, in one line, not after minutes
    results = dict(
        machine=machine(device),
        settings=dict(
            dataset=opt.dataset,
            data_root=opt.data_root,
            img_size=opt.img_size,
            batch_size=opt.batch_size,
            device=str(device),
            steps=opt.steps,
            warmup=opt.warmup,
            script_args=opt.script_args,
        ),
        scripts=[],
        naive=None,
        data_path=[],
    )
    for name in [*opt.scripts, "naive"]:
        print(f"timing {name}...", file=sys.stderr, flush=True)
        row = measure_in_process(name, opt) if opt.in_process else run_child(name, opt)
        if "error" in row:
            print(f"  {name}: not measured: {row['error']}", file=sys.stderr)
        elif name != "naive":
            loop, floor = ms(row["loop_s_per_step"]), ms(row["floor_s_per_step"])
            g_steps = f"G step {ms(row['g_step_s'])} ms with D's gradients, {ms(row['g_step_frozen_s'])} ms frozen"
            print(
                f"  {name}: loop {loop} ms/step, floor {floor} ms/step, overhead {row['overhead']:.2f}x; {g_steps}",
                file=sys.stderr,
            )
        if name == "naive":
            results["naive"] = row
        else:
            results["scripts"].append(row)
    print("timing the data path...", file=sys.stderr, flush=True)
    results["data_path"] = measure_data_path(opt, device)
    return results


def main(argv=None):
    return benchmark(parse_args(argv))


def benchmark(opt):
    if opt._child:
        result = measure_naive(opt) if opt._child == "naive" else measure_script(opt._child, opt)
        Path(opt._result).write_text(json.dumps(result))
        return result
    results = measure_all(opt)
    if all("error" in row for row in results["scripts"]):
        first = results["scripts"][0]
        raise common.UsageError(f"no script could be measured; {first['script']}: {first['error']}")
    table = render(results)
    print(table)
    device = results["settings"]["device"].split(":")[0]
    path = Path(opt.json or f"bench/bench_{opt.dataset}_{opt.img_size}_{device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    common.main(benchmark, parse_args)
