"""What tools/compare.py and tools/bench.py share: the scripts they run, their command line (the data, and
--script_args, more flags for all the scripts or for one, with common.ArgumentParser's one-line errors), the machine
they ran on, and a script's error line."""

import argparse
import contextlib
import os
import platform
import re
import shlex
import sys

import torch

import common

SCRIPTS = ("dcgan", "lsgan", "cgan", "cogan", "wgan", "wgan_gp", "began")


class ToolParser(argparse.ArgumentParser):
    """A tool's parser: one-line errors (exit code 2) and no abbreviations, without the scripts' per-data-set and
    --resume defaults; --scripts, --dataset, --data_root, --img_size and --script_args already added."""

    error = common.ArgumentParser.error

    def __init__(self, prog, description, verb):
        super().__init__(prog=prog, description=description, allow_abbrev=False)
        arg = self.add_argument
        arg(
            "--scripts",
            nargs="+",
            choices=SCRIPTS,
            default=list(SCRIPTS),
            metavar="SCRIPT",
            help=f"the scripts to {verb}, in this order (default: all of {', '.join(SCRIPTS)})",
        )
        arg("--dataset", choices=common.DATASETS, default="digits", help="training images, as for the scripts")
        arg("--data_root", default="data", help="where data sets are kept; with --dataset folder, the folder itself")
        arg("--img_size", type=common.positive_int, help="the image size of every script (default: the data set's)")
        arg(
            "--script_args",
            action="append",
            default=[],
            metavar="[SCRIPT:]FLAGS",
            help="more flags for the scripts: "
            "'--latent_dim 32' for all of them, 'began: --h_dim 32' for one; repeatable",
        )

    def parse(self, argv, own_flags, hint=""):
        """The options, with .argv (the command line, for the results) and .extra, {script: [flags]} from
        --script_args; a flag in `own_flags`, which the tool sets itself, is refused with `hint`."""
        opt = self.parse_args(argv)
        opt.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        try:
            opt.extra = self.split_script_args(opt.script_args, own_flags, hint)
        except common.UsageError as error:
            self.error(str(error))
        return opt

    def split_script_args(self, texts, own_flags, hint):
        """Each text is '[SCRIPT:] FLAGS', flags for one script or, without a prefix, for all; an unknown script,
        unbalanced quotes or a flag in `own_flags` (or an abbreviation of one) raise UsageError."""
        extra = {script: [] for script in SCRIPTS}
        for text in texts:
            match = re.match(r"\s*(\w+):(?!\S)(.*)$", text, re.S)
            if match and match.group(1) not in SCRIPTS:
                known = ", ".join(SCRIPTS)
                raise common.UsageError(
                    f"--script_args {text!r}: {match.group(1)!r} is not a script; choose one of {known}"
                )
            try:
                flags = shlex.split(match.group(2) if match else text)
            except ValueError as error:
                raise common.UsageError(f"--script_args {text!r}: {error}")
            for name in (flag.split("=")[0] for flag in flags):
                own = [own for own in own_flags if own == name] or [
                    own for own in own_flags if name.startswith("--") and len(name) > 2 and own.startswith(name)
                ]
                if own:
                    raise common.UsageError(f"--script_args: {self.prog} sets {own[0]} itself{hint}")
            for script in [match.group(1)] if match else SCRIPTS:
                extra[script] += flags
        return extra


def machine(device):
    """The machine: CPU, cores, torch threads and GPU (on CUDA); torch, Python and the system."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__)
    info.update(python=platform.python_version(), system=platform.system())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info):
    """machine() in words."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['threads']} torch threads{gpu}; torch {info['torch']}, "
        f"Python {info['python']}, {info['system']}"
    )


def error_line(text):
    """The last line of a script's error output that is not a progress bar, without its 'NAME: error: '."""
    lines = [line.strip() for line in re.split(r"[\r\n]", text)]
    lines = [line for line in lines if line and not re.search(r"\d+/\d+ \[", line)]  # tqdm: '12/28 [00:03<...'
    return re.sub(r"^\S+: error: ", "", lines[-1]) if lines else None
