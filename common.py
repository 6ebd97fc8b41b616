"""Plumbing shared by the GAN scripts: command line, data, devices, run folders, checkpoints, metrics
and image grids. Nothing about models, losses or update rules lives here; each script owns those.

Images leave this module as float tensors in [-1, 1] (the range of a Tanh generator), shaped
N x C x H x W, with integer class labels where the data set has them.
"""

import argparse
import contextlib
import csv
import datetime
import gc
import hashlib
import json
import math
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# What each --dataset means when the user gives no --img_size / --channels / --n_epochs /
# --sample_interval: sizes that suit the data, and a schedule that fits its length.
DATASET_DEFAULTS = {
    "digits": dict(img_size=32, channels=1, n_epochs=80, sample_interval=200),
    "mnist": dict(img_size=32, channels=1, n_epochs=20, sample_interval=500),
    "fashion": dict(img_size=32, channels=1, n_epochs=20, sample_interval=500),
    "cifar10": dict(img_size=32, channels=3, n_epochs=30, sample_interval=500),
    "anime": dict(img_size=64, channels=3, n_epochs=25, sample_interval=500),
    "folder": dict(img_size=64, channels=3, n_epochs=25, sample_interval=500),
}
DATASETS = tuple(DATASET_DEFAULTS)

# Data sets whose decoded pixels fit in this many bytes are held in memory (on the GPU when there is
# one) and batched from there; larger folders stream from disk through DataLoader workers.
IN_MEMORY_LIMIT = 4 * 2**30

# --dataset anime downloads a CC0 copy of the Kaggle "Anime Face Dataset" from the Hugging Face hub,
# pinned to one commit so that the checksum holds. A plain zip: Python unpacks it with no extra package.
ANIME_URL = "https://huggingface.co/datasets/huggan/anime-faces/resolve/67ebcf8c69b45feb3883d695f04227078a6c9da9/data.zip"
ANIME_SHA256 = "b50c3f2e1bbad0d119f8c5748a0d01138cb56152fb8997ce5c8b139129bf3c23"
ANIME_HELP = (
    "download {url} (or the Kaggle 'Anime Face Dataset', kaggle.com/datasets/splcher/animefacedataset) "
    "and unpack its images into {folder} (any nesting), or train on faces you have with "
    "--dataset folder --data_root DIR"
)


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing data...): reported as one line, exit code 2."""


class Diverged(Exception):
    """A loss became NaN or infinite: reported as one line, exit code 1, the last checkpoint untouched."""


# Under --nan_policy skip, this many skipped updates with no finite step between them mean the run cannot recover.
MAX_SKIPPED_IN_A_ROW = 20


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and the per-data-set and --resume defaults.
    `dataset_defaults` ({dataset: {flag: value}}) lets a script adjust DATASET_DEFAULTS for itself."""

    def __init__(self, *args, dataset_defaults=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataset_defaults = {name: {**values, **(dataset_defaults or {}).get(name, {})} for name, values in DATASET_DEFAULTS.items()}

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        """Defaults come from, weakest first: the flag's default, the data set's defaults,
        the checkpoint's own arguments for --resume; flags given on the command line always win."""
        opt = super().parse_args(args, namespace)
        defaults = dict(self.dataset_defaults[opt.dataset])
        if getattr(opt, "resume", None):
            try:
                saved = load_checkpoint(opt.resume)["args"]
            except UsageError as error:
                self.error(str(error))
            known = {action.dest for action in self._actions}
            defaults.update({k: v for k, v in saved.items() if k in known and k != "resume"})
        self.set_defaults(**defaults)
        opt = super().parse_args(args, namespace)
        if getattr(opt, "generate", None) and not opt.resume:
            self.error("--generate writes fakes from a trained generator: pass --resume RUN_FOLDER with it")
        if getattr(opt, "fid_interval", None) and not (opt.fid or opt.fcd):
            self.error("--fid_interval says how often to score: add --fid or --fcd")
        return opt


def split_script_args(texts, scripts, own_flags, tool, hint=""):
    """compare.py's and bench.py's --script_args: each text is '[SCRIPT:] FLAGS', flags for one script
    or, without a prefix, for all of `scripts`; returns {script: [flags]}. A flag in `own_flags`, which
    `tool` sets itself, an unknown script or unbalanced quotes raise UsageError."""
    extra = {script: [] for script in scripts}
    for text in texts:
        match = re.match(r"\s*(\w+):(?!\S)(.*)$", text, re.S)
        if match and match.group(1) not in scripts:
            raise UsageError(f"--script_args {text!r}: {match.group(1)!r} is not a script; choose one of {', '.join(scripts)}")
        try:
            flags = shlex.split(match.group(2) if match else text)
        except ValueError as error:
            raise UsageError(f"--script_args {text!r}: {error}")
        own = [flag for flag in flags if flag.split("=")[0] in own_flags]
        if own:
            raise UsageError(f"--script_args: {tool} sets {own[0]} itself{hint}")
        for script in [match.group(1)] if match else scripts:
            extra[script] += flags
    return extra


def _number(kind, low, low_inclusive, high=None):
    """An argparse type: a number of `kind` above `low` (and below `high`), with a clear message."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (value < low if low_inclusive else value <= low) or (high is not None and value >= high):
            bound = f">= {low}" if low_inclusive else f"> {low}"
            if high is not None:
                bound += f" and < {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, False)
nonnegative_int = _number(int, 0, True)
positive_float = _number(float, 0.0, False)
nonnegative_float = _number(float, 0.0, True)
adam_beta = _number(float, 0.0, True, 1.0)


# --------------------------------------------------------------------------------------------------
# Device, seeding, random state
# --------------------------------------------------------------------------------------------------
def get_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return device


def seed_everything(seed, deterministic=False):
    """Seed every generator. CPU runs are then reproducible bit for bit; on GPUs, `deterministic`
    also trades speed for cuDNN and cuBLAS kernels that give the same result every time."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS generators too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True  # every batch has the same shape: pick the fastest kernels once


class Precision:
    """--amp: forward passes and losses under autocast in bfloat16 where the device supports it;
    float16 otherwise, with a GradScaler per optimizer against gradient underflow. Disabled, both
    are no-ops, so the training loop reads the same either way."""

    def __init__(self, enabled, device):
        self.enabled, self.device_type = enabled, device.type
        bfloat16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.dtype = torch.bfloat16 if bfloat16 else torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self):
        return torch.amp.GradScaler(self.device_type, enabled=self.enabled and self.dtype == torch.float16)


def _reset_nan_running_stats(objects):
    """A batch skipped for NaN still went through BatchNorm's forward in training mode and left NaN
    running statistics (used only in eval mode): restart them rather than checkpoint NaN."""
    for obj in objects:
        for module in obj.modules() if isinstance(obj, torch.nn.Module) else ():
            stats = [getattr(module, "running_mean", None), getattr(module, "running_var", None)]
            if hasattr(module, "reset_running_stats") and any(t is not None and not t.isfinite().all() for t in stats):
                module.reset_running_stats()


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


# --------------------------------------------------------------------------------------------------
# Several GPUs or machines (torchrun)
# --------------------------------------------------------------------------------------------------
class Group:
    """This process's place among the processes of one run. torchrun starts one process per GPU, on
    one machine or several, and tells each its RANK (0 .. WORLD_SIZE - 1 over all machines) and its
    LOCAL_RANK (its GPU on its machine). A plain `python script.py` is a group of one, which every
    helper below leaves exactly as it was."""

    def __init__(self):
        self.rank, self.local_rank, self.size, self.machines = 0, 0, 1, 1
        self.distributed = False  # under torchrun, with a process group (even one of a single process)
        self.device = None  # where the group's own messages are made: NCCL carries CUDA tensors only


