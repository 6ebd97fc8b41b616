"""Scores for a generator's samples, in the run's scores.csv; common.Run imports this module only when
--fid, --fcd, --save_fakes or --generate asks for it, and it imports nothing of common's. Each score is a
Frechet distance between Gaussians fitted to features of real and of fake images (lower is better):
    fid  pytorch-fid's InceptionV3 pool features (2048-d), the number papers report; needs its weights.
    fcd  the 64 features of a small classifier trained once on the labelled training data, with
         `confident` (the share of fakes it gives a class with p >= 0.9), `classes` (how many classes
         those cover), `balance` (K times the rarest class's share of them: 1 when all K are drawn
         alike, 0.5 when one is drawn at half its share, 0 when one is missing) and their count per
         class (class_<name>): no download; meaningful where a classifier tells the classes apart (digits).
And one distance between distributions of image patches, for any images and with no download:
    swd  the sliced Wasserstein distance between 7x7 neighbourhoods of the Laplacian-pyramid levels of real
         and fake images, from the training size down to 16x16 (Karras et al. 2018, "Progressive Growing of
         GANs", arXiv:1710.10196, appendix D), x 1e3 and averaged over the levels: fine texture, then coarser
         structure and colour. Fewer neighbourhoods and directions than the paper's (SWD_* below), so that a
         score takes seconds on a CPU; its figures are comparable with one another, not with the paper's.
The nets and real statistics are built before training (a missing download fails at once), the classifier
and Inception statistics cached beside the data (<data_root>/fid_stats, or <folder>_fid_stats). Nothing is
unpickled: caches and the Inception weights are read with weights_only=True.
"""

import csv
import hashlib
import io
import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

# pytorch-fid's Inception weights, downloaded into torch.hub's cache. Their name carries the first 8 hex digits
# of FID_SHA256 (torch.hub's convention), as pinned for this URL by snap-research/discoscene and others.
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS
FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_DIMS = 2048  # the pool features of the literature (pytorch-fid also offers 64, 192 and 768)
CONFIDENT = 0.9  # a classifier probability this high counts a fake as a recognisable member of a class
# --swd: the paper's 7x7 neighbourhoods and pyramid down to 16x16, with 8 neighbourhoods an image and 256
# directions where the paper takes 128 and 4 x 512: a 1-d Wasserstein distance is a sort, slow on a CPU.
SWD_NHOOD, SWD_MIN_SIZE, SWD_PER_IMAGE, SWD_DIRECTIONS = 7, 16, 8, 256
SWD_MIN_IMAGES = 1000  # fewer, and the distance of real images to other real ones is no longer small


class UsageError(Exception):
    """A problem the user can fix (no weights, unlabelled data...): the script prints it in one line."""


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def is_main():  # whether this process scores and writes: torchrun's rank 0, or the only one
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class FeatureClassifier(nn.Module):
    """A small CNN for --fcd: its 64 pooled features stand in for Inception's where labels exist."""

    def __init__(self, channels, n_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(64, n_classes)

    def forward(self, images):
        return self.head(self.features(images))


def train_classifier(data, device, steps=1200, batch_size=64):
    """A FeatureClassifier fitted (seeded) on 9/10 of the data, in evaluation mode, and its accuracy on the rest."""
    torch.manual_seed(0)
    classifier = FeatureClassifier(data.channels, data.n_classes).to(device)
    rng = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=rng)
    held_out, train = order[: len(data) // 10].to(device), order[len(data) // 10 :]
    images, labels = data.images.to(device).float().div(127.5).sub(1), data.labels.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=rng)].to(device)
        loss = F.cross_entropy(classifier(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        correct = sum((classifier.eval()(images[i]).argmax(1) == labels[i]).sum().item() for i in held_out.split(256))
    return classifier, correct / max(len(held_out), 1)


def inception(weights, device):
    """pytorch-fid's InceptionV3 (FID_DIMS features) with the weights of --fid_weights or torch.hub's cache
    (downloaded there once). pytorch-fid would unpickle them whole (torch.hub.load_state_dict_from_url):
    here a file whose SHA-256 is not FID_SHA256 is never read, and the right one with weights_only=True."""
    import pytorch_fid.inception as fid

    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS
    if weights and not path.is_file():
        raise UsageError(f"--fid_weights {weights}: no such file; pass the path of {FID_WEIGHTS}")
    try:
        if not path.exists():  # into a temporary file, checked against FID_SHA256, then renamed
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(path), hash_prefix=FID_SHA256)
        data = path.read_bytes()  # checked, then read from memory: no other file can take its place between
    except (OSError, RuntimeError) as error:  # offline (urllib's URLError), or other bytes than pinned
        raise UsageError(
            f"--fid needs pytorch-fid's Inception weights {FID_WEIGHTS} and could not download or read them "
            f"({first_line(error)}): put {FID_WEIGHTS_URL} into {path.parent}, or pass --fid_weights PATH"
        )
    if (digest := hashlib.sha256(data).hexdigest()) != FID_SHA256:
        fix = f"pass --fid_weights a copy of {FID_WEIGHTS_URL}" if weights else "delete it to download it again"
        raise UsageError(
            f"{path} is not pytorch-fid's Inception weights (SHA-256 {digest[:16]}..., not {FID_SHA256[:16]}...): {fix}"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        with mock.patch.object(fid, "load_state_dict_from_url", lambda *args, **kwargs: state):
            return fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]]).to(device).eval()
    except Exception as error:  # a pickle of more than tensors, or other tensors: never unpickled
        raise UsageError(f"{path} does not hold Inception weights ({_reason(error)}): pass {FID_WEIGHTS}")


