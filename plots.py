"""Pictures of a run, imported only where they are drawn: losses.png (the metrics over the steps) and
progress.gif (the sample grids as an animation) at the end of a run and by `python tools/compare.py --plot
RUN`, the latent walks of --interpolate, and the TensorBoard log of --tensorboard. A run copied without
this file trains all the same. common.py imports it; it imports nothing of common's.
"""

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image


class UsageError(Exception):
    """A problem the user can fix (tensorboard missing): the script prints it in one line."""


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
    ("class balance: K x the rarest class's share of the fakes (1: even; 0: one missing)", ("balance",), False),
    ("FID (Inception features; lower is better)", ("fid",), "auto"),
)
PLOT_LABELS = {
    "D_x": "D(x)",
    "D_G_z": "D(G(z))",
    "grad_norm_real": "at real data",
    "grad_norm_fake": "at fakes",
    "grad_norm": "at interpolates (penalised)",
}
# progress.gif shows at most GIF_FRAMES sample grids, spread evenly over the run, and fewer when the
# grids are large: GIF compresses generated images poorly (about a byte per pixel), so GIF_PIXELS
# (pixels of all frames together) keeps the file near 3 MB.
GIF_FRAMES, GIF_PIXELS = 60, 3_000_000


def metrics_series(run_dir, x="step"):
    """metrics.csv and scores.csv as {column: (x values, values)}, each column against column `x`,
    skipping blank cells and a last row that a live run has not finished writing."""
    series = {}
    for name in ("metrics.csv", "scores.csv"):
        if not (Path(run_dir) / name).exists():
            continue
        lines = (Path(run_dir) / name).read_text().splitlines(keepends=True)
        rows = csv.DictReader(lines if not lines or lines[-1].endswith("\n") else lines[:-1])  # the last one cut short
        for row in rows:
            try:
                at = float(row.get(x) or "nan")
            except ValueError:
                continue
            for column, text in row.items():
                if column in (None, x) or not text or (name == "scores.csv" and column in ("step", "seconds")):
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
    return steps[window - 1 :], np.convolve(values, np.ones(window) / window, mode="valid")


def loss_panels(columns):
    """The panels of losses.png for a run that logged `columns`: (title, its columns, log scale)."""
    panels = [(title, [c for c in names if c in columns], log) for title, names, log in PLOT_PANELS]
    return [panel for panel in panels if panel[1]]


def save_plots(run_dir):
    """Draw a run's losses.png (its metrics over the steps) and progress.gif (its sample grids as an
    animation) into `run_dir`; returns the paths written. Called at the end of every run, and by
    `python tools/compare.py --plot RUN_DIR` at any time. A problem costs one warning line, never the run."""
    run_dir, written, problems = Path(run_dir), [], []
    for name, draw in (("progress.gif", _draw_progress), ("losses.png", _draw_losses)):
        try:
            if draw(run_dir, run_dir / name):
                written.append(run_dir / name)
        except ImportError as error:
            problems.append(f"no {name}: {first_line(error)} (pip install matplotlib)")
        except (OSError, ValueError, csv.Error) as error:  # unreadable or unwritable files
            problems.append(f"no {name}: {first_line(error)}")
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
                (line,) = ax.plot(steps, values, linewidth=0.5, alpha=0.3)
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


def slerp(a, b, t):
    """Spherical interpolation from a (t = 0) to b (t = 1) along the arc between them (White 2016, "Sampling
    Generative Networks"): Gaussian z lie near a sphere of radius sqrt(latent_dim), and a straight line between
    two of them passes nearer the origin than any z G was trained on. torch has lerp, not slerp."""
    omega = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1).arccos()[..., None]
    arc = (((1 - t) * omega).sin() * a + (t * omega).sin() * b) / omega.sin()
    return torch.where(omega.sin() > 1e-6, arc, torch.lerp(a, b, t))  # a, b (anti)parallel: no arc, a line


def interpolate(run, generator, z, n_classes=0):
    """--resume RUN --interpolate K: walks of K frames from z[i] to z[8 + i], i < 8, drawn by `generator` in
    evaluation mode, as <run>/interpolation.png, a row a walk (cgan, given `n_classes`: a row a class along
    the first walk; cogan: both domains side by side), and interpolation.gif, a frame a step of every walk
    (cgan: a row a class), there and back; returns the run."""
    walks = slerp(z[:8], z[8:16], torch.linspace(0, 1, run.opt.interpolate, device=z.device)[:, None, None])
    labels = torch.arange(n_classes, device=z.device).repeat_interleave(8)  # cgan: class k in row k of a frame
    frames, training = [], generator.training
    with torch.no_grad():
        generator.eval()  # running statistics: an image depends on its own z alone
        for z_t in walks:  # a frame: each walk at the same point
            images = generator(z_t.repeat(n_classes, 1), labels) if n_classes else generator(z_t)
            images = torch.stack(images, 1).flatten(0, 1) if isinstance(images, tuple) else images  # cogan's pairs
            frames.append(images.float().cpu())
        generator.train(training)
    frames = torch.stack(frames)  # K frames x images x C x H x W
    rows = frames.unflatten(1, (n_classes, 8))[:, :, :1] if n_classes else frames.unflatten(1, (8, -1))
    png, gif = run.dir / "interpolation.png", run.dir / "interpolation.gif"
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # under torchrun, rank 0 writes
        with run.writing(png.name):  # a row: its K frames (cogan: K pairs) left to right
            strips = rows.transpose(0, 1).flatten(0, 2)
            save_image(strips, png, nrow=rows.size(0) * rows.size(2), normalize=True, value_range=(-1, 1))
        grids = [make_grid(frame, nrow=8, normalize=True, value_range=(-1, 1)) for frame in frames]
        pictures = [Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()) for grid in grids]
        pause = int(np.clip(3000 / len(pictures), 40, 250))  # about three seconds each way
        with run.writing(gif.name):  # there and back again: the loop has no jump
            pictures[0].save(gif, save_all=True, append_images=pictures[1:] + pictures[-2:0:-1], duration=pause, loop=0)
    print(f"latent walks of {len(frames)} frames at step {run.step}: {png} and {gif}")
    return run


class TensorBoard:
    """--tensorboard: the metrics, scores and sample grids for TensorBoard, in <run>/tensorboard."""

    def __init__(self, folder):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
        self.writer = SummaryWriter(folder)

    def scalars(self, group, step, values):
        for name, value in values.items():
            self.writer.add_scalar(f"{group}/{name}", value, step)

    def grid(self, step, images):
        self.writer.add_image("samples", make_grid(images.float().cpu(), normalize=True, value_range=(-1, 1)), step)

    def __enter__(self):  # the run closes it at its end, or when it stops
        return self

    def __exit__(self, *error):
        self.writer.close()