GROUP = Group()
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_main():
    """Whether this process writes the run folder and prints progress: rank 0, or the only process."""
    return GROUP.rank == 0


def init_distributed(opt, device):
    """Under torchrun: join the process group (NCCL on CUDA GPUs, gloo on the CPU) and return this
    process's device, cuda:LOCAL_RANK on GPUs. Each process then draws its own noise (--seed + rank;
    the nets all start from rank 0's weights, see distribute) and only rank 0 prints to stdout.
    Without torchrun: `device`, unchanged."""
    present = [name for name in TORCHRUN_ENV if name in os.environ]
    if not present:
        if opt.sync_bn:
            raise UsageError("--sync_bn synchronises BatchNorm across the processes that torchrun starts: launch with torchrun --nproc_per_node=N (see the README), or drop --sync_bn")
        return device
    if len(present) < len(TORCHRUN_ENV):
        missing = ", ".join(name for name in TORCHRUN_ENV if name not in present)
        raise UsageError(f"{', '.join(present)} set but not {missing}: start several processes with torchrun, which sets them all, or one with plain python")
    try:
        rank, local_rank, size = (int(os.environ[name]) for name in TORCHRUN_ENV[:3])
    except ValueError:
        raise UsageError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers, not {[os.environ[n] for n in TORCHRUN_ENV[:3]]}: start the processes with torchrun")
    if not torch.distributed.is_available():
        raise UsageError("this PyTorch build has no torch.distributed: run with plain python, or install a build that has it")
    if device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise UsageError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; pass --device cuda, and pick the GPUs with CUDA_VISIBLE_DEVICES")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started more processes on this machine than the {torch.cuda.device_count()} GPU(s) PyTorch sees: pass --nproc_per_node={torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"--device {device.type}: PyTorch's process groups run on CUDA GPUs (NCCL) or the CPU (gloo) only; pass --device cpu to train with torchrun here")
    if opt.sync_bn and device.type != "cuda":
        raise UsageError(f"--sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no {device.type} version): drop --sync_bn to train on the {device.type}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():  # a program that trains several times in one launch joins once
        try:
            # gloo's 30 minutes for NCCL too (its default is 10): rank 0 alone may download the data
            # or score --fid while the others wait for it.
            timeout = datetime.timedelta(minutes=30)
            torch.distributed.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as error:  # the rendezvous failed: a wrong address or port, a firewall, a timeout
            raise UsageError(f"could not join the other processes through {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({_first_line(error)}): check --master_addr and --master_port, and that the machines reach each other")
        if rank != 0:
            sys.stdout = open(os.devnull, "w")  # one voice, rank 0's; errors and warnings (stderr) still show
    GROUP.rank, GROUP.local_rank, GROUP.size, GROUP.device, GROUP.distributed = rank, local_rank, size, device, True
    GROUP.machines = max(size // int(os.environ.get("LOCAL_WORLD_SIZE", size)), 1)
    seed_everything(opt.seed + rank, opt.deterministic)  # rank 0 draws what a plain run with --seed draws
    print(f"torchrun: {size} processes on {GROUP.machines} machine(s), {backend} on {device.type}; each step trains on {size} x {opt.batch_size} = {size * opt.batch_size} images (--batch_size is per process)")
    return device


def distribute(opt, *nets):
    """Under torchrun, each net wrapped in DistributedDataParallel: it starts every process from
    rank 0's weights and, in backward, replaces each gradient by its mean over all processes, so that
    every process takes the same step, as one process would on all their batches at once. With
    --sync_bn, BatchNorm becomes SyncBatchNorm first. Without torchrun: the nets themselves."""
    if not GROUP.distributed:
        return nets
    if opt.sync_bn:
        if not any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for net in nets for module in net.modules()):
            raise UsageError("--sync_bn: neither net has a BatchNorm layer to synchronise: drop --sync_bn")
        nets = [torch.nn.SyncBatchNorm.convert_sync_batchnorm(net) for net in nets]
    # No broadcast of rank 0's buffers before every forward (the default): BatchNorm's running
    # statistics are never used, as the nets always run in training mode, samples included. Each
    # process keeps its own, and the checkpoint rank 0's.
    device_ids = [GROUP.device] if GROUP.device.type == "cuda" else None
    return tuple(torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids, forward_sync_buffers=False) for net in nets)


def _unwrapped(obj):
    """The net inside a DistributedDataParallel wrapper: checkpoints keep a plain run's keys."""
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


def mean_over_processes(*tensors):
    """Each of `tensors` (of one shape) averaged over all processes, as a tuple: for measurements that
    every process must agree on, such as BEGAN's k_t or the logged losses. A plain run: `tensors`."""
    if GROUP.size == 1:
        return tensors
    total = torch.stack([tensor.detach().to(GROUP.device) for tensor in tensors])
    torch.distributed.all_reduce(total)
    return tuple((total / GROUP.size).unbind())


