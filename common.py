"""What every GAN script's run needs and is not a GAN: command line, device and seed, data sets and an
endless batch stream (images in [-1, 1], N x C x H x W, int64 labels), the run folder (config, metrics,
grids, checkpoints), torchrun's basics and one-line errors. Folders of images (folders.py), the anime
download (anime.py), scoring (scoring.py) and plots (plots.py) are imported only when a flag asks for them;
they never import this module."""

import argparse
import contextlib
import csv
import datetime
import functools
import importlib.util
import itertools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image
from tqdm import tqdm

# Per data set: the training size, the channels and the steps between sample grids; each script's
# DATASET_DEFAULTS add its number of steps (and may change these).
DATASETS = {
    "digits": dict(img_size=32, channels=1, sample_interval=200),
    "mnist": dict(img_size=32, channels=1, sample_interval=500),
    "fashion": dict(img_size=32, channels=1, sample_interval=500),
    "cifar10": dict(img_size=32, channels=3, sample_interval=500),
    "anime": dict(img_size=64, channels=3, sample_interval=500),
    "folder": dict(img_size=64, channels=3, sample_interval=500),
}
TORCHVISION = {"mnist": datasets.MNIST, "fashion": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}
CHECKPOINT_FORMAT = 2  # tensors and plain values only, read with weights_only=True
GROUP = argparse.Namespace(rank=0, local_rank=0, size=1, distributed=False)  # this process among torchrun's


class UsageError(Exception):
    """A problem the user can fix (a bad flag, missing data...): one line, exit code 2."""


USAGE_ERRORS = {UsageError}  # and the UsageError of each optional module imported