def _reason(error):  # why torch.load(weights_only=True) or load_state_dict refused a file
    unsafe = isinstance(error, pickle.UnpicklingError)
    return "it holds Python objects, never unpickled here" if unsafe else first_line(error)


def frechet_distance(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians (mu, S) of features."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():  # a singular covariance (few samples) is handled inside, with an offset
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(a[0].numpy(), a[1].numpy(), b[0].numpy(), b[1].numpy()))


def statistics(features):
    """The mean and covariance of features (N x D), in float64 on the CPU."""
    features = features.double().cpu()
    return features.mean(0), torch.from_numpy(np.cov(features.numpy(), rowvar=False))


def laplacian_pyramid(images, min_size=SWD_MIN_SIZE):
    """The levels of each image's Laplacian pyramid (Burt & Adelson's 5-tap binomial filter, as cv2.pyrDown
    and pyrUp), finest first, down to the last size >= min_size, which keeps the low-pass image itself."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=images.device) / 16

    def blur(x):  # the 5x5 filter as two 1-d passes of shifted slices: far faster than a grouped conv on a CPU
        padded, (h, w) = F.pad(x, (2, 2, 2, 2), mode="reflect"), x.shape[-2:]
        rows = sum(tap * padded[..., i : i + h, :] for i, tap in enumerate(taps))
        return sum(tap * rows[..., j : j + w] for j, tap in enumerate(taps))

    levels = []
    while images.size(-1) // 2 >= min_size:
        down = blur(images)[..., ::2, ::2]
        up = torch.zeros_like(images)
        up[..., ::2, ::2] = down * 4  # the zeros between samples quarter the mean: pyrUp's factor 4
        levels.append(images - blur(up))
        images = down
    return levels + [images]


def neighbourhoods(images, rng):
    """SWD_PER_IMAGE random SWD_NHOOD^2 neighbourhoods of each pyramid level of each image, flattened:
    N*SWD_PER_IMAGE x levels x C*SWD_NHOOD^2 (positions from the CPU generator `rng`)."""
    descriptors, half, offsets = [], SWD_NHOOD // 2, torch.arange(SWD_NHOOD, device=images.device) - SWD_NHOOD // 2
    for level in laplacian_pyramid(images):
        n, c, h, w = level.shape
        y, x = (torch.randint(half, size - half, (n, SWD_PER_IMAGE, 1, 1), generator=rng) for size in (h, w))
        index = torch.arange(n)[:, None, None, None].to(images.device)
        patches = level[index, :, y.to(images.device) + offsets[:, None], x.to(images.device) + offsets]  # n m 7 7 c
        descriptors.append(patches.permute(0, 1, 4, 2, 3).flatten(2).flatten(0, 1))
    return torch.stack(descriptors, 1)


def sorted_projections(descriptors, directions):
    """Each level's descriptors, each channel scaled to mean 0 and deviation 1 over the whole set (the paper's
    normalisation), projected onto the unit `directions` and sorted: levels x directions x N."""
    channels = descriptors.view(*descriptors.shape[:2], -1, SWD_NHOOD**2)
    mean, std = channels.mean((0, 3), keepdim=True), channels.std((0, 3), keepdim=True).clamp_min(1e-8)
    normalised = ((channels - mean) / std).flatten(2).transpose(0, 1)  # levels x N x D
    return torch.stack([(directions.T @ level.T).sort(1).values for level in normalised])


class Scorer:
    """--fid, --fcd, --swd, --save_fakes and --generate for one run (see the module's docstring)."""

    def __init__(self, opt, data, device, real_batches):
        """`real_batches()`: a new stream of (images, labels) batches of the training data, in [-1, 1]."""
        self.opt, self.data, self.device, self.real_batches = opt, data, device, real_batches
        self.scored_at, self.scores = None, {}
        self.scoring = opt.fid or opt.fcd or opt.swd
        if not self.scoring or opt.generate or not is_main():  # under torchrun, rank 0 scores
            return
        root = Path(opt.data_root).expanduser().resolve()
        self.cache = root.with_name(root.name + "_fid_stats") if opt.dataset == "folder" else root / "fid_stats"
        self.tag = f"{data.name}_{data.img_size}x{data.channels}"
        self.n_real = min(opt.fid_samples, len(data) // opt.batch_size * opt.batch_size)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # training's noise stays
            if opt.fcd:
                self.classifier = self._classifier()
                with torch.no_grad():  # a second or two: not cached, so that it always fits the classifier
                    self.fcd_stats = statistics(self._real(self.classifier.features))
            if opt.fid:
                self.inception = inception(opt.fid_weights, device)
                name = f"inception{FID_DIMS}_{self.tag}_{self.n_real}"
                self.fid_stats = self._cached(name, lambda: statistics(self._real(self.inception_features)), _gaussian)
            if opt.swd:
                self.swd_real = self._swd_real()

    def _swd_real(self):
        """The real side of --swd: the directions (the same in every score) and the sorted projections of
        the real images' neighbourhoods, kept in memory (about 250 MB at 10,000 images of 64x64)."""
        n = self.n_real // self.opt.batch_size * self.opt.batch_size
        if n < SWD_MIN_IMAGES:
            raise UsageError(
                f"--swd compares {SWD_MIN_IMAGES} real images or more with as many fakes, and here it would have {n} "
                f"({len(self.data)} images, --fid_samples {self.opt.fid_samples}): use more images, or drop --swd"
            )
        directions = torch.randn(
            self.data.channels * SWD_NHOOD**2, SWD_DIRECTIONS, generator=torch.Generator().manual_seed(0)
        )
        self.directions = (directions / directions.norm(dim=0)).to(self.device)
        rng = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return sorted_projections(self._real(lambda images: neighbourhoods(images, rng)), self.directions)

    def _cached(self, name, compute, use):
        """use(compute()), its tensors kept in <cache>/<name>.pt, read with weights_only=True: a file that is
        unreadable, holds Python objects (a pickle could run code) or fails `use` costs a warning line."""
        path = self.cache / f"{name}.pt"
        if path.exists():
            try:
                return use(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as error:  # a broken, old or foreign file: replaced
                print(f"warning: recomputing {path}: {_reason(error)}", file=sys.stderr)
        value = compute()
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            torch.save(value, tmp := path.with_suffix(f".{os.getpid()}.tmp"))  # another run may write it too
            tmp.replace(path)
        except OSError as error:
            print(f"warning: cannot cache {path} ({error.strerror}): recomputed each run", file=sys.stderr)
        return use(value)

    def _real(self, features):
        """The features of n_real training images."""
        batches = iter(self.real_batches())
        return torch.cat([features(next(batches)[0]) for _ in range(self.n_real // self.opt.batch_size)])

    def inception_features(self, images):
        with torch.no_grad():  # pooled to one vector per image, as pytorch-fid does
            rgb = images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images
            return F.adaptive_avg_pool2d(self.inception((rgb + 1) / 2)[0], 1).flatten(1)

    def _classifier(self):
        data = self.data
        if data.labels is None or data.n_classes < 2:
            raise UsageError(f"--fcd needs labelled data, two classes or more; {data.name} has none: use --fid")
        if data.images is None:
            raise UsageError(f"--fcd trains its classifier in memory and {data.name} is too large: use --fid")

        def fit():
            trained, accuracy = train_classifier(data, self.device)
            print(f"FCD: trained a classifier on {len(data)} images once: {accuracy:.1%} accurate", file=sys.stderr)
            return dict(classifier=trained.state_dict(), accuracy=torch.tensor(accuracy))

        net = FeatureClassifier(data.channels, data.n_classes).to(self.device)  # all its weights are loaded
        self._cached(f"classifier_{self.tag}", fit, lambda saved: net.load_state_dict(saved["classifier"]))
        return net.eval()

    def fakes(self, generator, fakes, n):
        """Batches of (images, labels) until n fakes, from a noise stream of their own (the same each time,
        leaving training's untouched), quantised to 8 bits as the PNG files pytorch-fid would read."""
        rng, training = torch.Generator(self.device).manual_seed(self.opt.seed), generator.training
        generator.eval()  # running statistics: an image depends on its own z alone
        for start in range(0, n, self.opt.batch_size):
            with torch.no_grad():
                images, labels = fakes(generator, min(self.opt.batch_size, n - start), rng)
            yield images.clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1), labels
        generator.train(training)

    def measure(self, generator, fakes):
        """The scores of --fid_samples fakes: {name: value}."""
        features, pools, counts, patches = [], [], torch.zeros(self.data.n_classes or 1), []
        rng = torch.Generator().manual_seed(1)  # the same neighbourhoods of the same fakes at every score
        for images, _ in self.fakes(generator, fakes, self.opt.fid_samples):
            if self.opt.swd:
                patches.append(neighbourhoods(images, rng))
            if self.opt.fcd:
                with torch.no_grad():
                    features.append(self.classifier.features(images))
                    confident, predicted = self.classifier.head(features[-1]).softmax(1).max(1)
                counts += torch.bincount(predicted[confident >= CONFIDENT].cpu(), minlength=len(counts))
            if self.opt.fid:
                pools.append(self.inception_features(images))
        scores = {"fid": frechet_distance(statistics(torch.cat(pools)), self.fid_stats)} if self.opt.fid else {}
        if self.opt.fcd:
            scores["fcd"] = frechet_distance(statistics(torch.cat(features)), self.fcd_stats)
            scores.update(confident=counts.sum().item() / self.opt.fid_samples, classes=int((counts > 0).sum()))
            scores["balance"] = len(counts) * counts.min().item() / max(counts.sum().item(), 1)
            scores.update(zip(self.class_columns(), map(int, counts.tolist())))
        if self.opt.swd:  # the mean over directions of the 1-d distance between sorted projections, per level
            patches = torch.cat(patches)[: self.swd_real.size(-1)]  # as many fakes as real images
            distances = (sorted_projections(patches, self.directions) - self.swd_real).abs().mean((1, 2))
            scores["swd"] = distances.mean().item() * 1e3
        return scores

    def score(self, run, step, generator, fakes):
        """The scores at `step` as a row of <run>/scores.csv (and TensorBoard's), printed (rank 0 alone)."""
        if not is_main():
            return
        self.scores, self.scored_at = self.measure(generator, fakes), step
        run.append("scores.csv", dict(step=step, **self.scores, seconds=run.seconds))
        if run.tensorboard:
            run.tensorboard.scalars("score", step, self.scores)
        shown = {name: value for name, value in self.scores.items() if not name.startswith("class_")}  # csv only
        print(f"step {step}  " + "  ".join(f"{name} {value:.4g}" for name, value in shown.items()))

    def finish(self, run, generator, fakes):
        """At the end of training: the scores at the last step (unless scored there), then --save_fakes;
        returns the last scores, for summary.json."""
        if self.scoring and self.scored_at != run.step and not self._scored_before(run):
            self.score(run, run.step, generator, fakes)
        if self.opt.save_fakes:
            self.write_fakes(run, generator, fakes, self.opt.save_fakes)
        return self.scores

    def _scored_before(self, run):
        """Whether scores.csv ends at run.step with every score asked for (a finished run resumed as it is,
        as tools/compare.py does): then its scores are read back, not scored and written a second time."""
        path = run.dir / "scores.csv"
        rows = list(csv.DictReader(path.read_text().splitlines())) if is_main() and path.exists() else []
        fcd = ["fcd", "confident", "classes", "balance", *self.class_columns()] if self.opt.fcd else []
        names = ["fid"] * self.opt.fid + fcd + ["swd"] * self.opt.swd
        if not rows or rows[-1]["step"] != str(run.step) or not all(rows[-1].get(name) for name in names):
            return False
        whole = [name for name in names if name.startswith("class")]  # classes, and the counts class_<name>
        self.scores = {name: int(rows[-1][name]) if name in whole else float(rows[-1][name]) for name in names}
        self.scored_at = run.step
        return True

    def class_columns(self):
        """The per-class columns of --fcd: class_<name>, or class_<index> where a name would not make a plain one."""
        plain = all(re.fullmatch(r"[\w.-]+", name) for name in self.data.classes)
        return [f"class_{name if plain else index}" for index, name in enumerate(self.data.classes)]

    def write_fakes(self, run, generator, fakes, n):
        """n fakes as PNG files in <run>/fakes (a folder per class where they have labels), the input of
        `python -m pytorch_fid <run>/fakes <real images>`; returns the run."""
        written = 0
        for images, labels in self.fakes(generator, fakes, n) if is_main() else ():
            pixels = images.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for index, array in enumerate(pixels):
                folder = f"fakes/{self.data.classes[int(labels[index])]}" if labels is not None else "fakes"
                with run.writing(f"{folder}/{written:06d}.png") as path:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
                written += 1
        print(f"wrote {n} fakes into {run.dir / 'fakes'}")
        return run


def _gaussian(saved):  # cached Inception statistics: (mean, covariance) of FID_DIMS features
    if [tuple(tensor.shape) for tensor in saved] != [(FID_DIMS,), (FID_DIMS, FID_DIMS)]:
        raise ValueError(f"not the statistics of {FID_DIMS} features")
    return saved