def any_process(flag):
    """Whether `flag` holds in any process: for decisions that all must take alike (skip, stop)."""
    if GROUP.size == 1:
        return bool(flag)
    flag = torch.tensor(float(flag), device=GROUP.device)
    torch.distributed.all_reduce(flag, torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _gather_on_main(value):
    """Every process's `value` (picklable), in rank order, on rank 0; None elsewhere. A plain run: [value]."""
    if GROUP.size == 1:
        return [value]
    every = [None] * GROUP.size if is_main() else None
    torch.distributed.gather_object(value, every, dst=0)
    return every


def broadcast_from_main(*values):
    """Rank 0's `values` (any picklable objects) in every process, as a tuple. A plain run: `values`."""
    if GROUP.size == 1:
        return values
    values = list(values)
    torch.distributed.broadcast_object_list(values, src=0)
    return tuple(values)


@contextlib.contextmanager
def _first_on_each_machine():
    """Under torchrun, the first process of each machine goes first and the others wait for it, so
    that one process per machine downloads or unpacks the data and the others find its files."""
    if GROUP.distributed and GROUP.local_rank != 0:
        torch.distributed.barrier()
    yield
    if GROUP.distributed and GROUP.local_rank == 0:
        torch.distributed.barrier()


def _launch_command(size, machines):
    """How to start `size` processes on `machines` machines, for the hints in messages."""
    if size == 1:
        return "python"
    if machines == 1:
        return f"torchrun --standalone --nproc_per_node={size}"
    return f"torchrun --nnodes={machines} --nproc_per_node={size // machines} (with each machine's --node_rank and the --master_addr, --master_port as before)"


def _leave_group():
    """Leave the process group at the end of a run that completed."""
    if GROUP.distributed and torch.distributed.is_initialized():
        # A DistributedDataParallel wrapper that outlives its process group aborts the process at exit,
        # and --compile's wrappers are held in reference cycles (each keeps its compiled self).
        gc.collect()
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
class ImageData:
    """A data set at training size: either `images` (uint8, N x C x H x W, in memory) or `files`
    (paths decoded on the fly), plus `labels` (int64, N) or None, and the class names."""

    def __init__(self, name, images=None, files=None, labels=None, classes=(), img_size=None, channels=None):
        self.name, self.images, self.files, self.labels = name, images, files, labels
        self.classes = list(classes)
        self.img_size, self.channels = img_size, channels

    def __len__(self):
        return len(self.images) if self.images is not None else len(self.files)

    @property
    def n_classes(self):
        return len(self.classes)


def load_images(dataset, data_root, img_size, channels):
    """Load --dataset at img_size x img_size with `channels` channels, as an ImageData."""
    with _first_on_each_machine():
        return _load_images(dataset, data_root, img_size, channels)


def _load_images(dataset, data_root, img_size, channels):
    root = Path(data_root).expanduser()
    if dataset == "digits":
        return _load_digits(img_size, channels)
    if dataset in ("mnist", "fashion", "cifar10"):
        return _load_torchvision(dataset, root, img_size, channels)
    if dataset == "anime":
        folder = root / "anime"
        if not folder.is_dir() or not _image_files(folder):
            fetch_anime(folder)
        return _load_folder(folder, img_size, channels, labelled=False, name="anime")
    if dataset == "folder":
        if not root.exists():
            raise UsageError(f"--data_root {root} does not exist: point it at a folder of images")
        if not root.is_dir():
            raise UsageError(f"--data_root {root} is a file, not a folder: point it at the folder that holds the images")
        return _load_folder(root, img_size, channels, labelled=None, name=root.name)
    raise UsageError(f"unknown data set {dataset!r}: choose one of {', '.join(DATASETS)}")


def fetch_anime(folder):
    """Download the anime faces and unpack them into `folder`, or fail with the manual steps.
    The archive is fetched as <name>.part (resumed if a previous try was cut off), checked against
    ANIME_SHA256, renamed, then unpacked beside `folder` and moved into place: no half-written
    folder is ever left behind."""
    archive = folder.with_name("anime-faces.zip")
    manual = ANIME_HELP.format(url=ANIME_URL, folder=folder)
    if folder.is_dir() and any(folder.iterdir()):  # never unpack over (or delete) the user's own files
        raise UsageError(f"{folder} holds no images but is not empty: {manual}")
    print(f"{folder} holds no images: downloading the anime faces (462 MB) from {ANIME_URL}", file=sys.stderr)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not archive.exists():
            download(ANIME_URL, ANIME_SHA256, archive)
        unpack_zip(archive, folder)
    except (OSError, zipfile.BadZipFile) as error:  # urllib's errors are OSErrors
        partial = archive.with_name(archive.name + ".part")
        kept = f"; the partial download {partial} resumes on the next try" if partial.exists() else ""
        raise UsageError(f"could not download the anime faces ({_first_line(error)}){kept}: {manual}")
    archive.unlink()


def download(url, sha256, dest):
    """Fetch `url` into `dest` through dest.part, resuming a partial file, and verify its SHA-256."""
    partial = dest.with_name(dest.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: nothing left to send, the partial file is complete
            raise
    else:
        with response:
            if have and response.status != 206:  # the server ignored the range: start again
                have = 0
            size = int(response.headers.get("Content-Length") or 0)
            with open(partial, "ab" if have else "wb") as f, tqdm(
                total=have + size or None, initial=have, unit="B", unit_scale=True, desc=f"downloading {dest.name}"
            ) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        if size and partial.stat().st_size < have + size:  # urllib does not report a connection cut short
            raise OSError(f"the connection closed after {partial.stat().st_size} of {have + size} bytes")
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise OSError(f"the download is corrupt (SHA-256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}...) and was deleted")
    os.replace(partial, dest)


def unpack_zip(archive, folder):
    """Unpack `archive` into `folder` through a temporary sibling, refusing paths that leave it."""
    staging = folder.with_name(folder.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise zipfile.BadZipFile(f"unsafe path {name!r} in {archive}")
            zipped.extractall(staging)
        if folder.is_dir():  # an empty folder the user made (fetch_anime refuses a non-empty one)
            folder.rmdir()
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _resize(images, img_size):
    """uint8 N x C x h x w -> uint8 N x C x img_size x img_size (antialiased, in chunks to bound memory)."""
    if images.shape[-1] == img_size and images.shape[-2] == img_size:
        return images.contiguous()
    out = []
    for chunk in images.split(4096):
        resized = F.interpolate(chunk.float(), size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _set_channels(images, channels):
    """uint8 N x c x H x W with c in (1, 3) -> `channels` channels (grey is ITU-R 601 luma)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)


def _load_digits(img_size, channels):
    """The 1,797 8x8 handwritten digits bundled with scikit-learn: no download needed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().mul(255.0 / 16.0).round().to(torch.uint8)  # values are 0..16
    images = _set_channels(_resize(pixels.unsqueeze(1), img_size), channels)
    labels = torch.from_numpy(digits.target).long()
    return ImageData("digits", images=images, labels=labels, classes=[str(d) for d in range(10)], img_size=img_size, channels=channels)


def _load_torchvision(dataset, root, img_size, channels):
    """MNIST, Fashion-MNIST or CIFAR-10 through torchvision: downloaded into `root` when online,
    loaded from the files when they are already there."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[dataset]
    if root.exists() and not root.is_dir():
        raise UsageError(f"--data_root {root} is a file: pass the folder that holds (or will hold) {cls.__name__}")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints download progress on stdout
            data = cls(str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a failed checksum is a RuntimeError
        raise UsageError(
            f"could not load or download {cls.__name__} into {root} ({_first_line(error)}): when offline, "
            f"copy its files there first (torchvision's layout, e.g. {root / cls.__name__ / 'raw'}) or pass --data_root"
        )
    pixels = torch.as_tensor(np.asarray(data.data))
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)  # grey N x H x W / RGB N x H x W x C
    images = _set_channels(_resize(pixels, img_size), channels)
    labels = torch.as_tensor(np.asarray(data.targets)).long()
    return ImageData(dataset, images=images, labels=labels, classes=data.classes, img_size=img_size, channels=channels)


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _image_files(folder):
    """All image files below `folder`, sorted, skipping hidden files and folders."""
    files = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in parts) and path.is_file():
            files.append(path)
    return files


def _load_folder(folder, img_size, channels, labelled, name):
    """A folder of images. With class sub-folders (torchvision's ImageFolder layout) and no images
    beside them, each sub-folder is a class; otherwise every image below is one unlabelled class."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if labelled is None:
        labelled = bool(subfolders) and not loose
    if labelled:
        classes, files, labels = [], [], []
        for sub in subfolders:
            found = _image_files(sub)
            if not found:
                raise UsageError(f"class folder {sub} holds no images: add images to it or remove it")
            labels += [len(classes)] * len(found)
            classes.append(sub.name)
            files += found
    else:
        classes, files, labels = [], _image_files(folder), None
    if not files:
        raise UsageError(
            f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, any nesting): "
            "put images there or point --data_root at the folder that has them"
        )
    labels = torch.tensor(labels) if labels is not None else None
    data = ImageData(name, files=files, labels=labels, classes=classes, img_size=img_size, channels=channels)
    if len(files) * channels * img_size * img_size <= IN_MEMORY_LIMIT:
        _decode_into_memory(data)
    return data


def open_image(path, img_size, channels):
    """Decode one file to uint8 C x img_size x img_size: converted to grey or RGB (alpha composited
    onto white, palettes expanded, 16-bit scaled), shorter side resized, then center-cropped."""
    with Image.open(path) as img:
        img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits before converting
        array = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((array * 255.0 / max(array.max(), 1.0)).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    width, height = img.size
    scale = img_size / min(width, height)
    new_w, new_h = max(img_size, round(width * scale)), max(img_size, round(height * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - img_size) // 2, (new_h - img_size) // 2
    img = img.crop((left, top, left + img_size, top + img_size))
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).view(img_size, img_size, channels).permute(2, 0, 1)


class _FileDataset(torch.utils.data.Dataset):
    """Decodes files on the fly into (index, image); an unreadable file gives (index, error text)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data.files)

    def __getitem__(self, index):
        try:
            return index, open_image(self.data.files[index], self.data.img_size, self.data.channels)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            return index, f"{self.data.files[index]}: {_first_line(error)}"


def _decode_into_memory(data):
    """Decode every file once into one uint8 tensor, in parallel for large folders, skipping (and
    counting) files that cannot be read."""
    workers = min(os.cpu_count() or 1, 8) if len(data.files) > 2000 else 0
    loader = torch.utils.data.DataLoader(_FileDataset(data), batch_size=256, num_workers=workers, collate_fn=_stack_readable)
    chunks, keep, bad = [], [], []
    for images, indices, errors in loader:
        if indices:
            chunks.append(images)
        keep += indices
        bad += errors
    if not keep:
        raise UsageError(f"none of the {len(bad)} image files under {data.files[0].parent} could be read (first: {bad[0]}): replace them with valid images")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image file(s) of {len(data.files)}; first: {bad[0]}", file=sys.stderr)
        data.files = [data.files[i] for i in keep]
        data.labels = data.labels[keep] if data.labels is not None else None
    data.images = torch.cat(chunks)


def _stack_readable(batch):
    """Collate (index, image or error) pairs into one tensor per batch: a worker then hands over one
    shared-memory block per batch, not one per image (which exhausts open files on big folders)."""
    images = [item for _, item in batch if not isinstance(item, str)]
    indices = [index for index, item in batch if not isinstance(item, str)]
    errors = [item for _, item in batch if isinstance(item, str)]
    return (torch.stack(images) if images else None), indices, errors


class Batches:
    """Shuffled batches of (images in [-1, 1] on `device`, labels or None), one pass per epoch.

    The order of epoch e depends only on (seed, e), so a run resumed in the middle of an epoch
    sees exactly the batches it would have seen. Incomplete last batches are dropped (BatchNorm
    statistics of a handful of images are noise).

    Under torchrun (unless `shard` is False) process r of n takes every n-th image of that order from
    the r-th on: each step of the group trains on n x batch_size different images, and an epoch has
    n times fewer steps."""

    def __init__(self, data, batch_size, device, seed, n_workers=0, shard=True):
        self.rank, self.world = (GROUP.rank, GROUP.size) if shard else (0, 1)
        if batch_size * self.world > len(data):
            if self.world == 1:
                raise UsageError(f"--batch_size {batch_size} is larger than the {len(data)} images of {data.name}: pass --batch_size {len(data)} or less")
            raise UsageError(f"--batch_size {batch_size} x {self.world} processes is more than the {len(data)} images of {data.name}: pass --batch_size {len(data) // self.world} or less")
        self.data, self.batch_size, self.device, self.seed = data, batch_size, device, seed
        self.labels = data.labels.to(device) if data.labels is not None else None
        if data.images is not None:
            # Small data lives on the training device, so a batch is one index operation.
            self.images = data.images.to(device)
        else:
            self.images = None
            self.sampler = _ListSampler()
            self.loader = torch.utils.data.DataLoader(
                _StreamDataset(data), batch_size=batch_size, sampler=self.sampler, drop_last=True,
                num_workers=n_workers, pin_memory=device.type == "cuda", persistent_workers=n_workers > 0,
            )

    def __len__(self):
        return len(self.data) // (self.batch_size * self.world)

    def epoch(self, epoch, skip=0):
        """The batches of `epoch`, starting after the first `skip` of them."""
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(len(self.data), generator=generator)[: len(self) * self.batch_size * self.world]
        order = order[self.rank::self.world][skip * self.batch_size:]
        if self.images is not None:
            order = order.to(self.device)
            for indices in order.split(self.batch_size):
                yield self._to_float(self.images[indices]), self.labels[indices] if self.labels is not None else None
        else:
            self.sampler.indices = order.tolist()
            for images, indices in self.loader:
                images = self._to_float(images.to(self.device, non_blocking=True))
                yield images, self.labels[indices.to(self.device)] if self.labels is not None else None

    @staticmethod
    def _to_float(images):
        return images.float().div_(127.5).sub_(1.0)


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self):
        self.indices = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class _StreamDataset(_FileDataset):
    """A large folder read from disk: an unreadable file is replaced by the next readable one, with a warning."""

    def __getitem__(self, index):
        for offset in range(len(self)):
            used, item = super().__getitem__((index + offset) % len(self))
            if not isinstance(item, str):
                return item, used
            print(f"warning: skipped unreadable {item}", file=sys.stderr)
        raise UsageError(f"no image under {self.data.files[0].parent} could be read")


# --------------------------------------------------------------------------------------------------
# Run folder, metrics, checkpoints, image grids
# --------------------------------------------------------------------------------------------------
class Run:
    """One run's folder: config.json, metrics.csv, samples/<step>.png and checkpoint.pt.

    A new run gets runs/<script>_<dataset>_<time>/; --resume reopens the checkpoint's folder.
    Under torchrun every process keeps a Run, and rank 0's alone writes."""

    # losses.png and progress.gif at the end of a run: about two seconds, which the test suite skips.
    plots_at_finish = True

    def __init__(self, opt, script):
        self.script = Path(script).stem
        self.resumed = None
        SummaryWriter = None
        if getattr(opt, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard, or drop --tensorboard")
        if getattr(opt, "resume", None):
            # Checked before anything is written, so a refused --resume leaves the run folder as it was.
            self.resumed = _compatible_checkpoint(opt, self.script)
            self.dir = _checkpoint_path(opt.resume).parent
        else:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            base = Path(opt.out) / f"{self.script}_{opt.dataset}_{stamp}"
            self.dir, n = base, 1
            while self.dir.exists():
                n += 1
                self.dir = base.with_name(f"{base.name}-{n}")
        # Under torchrun the other processes take rank 0's folder (its name has rank 0's time in it)
        # and its verdict, so that all stop alike where it cannot be written.
        error = _make_run_dir(self.dir) if is_main() else None
        self.dir, error = broadcast_from_main(self.dir, error)
        if error:
            raise UsageError(error)
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.metrics_path = self.dir / "metrics.csv"
        config = dict(vars(opt), script=self.script, torch=torch.__version__, world_size=GROUP.size, effective_batch_size=GROUP.size * opt.batch_size)
        if is_main():
            (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        self._epoch_sums, self._epoch_count, self._columns = {}, 0, None
        self.nan_policy = getattr(opt, "nan_policy", "stop")
        self.opt, self.scores = opt, {}
        self.tensorboard = SummaryWriter(self.dir / "tensorboard") if SummaryWriter and is_main() else None
        self.skipped, self._epoch_skipped, self._skipped_in_a_row = 0, 0, 0
        self.in_sync_at_step = None  # the last step at which the processes were checked to hold the same weights

    @property
    def resume_command(self):
        """The command that continues this run, with as many processes as it has now."""
        return f"{_launch_command(GROUP.size, GROUP.machines)} {self.script}.py --resume {self.dir}"

    # -- metrics ---------------------------------------------------------------------------------
    def resume_metrics(self, step):
        """Drop rows written after the checkpoint at `step`, so a resumed run neither repeats nor skips rows."""
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            self._columns = rows[0]
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
            with open(self.metrics_path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def log(self, **row):
        """Append one row (its first column is the step) to metrics.csv and add it to the epoch's means.
        A NaN or infinite value stops the run before it is written or reaches a checkpoint; under
        --nan_policy skip, whose updates were not applied, the row is left out instead.
        Under torchrun the values are means over all processes, each of which logs its own batch
        (`seconds` is rank 0's), so that a NaN in one process stops them all at the same step."""
        if GROUP.size > 1:
            names = [name for name, value in row.items() if isinstance(value, float) and name != "seconds"]
            (means,) = mean_over_processes(torch.tensor([row[name] for name in names], dtype=torch.float64))
            row.update(zip(names, means.tolist()))
        bad = [name for name, value in row.items() if isinstance(value, float) and not math.isfinite(value)]
        if bad and self.nan_policy == "skip":
            return
        if bad:
            raise Diverged(f"{bad[0]} became {row[bad[0]]} at step {row['step']}: training diverged, most often from too high a --lr; {self._last_good()} with a lower --lr, or --nan_policy skip")
        self._skipped_in_a_row = 0
        if is_main():
            if self._columns is None:
                self._columns = list(row)
                with open(self.metrics_path, "w", newline="") as f:
                    csv.writer(f).writerow(self._columns)
            with open(self.metrics_path, "a", newline="") as f:
                csv.writer(f).writerow([_format(row.get(c, "")) for c in self._columns])
        if self.tensorboard:
            for name, value in row.items():
                if name not in ("step", "epoch", "seconds"):
                    self.tensorboard.add_scalar(f"train/{name}", value, row["step"])
        for key, value in row.items():
            if key not in ("step", "epoch", "seconds"):
                self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value
        self._epoch_count += 1

    def log_eval(self, step, scores):
        """Write the scores (fid, fcd...) into the metrics.csv row of `step`, adding their columns."""
        if not scores or self.scores is scores:  # already logged: scored at the interval and at the end
            return
        rows = []
        if self.metrics_path.exists():
            with open(self.metrics_path, newline="") as f:
                rows = list(csv.DictReader(f))
        row = next((r for r in rows if int(r["step"]) == step), None)
        if row is None:
            rows.append(row := {"step": step})
        row.update({name: _format(value) for name, value in scores.items()})
        self._columns = (self._columns or ["step"]) + [name for name in scores if name not in (self._columns or [])]
        tmp = self.metrics_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self._columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_path)
        self.scores = scores
        if self.tensorboard:
            for name, value in scores.items():
                self.tensorboard.add_scalar(f"score/{name}", value, step)
        tqdm.write(f"step {step}  " + "  ".join(f"{name} {value:.4g}" for name, value in scores.items()))

    def finish(self, step, seconds):
        """Write summary.json (where the run got to, its last grid and its last scores) and the plots."""
        if not is_main():
            return
        grids = sorted((self.dir / "samples").glob("*.png"))
        summary = dict(
            script=self.script, dataset=self.opt.dataset, img_size=self.opt.img_size, channels=self.opt.channels,
            step=step, seconds=round(seconds, 1), samples=str(grids[-1].relative_to(self.dir)) if grids else None, **self.scores,
        )
        if GROUP.distributed:
            summary.update(world_size=GROUP.size, in_sync_at_step=self.in_sync_at_step)
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.plots_at_finish:
            save_plots(self.dir)
        if self.tensorboard:
            self.tensorboard.close()

    def epoch_summary(self):
        """The means of the metrics logged since the last call, as 'name value' text."""
        count = max(self._epoch_count, 1)
        text = "  ".join(f"{k} {v / count:.4f}" for k, v in self._epoch_sums.items())
        if self._epoch_skipped:
            text += f"  skipped {self._epoch_skipped} NaN/Inf updates"
        self._epoch_sums, self._epoch_count, self._epoch_skipped = {}, 0, 0
        return text

    def accepts(self, loss):
        """Whether to apply the update for `loss`. Under --nan_policy stop, always: log() stops the
        run at the first non-finite value without a device sync per update. Under skip, only when
        `loss` is finite, so the weights never take a NaN step; skipped updates are counted. Under
        torchrun, every process skips where one must: its NaN is in everyone's averaged gradients."""
        if self.nan_policy == "stop":
            return True
        if not any_process(not torch.isfinite(loss).item()):
            return True
        self.skipped, self._epoch_skipped, self._skipped_in_a_row = self.skipped + 1, self._epoch_skipped + 1, self._skipped_in_a_row + 1
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise Diverged(f"{self._skipped_in_a_row} updates were skipped for a NaN or infinite loss with no finite step between them: training no longer recovers; {self._last_good()} with a lower --lr")
        return False

    def _last_good(self):
        if self.checkpoint_path.exists():
            return f"the last good checkpoint is {self.checkpoint_path}: --resume {self.dir}"
        return "no checkpoint was written yet: start again"

    # -- samples ---------------------------------------------------------------------------------
    def save_samples(self, images, step, nrow=8):
        """Save a grid of generator outputs (in [-1, 1]) as samples/<step>.png; returns the path."""
        path = self.dir / "samples" / f"{step:07d}.png"
        save_grid(images, path, nrow)
        if self.tensorboard:
            from torchvision.utils import make_grid

            self.tensorboard.add_image("samples", make_grid(images.detach().float().cpu(), nrow, normalize=True, value_range=(-1, 1)), step)
        return path

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, objects, opt, **state):
        """Atomically write checkpoint.pt: the state_dict of each of `objects` (nets, optimizers)
        under its name, plus `state`, the run's arguments and every random generator's state.
        The previous checkpoint is kept as checkpoint.prev.pt. Under torchrun every process takes
        part: the processes are checked to hold the same weights, each keeps its own random state
        in the checkpoint, and rank 0 writes it."""
        if self.skipped:
            _reset_nan_running_stats(objects.values())
        self._check_in_sync(objects, state.get("step"))
        rng = rng_state()
        every_rng = _gather_on_main(rng)
        error = None
        if is_main():
            checkpoint = {name: _unwrapped(obj).state_dict() for name, obj in objects.items()}
            checkpoint.update(state, args=vars(opt), script=self.script, rng=rng, world_size=GROUP.size, machines=GROUP.machines)
            if GROUP.size > 1:
                checkpoint["rng_per_rank"] = every_rng
            error = self._write_checkpoint(checkpoint)
        (error,) = broadcast_from_main(error)
        if error:
            raise UsageError(error)

    def _write_checkpoint(self, checkpoint):
        """Write `checkpoint` through a temporary file; returns the error text, or None."""
        tmp = self.checkpoint_path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            if self.checkpoint_path.exists():
                os.replace(self.checkpoint_path, self.dir / "checkpoint.prev.pt")
            os.replace(tmp, self.checkpoint_path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            return f"could not save the checkpoint in {self.dir} ({error.strerror}): free some disk space, then --resume {self.dir}"
        return None

    def _check_in_sync(self, objects, step):
        """Stop every process where they no longer hold the same weights. DistributedDataParallel
        keeps them identical bit for bit (all apply the same averaged gradients), unless something
        outside it changes one process's weights: compared by an integer checksum of each tensor's
        bits, which comes out the same whatever order a GPU adds them in."""
        if GROUP.size == 1:
            return
        names, sums = [], []
        for net_name, net in objects.items():
            for name, param in _unwrapped(net).named_parameters() if isinstance(net, torch.nn.Module) else ():
                bits = param.detach().reshape(-1).view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[param.element_size()])
                names.append(f"{net_name}.{name}")
                sums.append(bits.sum(dtype=torch.int64))
        mine = torch.stack(sums)
        every = [torch.empty_like(mine) for _ in range(GROUP.size)]
        torch.distributed.all_gather(every, mine)
        for rank, theirs in enumerate(every):
            differ = (theirs != every[0]).nonzero().flatten().tolist()
            if differ:
                raise Diverged(
                    f"the {GROUP.size} processes no longer hold the same weights at step {step}: rank {rank}'s {names[differ[0]]} differs from rank 0's "
                    f"(DistributedDataParallel keeps them equal; something changed one process's weights alone); {self._last_good()}"
                )
        self.in_sync_at_step = step

    def restore(self, objects):
        """Load the --resume checkpoint into `objects` (see save_checkpoint) and the random
        generators; returns the checkpoint dict for the caller's own state (step, fixed noise...).
        Under torchrun, each process gets back its own random state."""
        for name, obj in objects.items():
            _unwrapped(obj).load_state_dict(self.resumed[name])  # optimizers move their state to their parameters' device
        set_rng_state(self.resumed["rng_per_rank"][GROUP.rank] if GROUP.size > 1 else self.resumed["rng"])
        if is_main():
            self.resume_metrics(self.resumed["step"])
        return self.resumed


def _make_run_dir(path):
    """Create the run folder and check that it can be written; returns the error text, or None."""
    try:
        (path / "samples").mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        return f"cannot write the run folder {path} ({error.strerror}): pass --out with a writable folder"
    return None


def _compatible_checkpoint(opt, script):
    """The --resume checkpoint, if it was written by `script` for the same data and model shape."""
    checkpoint = load_checkpoint(opt.resume)
    if checkpoint.get("script") != script:
        raise UsageError(f"--resume {opt.resume} was written by {checkpoint.get('script')}.py, not {script}.py: resume it with that script")
    saved = checkpoint["args"]
    for key in ("dataset", "img_size", "channels", "latent_dim"):
        if key in saved and saved[key] != getattr(opt, key, saved[key]):
            raise UsageError(f"--resume: the checkpoint has {key}={saved[key]} but this run asks for {getattr(opt, key)}: drop --{key} or start a new run")
    # Each process resumes its own random state and its own share of the epoch, which exist only for
    # the number of processes that wrote the checkpoint.
    size = checkpoint.get("world_size", 1)
    if size != GROUP.size:
        raise UsageError(
            f"--resume {opt.resume} was trained by {size} process(es) ({size} x {saved['batch_size']} images per step) and this launch has {GROUP.size}: "
            f"continue it with {size} ({_launch_command(size, 1 if size == 1 else checkpoint.get('machines', 1))} {script}.py --resume ...), or start a new run"
        )
    return checkpoint


def _format(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def _checkpoint_path(path):
    path = Path(path).expanduser()
    return path / "checkpoint.pt" if path.is_dir() else path


def load_checkpoint(path):
    """Read a checkpoint written by Run.save_checkpoint (a run folder or the .pt file itself)."""
    path = _checkpoint_path(path)
    if not path.exists():
        raise UsageError(f"--resume {path}: no such checkpoint; pass a run folder or its checkpoint.pt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file can fail in many ways inside torch.load
        previous = path.with_name("checkpoint.prev.pt")
        hint = f"; the previous checkpoint {previous} may still be good" if previous.exists() and previous != path else ""
        raise UsageError(f"--resume {path} is not a readable checkpoint ({_first_line(error)}){hint}")
    if not isinstance(checkpoint, dict) or "args" not in checkpoint or "step" not in checkpoint:
        raise UsageError(f"--resume {path} is not a checkpoint written by these scripts")
    return checkpoint


def save_grid(images, path, nrow=8):
    """Save images in [-1, 1] as one PNG grid (under torchrun, rank 0 alone writes)."""
    if not is_main():
        return
    from torchvision.utils import save_image

    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)


# --------------------------------------------------------------------------------------------------
# Sample quality: FID and an offline classifier measure
# --------------------------------------------------------------------------------------------------
def add_evaluation_args(parser):
    """The flags that score samples, write fakes and log to TensorBoard: the same in every script."""
    parser.add_argument("--fid", action="store_true", help="score the fakes at the end by FID against the training data (pytorch-fid's InceptionV3, 2048-d pool features; its weights are downloaded on first use)")
    parser.add_argument("--fcd", action="store_true", help="score the fakes at the end by the Frechet distance in the features of a small classifier trained once on the labelled training data, with the share of confident fakes and the classes they cover: no download (digits, mnist, fashion, class folders)")
    parser.add_argument("--fid_interval", type=positive_int, help="with --fid or --fcd, also score every this many generator steps (default: only at the end)")
    parser.add_argument("--fid_samples", type=positive_int, default=10000, help="fakes per score; the real side uses as many training images, at most the whole data set")
    parser.add_argument("--fid_weights", help="a local copy of pytorch-fid's Inception weights (%s), for machines without network" % FID_WEIGHTS)
    parser.add_argument("--save_fakes", type=nonnegative_int, default=0, help="at the end, write this many fakes as PNG files into <run>/fakes (per class for cgan), for `python -m pytorch_fid <run>/fakes <real images>`")
    parser.add_argument("--generate", type=positive_int, help="with --resume: write this many fakes from the checkpoint into <run>/fakes and exit without training")
    parser.add_argument("--tensorboard", action="store_true", help="also log the metrics and sample grids for TensorBoard into <run>/tensorboard (needs `pip install tensorboard`)")


# pytorch-fid downloads its Inception weights from FID_WEIGHTS_URL into torch.hub's cache.
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS
# Inception's 2048-d pool features, the FID of the literature (pytorch-fid also offers 64, 192 and 768).
FID_DIMS = 2048

# A classifier probability at least this high counts a fake as a confident, recognisable member of a class.
CONFIDENT = 0.9


def frechet_distance(stats_a, stats_b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians (mu, S) fitted to features."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():  # a singular covariance (few samples) is handled inside, with an offset
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


def feature_stats(features):
    features = features.double().cpu().numpy()
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fakes(generate, n, batch_size, seed, device):
    """Yield (images, labels) batches of `generate(count, rng)` until n fakes: from a noise stream of
    their own (the same at every call), so scoring leaves the training's random numbers untouched."""
    rng = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            images, labels = generate(min(batch_size, n - start), rng)
            # Quantised to 8 bits, as the PNG files that pytorch-fid would read.
            yield images.clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1), labels


class FeatureClassifier(torch.nn.Module):
    """A small CNN for --fcd: its 64 pooled features stand in for Inception's where labels exist."""

    def __init__(self, channels, n_classes):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(64, n_classes)

    def forward(self, images):
        return self.head(self.features(images))


class Evaluator:
    """--fid and --fcd: scores for the fakes against the training data, each a Frechet distance
    between Gaussians fitted to features of real and fake images (lower is better).
    - fid: pytorch-fid's InceptionV3 pool features, the number papers report; needs its weights.
    - fcd: the features of a small classifier trained on the real labelled data, with `confident`
      (the share of fakes it assigns a class with p >= 0.9) and `classes` (how many classes those
      cover). No download; meaningful where a classifier separates the classes well (digits).
    The nets and the real statistics are built before training (so a missing download fails at
    once) and cached beside the data: <data_root>/fid_stats, or <folder>_fid_stats for a folder."""

    def __init__(self, opt, data, device):
        self.opt, self.data, self.device = opt, data, device
        self.enabled = opt.fid or opt.fcd
        self.scores = {}
        if not self.enabled or not is_main():  # under torchrun, rank 0 alone scores (see score)
            return
        root = Path(opt.data_root).expanduser().resolve()
        self.cache = root.with_name(root.name + "_fid_stats") if opt.dataset == "folder" else root / "fid_stats"
        self.n_real = min(opt.fid_samples, len(data) // opt.batch_size * opt.batch_size)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # leave training's random numbers as they were
            if opt.fcd:
                self.classifier, self.fcd_stats = self._classifier()
            if opt.fid:
                self.inception = inception_model(opt.fid_weights, device)
                self.fid_stats = self._inception_stats()

    def __bool__(self):
        return bool(self.enabled)

    def _cached(self, kind, suffix):
        """The cache file for `kind` of this data set and size, or None where the cache cannot be written."""
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"warning: cannot cache scoring statistics in {self.cache} ({error.strerror}): they are recomputed each run", file=sys.stderr)
            return None
        return self.cache / f"{kind}_{self.data.name}_{self.data.img_size}x{self.data.channels}{suffix}"

    def _real_batches(self, n):
        batches = Batches(self.data, self.opt.batch_size, self.device, seed=0, n_workers=self.opt.n_cpu, shard=False)
        return (images for _, (images, _) in zip(range(n // self.opt.batch_size), batches.epoch(0)))

    def _inception_stats(self):
        path = self._cached(f"inception{FID_DIMS}", f"_{self.n_real}.npz")
        if path and path.exists():
            with np.load(path) as stats:
                return stats["mu"], stats["sigma"]
        print(f"FID: Inception statistics of {self.n_real} real images, once", file=sys.stderr)
        stats = feature_stats(torch.cat([self.inception_features(images) for images in self._real_batches(self.n_real)]))
        if path:
            np.savez(path, mu=stats[0], sigma=stats[1])  # pytorch-fid's own .npz layout
        return stats

    def inception_features(self, images):
        with torch.no_grad():
            rgb = images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images
            # Pooled to one vector per image as pytorch-fid does (the 2048-d block is pooled already).
            return F.adaptive_avg_pool2d(self.inception((rgb + 1) / 2)[0], 1).flatten(1)

    def _classifier(self):
        data = self.data
        if data.labels is None or data.n_classes < 2:
            raise UsageError(f"--fcd needs labelled data with at least two classes and {data.name} has none: use --fid, or a folder with one sub-folder per class")
        if data.images is None:
            raise UsageError(f"--fcd trains its classifier in memory and {data.name} is too large to hold there: use --fid")
        torch.manual_seed(0)  # inside fork_rng: the same classifier whatever the run's --seed
        classifier = FeatureClassifier(data.channels, data.n_classes).to(self.device)
        path = self._cached("classifier", ".pt")
        if path and path.exists():
            saved = torch.load(path, map_location=self.device, weights_only=False)
            classifier.load_state_dict(saved["classifier"])
            return classifier.eval(), (saved["mu"], saved["sigma"])
        classifier, accuracy = train_classifier(classifier, data, self.device)
        print(f"FCD: trained a classifier on {len(data)} {data.name} images once: {accuracy:.1%} accurate on a held-out tenth", file=sys.stderr)
        with torch.no_grad():
            stats = feature_stats(torch.cat([classifier.features(images) for images in self._real_batches(self.n_real)]))
        if path:
            torch.save(dict(classifier=classifier.state_dict(), mu=stats[0], sigma=stats[1], accuracy=accuracy, classes=data.classes), path)
        return classifier, stats

    def score(self, generate, step):
        """The scores of `generate(n, rng) -> (images in [-1, 1], labels or None)` at `step`; computed
        once per step. Under torchrun every process draws the fakes, as each forward of G through
        SyncBatchNorm (--sync_bn) needs them all, and rank 0 alone scores them: the others get {}."""
        if step not in self.scores:
            features, inception, counts = [], [], torch.zeros(self.data.n_classes or 1)
            for images, _ in fakes(generate, self.opt.fid_samples, self.opt.batch_size, self.opt.seed, self.device):
                if not is_main():
                    continue
                if self.opt.fcd:
                    with torch.no_grad():
                        features.append(self.classifier.features(images))
                        probabilities = self.classifier.head(features[-1]).softmax(1)
                    confident, predicted = probabilities.max(1)
                    counts += torch.bincount(predicted[confident >= CONFIDENT].cpu(), minlength=len(counts))
                if self.opt.fid:
                    inception.append(self.inception_features(images))
            scores = {}
            if is_main() and self.opt.fid:
                scores["fid"] = frechet_distance(feature_stats(torch.cat(inception)), self.fid_stats)
            if is_main() and self.opt.fcd:
                scores["fcd"] = frechet_distance(feature_stats(torch.cat(features)), self.fcd_stats)
                scores["confident"] = counts.sum().item() / self.opt.fid_samples
                scores["classes"] = int((counts > 0).sum())
            self.scores[step] = scores
        return self.scores[step]


    def save_fakes(self, generate, n, folder):
        """Write n fakes as PNG files into `folder` (one sub-folder per class when `generate` gives
        labels), the input pytorch-fid's command line expects; returns the folder. Under torchrun,
        every process draws the fakes (see score) and rank 0 alone writes them."""
        written = 0
        for images, labels in fakes(generate, n, self.opt.batch_size, self.opt.seed, self.device):
            if not is_main():
                continue
            pixels = images.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for index, array in enumerate(pixels):
                target = folder / self.data.classes[int(labels[index])] if labels is not None else folder
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(target / f"{written:06d}.png")
                written += 1
        return folder


def train_classifier(classifier, data, device, steps=1200, batch_size=64):
    """Fit the --fcd classifier on nine tenths of the data (seeded); returns it in eval mode and its
    accuracy on the tenth held out."""
    rng = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=rng)
    held_out, train = order[: len(data) // 10], order[len(data) // 10:]
    images = data.images.to(device)
    labels = data.labels.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    classifier.train()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=rng)].to(device)
        loss = F.cross_entropy(classifier(Batches._to_float(images[batch])), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    classifier.eval()
    with torch.no_grad():
        correct = sum((classifier(Batches._to_float(images[i])).argmax(1) == labels[i]).sum().item() for i in held_out.to(device).split(256))
    return classifier, correct / max(len(held_out), 1)


def inception_model(weights, device):
    """pytorch-fid's InceptionV3 (FID_DIMS features), from torch.hub's cache, a download, or
    --fid_weights; one clear line when none of these works."""
    from pytorch_fid.inception import InceptionV3

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    hub_dir = torch.hub.get_dir()
    try:
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise UsageError(f"--fid_weights {path}: no such file; pass the path of {FID_WEIGHTS} (from {FID_WEIGHTS_URL})")
            with tempfile.TemporaryDirectory() as folder:
                # pytorch-fid loads from torch.hub's cache by file name: show it the local copy there.
                (Path(folder) / "checkpoints").mkdir()
                (Path(folder) / "checkpoints" / FID_WEIGHTS).symlink_to(path.resolve())
                torch.hub.set_dir(folder)
                model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]])
        else:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]])
    except OSError as error:  # urllib's URLError included: offline, or the download failed
        raise UsageError(
            f"--fid needs pytorch-fid's Inception weights {FID_WEIGHTS} and could not download them ({_first_line(error)}): "
            f"put the file from {FID_WEIGHTS_URL} into {cache}, or pass --fid_weights PATH to a local copy"
        )
    except (RuntimeError, pickle.UnpicklingError, KeyError) as error:
        raise UsageError(f"{weights or cache / FID_WEIGHTS} is not pytorch-fid's Inception weights ({_first_line(error)}): download {FID_WEIGHTS_URL} again")
    finally:
        torch.hub.set_dir(hub_dir)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
# The panels of losses.png: title, the metrics.csv columns drawn in it, log scale (True, False, or
# "auto": when the values span more than a factor 30). A panel appears when one of its columns has
# values, so every script gets the panels of what it logs.
PLOT_PANELS = (
    ("losses", ("loss_D", "loss_G", "L_x"), False),
    ("mean discriminator output", ("D_x", "D_G_z"), False),
    ("critic's estimate of the Wasserstein distance", ("W_estimate",), False),
    ("BEGAN's balance k_t", ("k_t",), False),
    ("BEGAN's convergence measure M", ("M",), False),
    ("critic gradient norm ||grad_x D||", ("grad_norm_real", "grad_norm_fake", "grad_norm"), True),
    ("FCD (classifier features; lower is better)", ("fcd",), "auto"),
    ("FID (Inception features; lower is better)", ("fid",), "auto"),
)
PLOT_LABELS = {"D_x": "D(x)", "D_G_z": "D(G(z))", "grad_norm_real": "at real data", "grad_norm_fake": "at fakes", "grad_norm": "at interpolates (penalised)"}
# progress.gif shows at most GIF_FRAMES sample grids, spread evenly over the run, and fewer when the
# grids are large: GIF compresses generated images poorly (about a byte per pixel), so GIF_PIXELS
# (pixels of all frames together) keeps the file near 3 MB.
GIF_FRAMES, GIF_PIXELS = 60, 3_000_000


def metrics_series(run_dir, x="step"):
    """metrics.csv as {column: (x values, values)}, each column against column `x`, skipping blank
    cells (evaluation columns are filled only at evaluation steps) and rows cut short by a live run."""
    series = {}
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            try:
                at = float(row.get(x) or "nan")
            except ValueError:
                continue
            for column, text in row.items():
                if column in (None, x) or not text:
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                xs, ys = series.setdefault(column, ([], []))
                xs.append(at)
                ys.append(value)
    return {column: (np.array(xs), np.array(ys)) for column, (xs, ys) in series.items()}


def moving_average(steps, values, points=50):
    """The mean of each window of about len(values) / points entries, at the window's last step:
    per-step losses are noise up close."""
    window = len(values) // points
    if window < 2:
        return steps, values
    return steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")


def loss_panels(columns):
    """The panels of losses.png for a run that logged `columns`: (title, its columns, log scale)."""
    panels = [(title, [c for c in names if c in columns], log) for title, names, log in PLOT_PANELS]
    return [panel for panel in panels if panel[1]]


def save_plots(run_dir):
    """Draw a run's losses.png (its metrics over the steps) and progress.gif (its sample grids as an
    animation) into `run_dir`; returns the paths written. Called at the end of every run, and by
    `python compare.py --plot RUN_DIR` at any time. A problem costs one warning line, never the run."""
    run_dir, written, problems = Path(run_dir), [], []
    for name, draw in (("progress.gif", _draw_progress), ("losses.png", _draw_losses)):
        try:
            if draw(run_dir, run_dir / name):
                written.append(run_dir / name)
        except ImportError as error:
            problems.append(f"no {name}: {_first_line(error)} (pip install matplotlib)")
        except (OSError, ValueError, csv.Error) as error:  # unreadable or unwritable files
            problems.append(f"no {name}: {_first_line(error)}")
    if problems:
        print(f"warning: {'; '.join(problems)}", file=sys.stderr)
    return written


def _draw_losses(run_dir, path):
    if not (run_dir / "metrics.csv").exists():
        return False
    series = metrics_series(run_dir)
    panels = loss_panels(series)
    if not panels:
        return False
    # The object-oriented API without pyplot renders with Agg and leaves the caller's backend alone;
    # imported here so that the scripts do not pay for matplotlib until a run ends.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1.2 + 2.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, columns, log) in zip(axes, panels):
        for column in columns:
            steps, values = series[column]
            label = PLOT_LABELS.get(column, column)
            if len(values) <= 50:  # evaluations, or a short run: every point
                ax.plot(steps, values, "o-", markersize=3, label=label)
            else:
                line, = ax.plot(steps, values, linewidth=0.5, alpha=0.3)
                ax.plot(*moving_average(steps, values), color=line.get_color(), label=f"{label} (moving average)")
        ax.set_title(title, fontsize=10, loc="left")
        values = np.concatenate([series[column][1] for column in columns])
        if log is True or (log == "auto" and values.min() > 0 and values.max() > 30 * values.min()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("generator step")
    fig.suptitle(run_dir.name, fontsize=10)
    fig.savefig(path, dpi=100)
    return True


def _draw_progress(run_dir, path):
    from PIL import ImageDraw, ImageFont

    grids = sorted((int(p.stem), p) for p in (run_dir / "samples").glob("*.png") if p.stem.isdigit())
    if not grids:
        return False
    with Image.open(grids[-1][1]) as last:
        size = last.size
    count = min(len(grids), GIF_FRAMES, max(8, GIF_PIXELS // (size[0] * size[1])))
    font, frames = ImageFont.load_default(), []
    for index in np.unique(np.linspace(0, len(grids) - 1, count).round().astype(int)):
        step, file = grids[index]
        with Image.open(file) as img:
            grid = img.convert("RGB")
        frame = Image.new("RGB", (size[0], size[1] + 14), "white")  # a strip above the grid for the step
        frame.paste(grid.resize(size) if grid.size != size else grid, (0, 14))
        ImageDraw.Draw(frame).text((3, 1), f"step {step}", fill="black", font=font)
        frames.append(frame)
    pause = int(np.clip(6000 / len(frames), 100, 500))  # about six seconds in all, then linger on the last grid
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[pause] * (len(frames) - 1) + [2000], loop=0)
    return True


# --------------------------------------------------------------------------------------------------
# Interrupts and errors
# --------------------------------------------------------------------------------------------------
class GracefulInterrupt:
    """While active, Ctrl-C (SIGINT) and SIGTERM (what `kill` and job schedulers send) only set
    `requested`, so the loop can finish its step and save a checkpoint; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signalled = False

    @property
    def requested(self):
        """Whether any process was signalled. torchrun passes a Ctrl-C or SIGTERM on to every process,
        which may each see it at a different step; asking all of them makes them stop after the same one."""
        return any_process(self.signalled)

    def __enter__(self):
        self._previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signalled:
            raise KeyboardInterrupt
        self.signalled = True
        if is_main():
            print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint (again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@contextlib.contextmanager
def friendly_errors():
    """Report UsageError (exit 2), Diverged (exit 1) and CUDA out-of-memory with a hint (exit 1), no
    traceback; under torchrun, leave the process group after a run that completed."""
    prog = Path(sys.argv[0]).name
    try:
        yield
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except Diverged as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except torch.OutOfMemoryError:
        print(f"{prog}: error: out of GPU memory: pass a smaller --batch_size (or --img_size)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    _leave_group()