class Diverged(Exception):
    """A loss became NaN or infinite: one line, exit code 1, the last checkpoint untouched."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, no abbreviations, and defaults from the data set and --resume."""

    def __init__(self, *args, dataset_defaults=None, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.dataset_defaults = {name: {**d, **(dataset_defaults or {}).get(name, {})} for name, d in DATASETS.items()}

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else [str(arg) for arg in args]
        opt = super().parse_args(args, namespace)
        defaults = dict(self.dataset_defaults[opt.dataset])
        if opt.resume:  # the run's own flags; one that its version lacked ran at the flag's plain default
            try:
                saved = load_checkpoint(opt.resume)["args"]
            except UsageError as error:
                self.error(str(error))
            defaults = {key: self.get_default(key) for key in defaults} | {k: v for k, v in saved.items() if k in opt}
        if "--n_epochs" in {arg.split("=")[0] for arg in args}:  # an explicit --n_iters still wins
            defaults["n_iters"] = None  # the script turns the passes into steps once it knows the data's size
        self.set_defaults(**defaults)
        opt = super().parse_args(args, namespace)
        if not opt.resume and (flag := "--generate" if opt.generate else "--interpolate" if opt.interpolate else None):
            self.error(f"{flag} draws from a trained generator: pass --resume RUN_FOLDER with it")
        if opt.fid_interval and not (opt.fid or opt.fcd or opt.swd):
            self.error("--fid_interval says how often to score: add --fid, --fcd or --swd")
        return opt


def number(kind, low, inclusive=False, below=math.inf):
    """An argparse type: a number of `kind` above `low` (or equal, with `inclusive`) and below `below`."""

    def parse(text):
        value = kind(text)  # argparse reports a ValueError here as "invalid int value: 'x'"
        if not ((low <= value) if inclusive else (low < value)) or not value < below:  # NaN and Inf fail too
            bounds = f"{'>=' if inclusive else '>'} {low}" + (f" and < {below}" if below < math.inf else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {bounds}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int, nonnegative_int = number(int, 0), number(int, 0, inclusive=True)
positive_float, nonnegative_float = number(float, 0.0), number(float, 0.0, inclusive=True)
adam_beta = ema_decay = number(float, 0.0, inclusive=True, below=1.0)  # in [0, 1)


def add_run_args(parser, ema=0.0):
    """The flags of the run rather than the GAN, the same in every script, as their own group."""
    group = parser.add_argument_group("run")
    run, draw = group.add_argument, group.add_mutually_exclusive_group().add_argument  # draw from a trained G, exit
    run("--out", default="runs", help="folder that receives the run folder")
    run("--resume", help="a run folder (or its checkpoint.pt) to continue")
    run("--checkpoint_interval", type=positive_int, default=500, help="generator steps between checkpoints")
    run("--seed", type=int, default=0, help="random seed (data order, init, noise)")
    run("--deterministic", action="store_true", help="deterministic GPU kernels (slower)")
    run("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    run("--n_cpu", type=nonnegative_int, default=min(8, os.cpu_count() or 1), help="workers for streamed data")
    run("--amp", action="store_true", help="mixed precision: bfloat16, or float16 with loss scaling")
    run("--compile", action="store_true", help="torch.compile the networks")
    run("--sync_bn", action="store_true", help="under torchrun: SyncBatchNorm (CUDA only)")
    run("--fid", action="store_true", help="score by FID (pytorch-fid) at the end; needs scoring.py")
    run("--fcd", action="store_true", help="score by the offline classifier distance; needs scoring.py")
    run("--swd", action="store_true", help="score by the sliced Wasserstein distance (no download); needs scoring.py")
    run("--fid_interval", type=positive_int, help="with --fid/--fcd/--swd: also score every this many steps")
    run("--fid_samples", type=positive_int, default=10000, help="fakes per score")
    run("--fid_weights", help="a local copy of pytorch-fid's Inception weights")
    run("--save_fakes", type=nonnegative_int, default=0, help="write this many fakes as PNGs at the end")
    draw("--generate", type=positive_int, help="with --resume: write this many fakes and exit")
    draw("--interpolate", type=number(int, 1, below=1000), help="with --resume: latent walks of this many frames, exit")
    run("--tensorboard", action="store_true", help="also log to <run>/tensorboard; needs plots.py")
    run("--ema", type=ema_decay, default=ema, help="decay of G's moving average, which draws samples and fakes; 0: G")


def is_main():  # whether this process writes the run folder and prints: rank 0, or the only one
    return GROUP.rank == 0


def get_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    count = {"cuda": torch.cuda.device_count(), "mps": int(torch.mps.is_available())}.get(device.type, 1)
    if (device.index or 0) >= count:
        raise UsageError(f"--device {name}: PyTorch sees {count} {device.type} device(s) here; use --device auto")
    return device


def setup(opt):
    """The device, seeded; under torchrun, in the process group (NCCL on cuda:LOCAL_RANK, or gloo)."""
    device = get_device(opt.device)
    if opt.sync_bn and ("RANK" not in os.environ or device.type != "cuda"):
        raise UsageError("--sync_bn synchronises BatchNorm between torchrun's processes on CUDA GPUs: drop it here")
    if "RANK" in os.environ:
        GROUP.rank, GROUP.local_rank, GROUP.size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if device.type == "cuda":
            torch.cuda.set_device(device := torch.device("cuda", GROUP.local_rank))
        elif device.type != "cpu":
            raise UsageError(f"--device {device.type}: torchrun needs CUDA or the CPU: pass --device cpu")
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        GROUP.distributed, sys.stdout = True, sys.stdout if is_main() else open(os.devnull, "w")
    torch.manual_seed(opt.seed + GROUP.rank)  # seeds CUDA and MPS too; rank 0 draws what a plain run draws
    torch.backends.cudnn.benchmark = not opt.deterministic  # every batch has one shape: pick kernels once
    if opt.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def amp_dtype(device):
    """--amp's half precision: bfloat16 where the device has it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16


def distribute(opt, *nets, compile=None):
    """Nets compiled in place (`compile`, a flag each, or --compile) and, under torchrun, in DDP wrappers."""
    for net, compiled in zip(nets, compile or [opt.compile] * len(nets)):
        net.compile() if compiled else None
    if not GROUP.distributed:
        return nets
    nets = [torch.nn.SyncBatchNorm.convert_sync_batchnorm(net) if opt.sync_bn else net for net in nets]
    ids = [GROUP.local_rank] if next(nets[0].parameters()).is_cuda else None
    ddp = torch.nn.parallel.DistributedDataParallel  # no BatchNorm buffers broadcast: rank 0's are sampled and saved
    return tuple(ddp(net, device_ids=ids, forward_sync_buffers=False) for net in nets)


def unwrap(net):  # the net inside a DistributedDataParallel wrapper, or the net itself
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


@contextlib.contextmanager
def frozen(net):
    """The net outside DDP with no gradient for its weights: the other net's step needs none of them."""
    unwrap(net).requires_grad_(False)
    try:
        yield unwrap(net)
    finally:
        unwrap(net).requires_grad_(True)


@contextlib.contextmanager
def evaluating(net):
    """The net in evaluation mode, no gradients: each output depends on its own input, not the batch's."""
    was_training = net.training
    try:
        with torch.no_grad():
            yield unwrap(net.eval())
    finally:
        net.train(was_training)


def all_mean(values):
    """A tensor averaged over torchrun's processes: for values all of them must agree on."""
    values = values.detach().float().clone()
    if GROUP.distributed:
        torch.distributed.all_reduce(values)
    return values / GROUP.size


class ImageData:
    """A data set: `images` (uint8 N x C x H x W) or `files` (decoded on the fly), `labels` or None."""

    def __init__(self, name, img_size, channels, images=None, files=(), labels=None, classes=()):
        self.name, self.img_size, self.channels, self.images = name, img_size, channels, images
        self.files, self.labels, self.classes = list(files), labels, list(classes)
        self.n_classes = len(self.classes)

    def __len__(self):
        return len(self.images) if self.images is not None else len(self.files)


def load_images(dataset, data_root, img_size, channels):
    """--dataset at its size; under torchrun one process per machine loads (or downloads) first."""
    if GROUP.distributed and GROUP.local_rank != 0:
        torch.distributed.barrier()
    root = Path(data_root).expanduser()
    folder = root / "anime" if dataset == "anime" else root
    if dataset == "digits":  # the 1,797 8x8 digits bundled with scikit-learn: no download
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, labels, classes = torch.from_numpy(digits.images).mul(255 / 16).round(), digits.target, range(10)
    elif dataset in TORCHVISION:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # torchvision prints its download progress on stdout
                loaded = TORCHVISION[dataset](str(root), train=True, download=True)
        except (OSError, RuntimeError) as error:  # offline: URLError, an OSError; a bad checksum: RuntimeError
            hint = "offline, copy its files there in torchvision's layout (MNIST/raw/...) or pass --data_root"
            raise UsageError(f"could not load or download {dataset} into {root} ({first_line(error)}): {hint}")
        pixels, labels, classes = torch.as_tensor(loaded.data), loaded.targets, loaded.classes
    elif dataset == "folder" and not root.is_dir():
        raise UsageError(f"--data_root {root} is not a folder: point it at a folder of images")
    if dataset in ("anime", "folder"):
        folders = _optional("folders", "--dataset folder and anime")
        if dataset == "anime" and not folders.image_files(folder):
            _optional("anime", "--dataset anime").fetch(folder)
        data = ImageData(
            folder.name, img_size, channels, **folders.load(folder, img_size, channels, dataset == "folder")
        )
    else:  # N x H x W (grey) or N x H x W x C, resized antialiased; grey is ITU-R 601 luma
        pixels = pixels.to(torch.uint8).unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        pixels = torch.cat([TF.resize(chunk, [img_size, img_size], antialias=True) for chunk in pixels.split(4096)])
        if pixels.size(1) != channels:
            pixels = TF.rgb_to_grayscale(pixels) if channels == 1 else TF.grayscale_to_rgb(pixels)
        labels = torch.as_tensor(labels).long()
        data = ImageData(dataset, img_size, channels, pixels.contiguous(), labels=labels, classes=map(str, classes))
    if GROUP.distributed and GROUP.local_rank == 0:
        torch.distributed.barrier()
    return data


class Batches:
    """Endless shuffled batches (images in [-1, 1] on `device`, labels or None). Epoch e's order depends on
    (seed, e) alone and `taken` counts the batches handed out, so a stream restored from its state_dict
    goes on exactly; incomplete last batches are dropped. Under torchrun rank r of n takes every n-th image."""

    def __init__(self, data, batch_size, device, seed, n_workers=0, shard=True):
        self.rank, self.world = (GROUP.rank, GROUP.size) if shard else (0, 1)
        if batch_size * self.world > len(data):
            raise UsageError(f"--batch_size {batch_size} x {self.world} process(es) is over the {len(data)} images")
        self.data, self.batch_size, self.device, self.seed, self.taken = data, batch_size, device, seed, 0
        self.labels = data.labels.to(device) if data.labels is not None else None
        self.images = data.images.to(device) if data.images is not None else None  # a batch is one index op
        self.order = []  # streaming: the DataLoader's sampler, each epoch's order
        if self.images is None:  # a folder too large for memory, decoded by workers as it streams
            decoder = _optional("folders", "--dataset folder").Decoder(data.files, data.img_size, data.channels, True)
            self.loader = torch.utils.data.DataLoader(
                decoder, batch_size, sampler=self.order, num_workers=n_workers, pin_memory=device.type == "cuda",
                persistent_workers=n_workers > 0,
            )  # fmt: skip

    def __len__(self):
        return len(self.data) // (self.batch_size * self.world)

    def state_dict(self):
        return {"taken": self.taken}

    def load_state_dict(self, state):
        self.taken = state["taken"]

    def __iter__(self):
        while True:
            epoch, skip = divmod(self.taken, len(self))
            order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            order = order[: len(self) * self.batch_size * self.world][self.rank :: self.world][skip * self.batch_size :]
            self.order[:] = order.tolist()
            if self.images is not None:
                batches = ((self.images[i], i) for i in order.to(self.device).split(self.batch_size))
            else:
                batches = ((images.to(self.device, non_blocking=True), i.to(self.device)) for images, i in self.loader)
            for images, indices in batches:
                self.taken += 1
                yield images.float().div_(127.5).sub_(1.0), self.labels[indices] if self.labels is not None else None


class Run:
    """<out>/<script>_<dataset>_<time> or --resume's folder: config.json, metrics.csv, samples/, checkpoint.pt,
    summary.json; locked while it trains (not to draw: --generate, --interpolate, training=False); rank 0 writes."""

    def __init__(self, opt, script, data, device, training=True):
        self.opt, self.script, self.device = opt, Path(script).stem, device
        self.about = f"{len(data)} {data.name} images at {opt.img_size}x{opt.img_size}x{opt.channels}" if data else ""
        self.resumed = resumable(load_checkpoint(opt.resume), self.script, opt) if opt.resume else None
        self.training = training and not (opt.generate or opt.interpolate)
        self.scorer = self.plots = self.tensorboard = self.dir = None
        self.held = contextlib.ExitStack()  # the folder's lock and TensorBoard's writer, let go at the end or a stop
        if opt.generate or (self.training and (opt.fid or opt.fcd or opt.swd or opt.save_fakes)):  # fails now
            reals = functools.partial(Batches, data, opt.batch_size, device, 0, opt.n_cpu, shard=False)
            scoring = _optional("scoring", "--fid/--fcd/--swd, --save_fakes, --generate")
            self.scorer = scoring.Scorer(opt, data, device, reals)
        if opt.interpolate or opt.tensorboard:
            self.plots = _optional("plots", "--interpolate and --tensorboard")
        if opt.tensorboard and not importlib.util.find_spec("tensorboard"):  # now, before the run's folder
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
        if is_main():
            self.dir = self.resumed["dir"] if opt.resume else new_folder(Path(opt.out), f"{self.script}_{opt.dataset}")
            self.held.enter_context(lock(self.dir) if self.training else contextlib.nullcontext())
        if GROUP.distributed:
            torch.distributed.broadcast_object_list(shared := [self.dir])
            self.dir = shared[0]
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.step, self.seconds, self.signalled, self.stopping = 0, 0.0, False, False
        if opt.tensorboard and is_main():
            self.tensorboard = self.held.enter_context(self.plots.TensorBoard(self.dir / "tensorboard"))

    @contextlib.contextmanager
    def writing(self, name):
        """Any failure to write <run>/name (a full disk...) as one line; a temporary file left is removed."""
        try:
            yield self.dir / name
        except OSError as error:
            (self.dir / f"{name}.tmp").unlink(missing_ok=True)
            raise UsageError(f"could not write {self.dir / name} ({error.strerror}): free disk space, then --resume")

    def write(self, name, text):
        """Replace <run>/name whole, through a temporary file: a crash leaves the old file or the new."""
        if is_main():
            with self.writing(name) as path:
                path.with_name(f"{name}.tmp").write_text(text)
                os.replace(path.with_name(f"{name}.tmp"), path)

    def append(self, name, row):
        """A row (a dict) at the end of <run>/name, a CSV file whose header is the first row's keys."""
        with self.writing(name) as path, open(path, "a", newline="") as f:
            rows = [list(row)] * (f.tell() == 0) + [[f"{v:.6g}" if isinstance(v, float) else v for v in row.values()]]
            csv.writer(f).writerows(rows)

    def progress(self, start):
        """Steps start+1..n_iters under one bar; Ctrl-C or SIGTERM stops after a step (twice: at once)."""
        previous = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.started = time.perf_counter() - self.seconds
        print(f"{self.about} on {self.device}; run folder {self.dir}")
        steps = range(start + 1, self.opt.n_iters + 1)
        self.bar = tqdm(steps, initial=start, total=self.opt.n_iters, disable=not is_main())
        try:
            yield from self.bar
        except BaseException:  # stopped: another process may resume the run
            self.held.close()
            raise
        finally:
            self.bar.close()
            [signal.signal(sig, handler) for sig, handler in previous.items()]

    def _signal(self, signum, frame):
        if self.signalled:
            raise KeyboardInterrupt
        self.signalled = True
        tqdm.write(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint", file=sys.stderr)

    def log(self, step, **values):
        """A row of metrics.csv (averaged over torchrun's processes, in one transfer); a NaN or Inf stops the run."""
        *numbers, signalled = all_mean(torch.stack([torch.as_tensor(v, device=self.device).float()
                                                    for v in [*values.values(), self.signalled]])).tolist()  # fmt: skip
        values = dict(zip(values, numbers))
        if bad := next((name for name, value in values.items() if not math.isfinite(value)), None):
            last = f"--resume {self.dir}" if self.checkpoint_path.exists() else "no checkpoint yet: start again"
            raise Diverged(f"{bad} became {values[bad]} at step {step}: training diverged; {last} with a lower --lr")
        self.step, self.seconds, self.stopping = step, time.perf_counter() - self.started, signalled > 0
        self.bar.set_postfix({name: f"{value:.3f}" for name, value in values.items()}, refresh=False)
        if is_main():
            self.append("metrics.csv", dict(step=step, **values, seconds=self.seconds))
        if self.tensorboard:
            self.tensorboard.scalars("train", step, values)

    def sample(self, step, generator, *inputs):
        """samples/<step>.png of generator(*inputs) in eval mode every --sample_interval steps and at the end."""
        if (step % self.opt.sample_interval and step != self.opt.n_iters and not self.stopping) or not is_main():
            return
        with evaluating(generator) as net:
            images = net(*inputs)
        images = torch.stack(images, 1).flatten(0, 1) if isinstance(images, tuple) else images  # pairs side by side
        self.save_grid(images, f"{step:07d}.png")
        if self.tensorboard:
            self.tensorboard.grid(step, images)

    def save_grid(self, images, name):
        """Images in [-1, 1] as samples/<name>, a PNG grid of 8 a row; returns its path."""
        with self.writing(f"samples/{name}") as path:
            if is_main():  # under torchrun, rank 0 alone writes
                path.parent.mkdir(exist_ok=True)
                save_image(images.float().cpu(), path, nrow=8, normalize=True, value_range=(-1, 1), padding=2)
        return path

    def score(self, step, generator, fakes):
        """With --fid/--fcd/--swd, every --fid_interval steps unless stopping: a row of scores.csv (scoring.py)."""
        if self.scorer and self.opt.fid_interval and step % self.opt.fid_interval == 0 and not self.stopping:
            self.scorer.score(self, step, generator, fakes)

    def checkpoint(self, step, state):
        """checkpoint.pt every --checkpoint_interval steps, at the end, and before stopping on a signal."""
        if step % self.opt.checkpoint_interval == 0 or step == self.opt.n_iters or self.stopping:
            save_checkpoint(self, step, state)
        if self.stopping:
            launch = f"torchrun --nproc_per_node={GROUP.size}" if GROUP.distributed else "python"
            print(f"stopped at step {step}; continue with: {launch} {self.script}.py --resume {self.dir}")
            raise KeyboardInterrupt

    def finish(self, generator, fakes):
        """The last scores and --save_fakes (scoring.py), summary.json, the plots (plots.py); returns the Run."""
        scores = self.scorer.finish(self, generator, fakes) if self.scorer else {}
        grid = max((self.dir / "samples").glob("[0-9]*.png"), default=None)  # the last grid: names are zero-padded
        summary = dict(script=self.script, dataset=self.opt.dataset, img_size=self.opt.img_size, step=self.step)
        summary.update(channels=self.opt.channels, seconds=round(self.seconds, 1), **scores)
        self.write("summary.json", json.dumps(dict(summary, samples=grid and f"samples/{grid.name}"), indent=1))
        if is_main() and (plots := _optional("plots", "losses.png and progress.gif", missing_ok=True)):
            plots.save_plots(self.dir)
        self.held.close()
        print(f"done: {self.step} generator steps in {self.seconds:.0f}s; samples and checkpoint in {self.dir}")
        return self

    def restore(self, state):
        """Resume `state` from --resume's checkpoint, CSV rows after it dropped; write config.json; return the step."""
        if self.resumed:
            load_state(state, self.resumed, self.device)
            self.step, self.seconds = self.resumed["step"], self.resumed["seconds"]
            if self.opt.n_iters < self.step:
                raise UsageError(f"--n_iters {self.opt.n_iters}: the run is at step {self.step} already; pass more")
        for path in self.dir.glob("*.csv") if self.resumed and self.training else ():  # metrics.csv, scores.csv...
            lines = path.read_text().splitlines(keepends=True)
            if lines and lines[0].startswith("step,"):
                self.write(path.name, "".join(lines[:1] + [r for r in lines[1:] if int(r.split(",")[0]) <= self.step]))
        if self.training:
            config = dict(vars(self.opt), script=self.script, torch=torch.__version__, world_size=GROUP.size)
            self.write("config.json", json.dumps(config, indent=2, default=str) + "\n")
        return self.step


def new_folder(out, name):
    """<out>/<name>_<time> (-2, -3... when taken), created by this process alone."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path in (out / f"{name}_{stamp}{f'-{n}' * (n > 1)}" for n in itertools.count(1)):
            with contextlib.suppress(FileExistsError):
                path.mkdir()
                return path
    except OSError as error:
        raise UsageError(f"cannot write the run folder in {out} ({error.strerror}): pass --out a writable folder")


def lock(folder):
    """An OS lock on a run folder while it trains (a file, to close), dropped when the process dies too; none
    where there is no such lock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return contextlib.nullcontext()
    try:
        fcntl.flock(handle := open(folder / ".lock", "w"), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"{folder} is being trained by another process: wait for it to finish, or stop it")
    return handle


def save_checkpoint(run, step, state):
    """`state` (state_dicts; tensors as they are), the step, arguments and each process's random state as
    <run>/checkpoint.pt, replaced once whole; the one before stays as checkpoint.prev.pt."""
    rng = dict(cpu=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if run.device.type == "cuda" else None)
    every_rng, error = [rng] * GROUP.size, [None]
    if GROUP.distributed:
        torch.distributed.all_gather_object(every_rng, rng)
    checkpoint = {name: obj if torch.is_tensor(obj) else unwrap(obj).state_dict() for name, obj in state.items()}
    args = {k: v if isinstance(v, (int, float, str, type(None))) else str(v) for k, v in vars(run.opt).items()}
    checkpoint.update(format=CHECKPOINT_FORMAT, script=run.script, step=step, seconds=run.seconds, args=args)
    checkpoint.update(world_size=GROUP.size, rng=every_rng)
    try:
        if is_main():  # rank 0 alone writes
            with run.writing("checkpoint.pt") as path, open(tmp := path.with_name("checkpoint.pt.tmp"), "wb") as f:
                torch.save(checkpoint, f)
                os.fsync(f.fileno())
                if path.exists():  # a hard link: at every moment a whole checkpoint has one of the two names
                    path.with_name("checkpoint.prev.pt").unlink(missing_ok=True)
                    os.link(path, path.with_name("checkpoint.prev.pt"))
                os.replace(tmp, path)
    except UsageError as failed:
        error = [failed]
    if GROUP.distributed:  # all wait for the file, and stop alike where it could not be written
        torch.distributed.broadcast_object_list(error)
    if error[0]:
        raise error[0]


def load_state(state, checkpoint, device):
    """Each net, optimizer, stream... (a tensor: in place) of `state` and this process's random generators on
    `device` as `checkpoint` holds them."""
    for name, obj in state.items():
        try:
            obj.copy_(saved) if torch.is_tensor(saved := checkpoint[name]) else unwrap(obj).load_state_dict(saved)
        except (RuntimeError, ValueError) as error:  # nets of another shape: a flag differs from the run's
            detail = (str(error).splitlines()[1:] or [str(error)])[0].strip()
            raise UsageError(f"--resume: the checkpoint's {name} does not fit these flags ({detail})") from None
    torch.set_rng_state((rng := checkpoint["rng"][GROUP.rank])["cpu"])
    if device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"])


def load_checkpoint(path):
    """A run's checkpoint, read with weights_only=True: a shared checkpoint can never run code."""
    path = Path(path).expanduser()
    path = path / "checkpoint.pt" if path.is_dir() else path
    path = path.with_name("checkpoint.prev.pt") if not path.exists() and path.name == "checkpoint.pt" else path
    if not path.exists():
        raise UsageError(f"--resume {path}: no such checkpoint; pass a run folder or its checkpoint.pt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated, foreign or unsafe file fails in many ways
        reason = "it holds Python objects, never unpickled here" if "weights_only" in str(error) else first_line(error)
        previous = path.with_name("checkpoint.prev.pt")
        hint = f"; {previous} may still be good" if previous.exists() and previous != path else ""
        raise UsageError(f"--resume {path} is not a readable checkpoint ({reason}){hint}")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"--resume {path} was not written by this version of the scripts: start a new run")
    return dict(checkpoint, dir=path.parent)


def resumable(checkpoint, script, opt):
    """--resume's checkpoint, if `script` wrote it for the same data, shapes and number of processes."""
    if checkpoint["script"] != script:
        raise UsageError(f"--resume: the run was written by {checkpoint['script']}.py, not {script}.py")
    for key in ("dataset", "img_size", "channels", "latent_dim"):
        if checkpoint["args"].get(key) != getattr(opt, key, checkpoint["args"].get(key)):
            raise UsageError(f"--resume: the checkpoint has {key}={checkpoint['args'][key]}: drop --{key}")
    if (trained := checkpoint["world_size"]) != GROUP.size:  # each process resumes its own random state
        raise UsageError(f"--resume: the run was trained by {trained} process(es), not {GROUP.size}")
    return checkpoint


def _optional(module, flags, missing_ok=False):
    """A module imported when `flags` ask for it, its UsageError then one line too; missing, one line naming
    it (a warning and None, where `missing_ok`)."""
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:  # the module is here, a package it needs is not
            raise UsageError(f"{flags} need the {error.name} package: pip install -r requirements.txt") from None
        if not missing_ok:
            raise UsageError(f"{flags} need {module}.py: copy it from the repository beside this script") from None
        print(f"no {flags}: copy {module}.py beside this script", file=sys.stderr)
        return None
    USAGE_ERRORS.add(imported.UsageError)
    return imported


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def main(train, parse_args):
    """train(parse_args()): a UsageError (exit 2), Diverged and out-of-memory (exit 1) as one line, Ctrl-C 130."""
    try:
        train(parse_args())
    except (*USAGE_ERRORS, Diverged, torch.OutOfMemoryError) as error:
        message = "out of memory: pass a smaller --batch_size" if isinstance(error, torch.OutOfMemoryError) else error
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        sys.exit(2 if isinstance(error, tuple(USAGE_ERRORS)) else 1)
    except KeyboardInterrupt:
        sys.exit(130)
    if GROUP.distributed:
        torch.distributed.destroy_process_group()
