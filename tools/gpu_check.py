"""The GPU check: on one CUDA GPU, within 9 minutes,
  (a) dcgan, wgan and wgan_gp trained on the anime faces at their defaults with --swd --save_fakes 1000;
  (b) tools/bench.py for all seven scripts at 64x64x3 (the digits, upscaled: cgan needs labels) in float32, with
      --amp and with --amp --compile, in one run;
  (c) everything under OUT_DIR, and what the docs need (bench tables, logs, scores, metrics, the last grids) in
      OUT_DIR/gpu_check.tar.gz, one file of a few MB.
Each part runs in a process of its own under a time limit; one that runs over is stopped as Ctrl-C stops it
(training saves its checkpoint) and the check goes on. parts.txt says how each part ended.

    python tools/gpu_check.py OUT_DIR --faces FOLDER    # FOLDER: the anime faces, 64x64 or larger
    python tools/gpu_check.py --smoke OUT_DIR           # the same parts for a few steps on the CPU, in this process
                                                        # and with --compile a no-op (the tests run it)
"""

import argparse
import contextlib
import importlib
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the scripts
sys.path.insert(0, str(ROOT / "tools"))  # bench.py, also when this file is not run as a program


def parts(opt):
    """(name, seconds allowed, program, arguments) of each part."""
    bench = ["--device", "cuda", "--dataset", "digits", "--img_size", "64", "--script_args=--channels 3"]
    train = ["--device", "cuda", "--dataset", "folder", "--data_root", str(opt.faces), "--swd", "--save_fakes", "1000"]
    limits = dict(dcgan=90, wgan=90, wgan_gp=110, bench=230)  # 520 s: within 9 minutes with the processes' starts
    if opt.smoke:
        tiny = "--channels 3 --latent_dim 8 --ngf 8 --ndf 8"
        bench = ["--device", "cpu", "--dataset", "digits", "--img_size", "16", "--batch_size", "16", "--steps", "2"]
        bench += ["--warmup", "1", "--matmul_size", "64", "--in_process", "--scripts", "dcgan", "wgan_gp"]
        bench += [f"--script_args={tiny}"]
        train = ["--device", "cpu", "--dataset", "digits", "--img_size", "16", *tiny.split(), "--n_iters", "2"]
        train += ["--swd", "--fid_samples", "1024", "--save_fakes", "8"]
    out = opt.out_dir
    for script in ("dcgan", "wgan", "wgan_gp"):  # first: the anime defaults are what the docs most need
        yield f"train_{script}", limits[script], ROOT / f"{script}.py", [*train, "--out", str(out / "runs")]
    yield "bench", limits["bench"], ROOT / "tools" / "bench.py", [*bench, "--json", str(out / "bench.json")]


def in_process(program, argv, log):
    """The part in this process (--smoke): its exit code, its output in `log`."""
    import torch._dynamo

    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        with torch._dynamo.config.patch(disable=True):  # --compile's path runs, without minutes of compiling
            try:
                imported = importlib.import_module(program.stem)
                imported.main(argv) if program.stem == "bench" else imported.train(imported.parse_args(argv))
            except SystemExit as exit:
                return exit.code or 0
            except Exception as error:  # noqa: BLE001 - a part that fails is reported, and the check goes on
                print(f"{type(error).__name__}: {error}")
                return 1
    return 0


def in_a_process(program, argv, log, limit):
    """The part as a program under `limit` seconds (then SIGINT, as Ctrl-C: a checkpoint, then the end; bench.py
    keeps the rows it measured)."""
    with open(log, "w") as f:
        process = subprocess.Popen([sys.executable, str(program), *argv], stdout=f, stderr=f, cwd=ROOT)
        try:
            return process.wait(limit)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
            return "stopped at its limit"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="where everything goes")
    parser.add_argument("--faces", type=Path, help="the anime faces' folder (not with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on the CPU, in this process")
    opt = parser.parse_args(argv)
    if not opt.smoke and not (opt.faces and opt.faces.is_dir()):
        parser.error("--faces: pass the folder of the anime faces (the training data of part b)")
    opt.out_dir.mkdir(parents=True, exist_ok=True)
    if not opt.smoke:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
        (opt.out_dir / "gpu.csv").write_text(subprocess.run(query, capture_output=True, text=True).stdout)
    report = []
    for name, limit, program, args in parts(opt):
        start, log = time.perf_counter(), opt.out_dir / f"{name}.log"
        ended = in_process(program, args, log) if opt.smoke else in_a_process(program, args, log, limit)
        report.append(f"{name}: exit {ended} in {time.perf_counter() - start:.0f} s")
        print(report[-1], flush=True)
    (opt.out_dir / "parts.txt").write_text("\n".join(report) + "\n")
    with tarfile.open(opt.out_dir / "gpu_check.tar.gz", "w:gz") as archive:
        for path in sorted(opt.out_dir.glob("*.*")) + sorted(opt.out_dir.glob("runs/*/*.*")):
            if path.suffix in (".txt", ".log", ".json", ".md", ".csv"):
                archive.add(path, str(path.relative_to(opt.out_dir)))
        for run in sorted(opt.out_dir.glob("runs/*/")):
            if grids := sorted(run.glob("samples/[0-9]*.png")):
                archive.add(grids[-1], str(grids[-1].relative_to(opt.out_dir)))
    print(f"everything in {opt.out_dir}; the figures in {opt.out_dir / 'gpu_check.tar.gz'}")
    return 0 if all(": exit 0 in" in line for line in report) else 1


if __name__ == "__main__":
    sys.exit(main())
