"""Scores for a generator's samples, imported by common.Run only when --fid, --fcd, --save_fakes or
--generate asks for it. Each score is a Frechet distance between Gaussians fitted to features of real
and of fake images (lower is better):
    fid  pytorch-fid's InceptionV3 pool features (2048-d), the number papers report; needs its weights.
    fcd  the 64 features of a small classifier trained once on the labelled training data, with
         `confident` (the share of fakes it gives a class with p >= 0.9) and `classes` (how many classes
         those cover): no download; meaningful where a classifier tells the classes apart (digits).
The nets and the real statistics are built before training, so that a missing download fails at once,
and cached beside the data (<data_root>/fid_stats, or <folder>_fid_stats), as tensors only: a cache,
like a checkpoint, is read with weights_only=True and can never run code.
"""

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import common

# pytorch-fid downloads its Inception weights from FID_WEIGHTS_URL into torch.hub's cache.
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS
FID_DIMS = 2048  # the pool features of the literature (pytorch-fid also offers 64, 192 and 768)
CONFIDENT = 0.9  # a classifier probability this high counts a fake as a recognisable member of a class


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


def train_classifier(classifier, data, device, steps=1200, batch_size=64):
    """Fit the --fcd classifier on nine tenths of the data (seeded); returns it in evaluation mode and
    its accuracy on the tenth held out."""
    rng = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=rng)
    held_out, train = order[: len(data) // 10], order[len(data) // 10 :]
    images, labels = data.images.to(device).float().div(127.5).sub(1), data.labels.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=rng)].to(device)
        loss = F.cross_entropy(classifier(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        held_out = held_out.to(device)
        correct = sum((classifier.eval()(images[i]).argmax(1) == labels[i]).sum().item() for i in held_out.split(256))
    return classifier, correct / max(len(held_out), 1)


def inception(weights, device):
    """pytorch-fid's InceptionV3 from torch.hub's cache, a download, or --fid_weights; one line if none works."""
    from pytorch_fid.inception import InceptionV3

    hub = torch.hub.get_dir()
    try:
        with tempfile.TemporaryDirectory() as folder:
            if weights:  # pytorch-fid loads from torch.hub's cache by file name: show it the local copy there
                if not Path(weights).expanduser().is_file():
                    raise common.UsageError(f"--fid_weights {weights}: no such file; pass the path of {FID_WEIGHTS}")
                (Path(folder) / "checkpoints").mkdir()
                (Path(folder) / "checkpoints" / FID_WEIGHTS).symlink_to(Path(weights).expanduser().resolve())
                torch.hub.set_dir(folder)
            return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]]).to(device).eval()
    except OSError as error:  # urllib's URLError too: offline, or the download failed
        raise common.UsageError(
            f"--fid needs pytorch-fid's Inception weights {FID_WEIGHTS} and could not download them "
            f"({common.first_line(error)}): put {FID_WEIGHTS_URL} in {Path(hub) / 'checkpoints'} or pass --fid_weights"
        )
    except (RuntimeError, KeyError, ValueError) as error:
        raise common.UsageError(
            f"{weights or FID_WEIGHTS} is not pytorch-fid's Inception weights ({common.first_line(error)})"
        )
    finally:
        torch.hub.set_dir(hub)


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


class Scorer:
    """--fid, --fcd, --save_fakes and --generate for one run (see the module's docstring)."""

    def __init__(self, opt, data, device):
        self.opt, self.data, self.device = opt, data, device
        if not (opt.fid or opt.fcd) or not common.is_main():  # under torchrun, rank 0 alone scores
            return
        root = Path(opt.data_root).expanduser().resolve()
        self.cache = root.with_name(root.name + "_fid_stats") if opt.dataset == "folder" else root / "fid_stats"
        self.n_real = min(opt.fid_samples, len(data) // opt.batch_size * opt.batch_size)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # training's noise stays
            torch.manual_seed(0)  # the same classifier, whatever the run's --seed
            if opt.fcd:
                self.classifier, self.fcd_stats = self._classifier()
            if opt.fid:
                self.inception = inception(opt.fid_weights, device)
                self.fid_stats = self._cached("inception", lambda: statistics(self._real(self.inception_features)))

    def _cached(self, kind, compute):
        """What compute() returns (a dict or tuple of tensors), kept in the cache when it can be written."""
        path = self.cache / f"{kind}_{self.data.name}_{self.data.img_size}x{self.data.channels}_{self.n_real}.pt"
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - an old pickle or a broken file: computed anew
                print(f"warning: recomputing {path} ({common.first_line(error)})", file=sys.stderr)
        value = compute()
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            torch.save(value, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        except OSError as error:
            print(f"warning: cannot cache {path} ({error.strerror}): recomputed each run", file=sys.stderr)
        return value

    def _real(self, features):
        """The features of n_real training images."""
        batches = iter(common.Batches(self.data, self.opt.batch_size, self.device, 0, self.opt.n_cpu, shard=False))
        return torch.cat([features(next(batches)[0]) for _ in range(self.n_real // self.opt.batch_size)])

    def inception_features(self, images):
        with torch.no_grad():  # pooled to one vector per image, as pytorch-fid does
            rgb = images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images
            return F.adaptive_avg_pool2d(self.inception((rgb + 1) / 2)[0], 1).flatten(1)

    def _classifier(self):
        data = self.data
        if data.labels is None or data.n_classes < 2:
            raise common.UsageError(
                f"--fcd needs labelled data of two classes or more, and {data.name} has none: use --fid"
            )
        if data.images is None:
            raise common.UsageError(f"--fcd trains its classifier in memory and {data.name} is too large: use --fid")
        classifier = FeatureClassifier(data.channels, data.n_classes).to(self.device)

        def fit():
            net, accuracy = train_classifier(classifier, data, self.device)
            print(f"FCD: trained a classifier on {len(data)} images once: {accuracy:.1%} accurate", file=sys.stderr)
            with torch.no_grad():
                mu, sigma = statistics(self._real(net.features))
            return dict(classifier=net.state_dict(), mu=mu, sigma=sigma, accuracy=torch.tensor(accuracy))

        saved = self._cached("classifier", fit)
        classifier.load_state_dict(saved["classifier"])
        return classifier.eval(), (saved["mu"], saved["sigma"])

    def fakes(self, generator, fakes, n):
        """Batches of (images, labels) until n fakes, from a noise stream of their own (the same each time,
        leaving training's untouched), quantised to 8 bits as the PNG files pytorch-fid would read."""
        rng = torch.Generator(self.device).manual_seed(self.opt.seed)
        with common.evaluating(generator) as net:
            for start in range(0, n, self.opt.batch_size):
                images, labels = fakes(net, min(self.opt.batch_size, n - start), rng)
                yield images.clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1), labels

    def score(self, run, step, generator, fakes):
        """The scores of the generator at `step`, as a row of scores.csv and in run.scores."""
        if not common.is_main():
            return
        features, inception, counts = [], [], torch.zeros(self.data.n_classes or 1)
        for images, _ in self.fakes(generator, fakes, self.opt.fid_samples):
            if self.opt.fcd:
                with torch.no_grad():
                    features.append(self.classifier.features(images))
                    confident, predicted = self.classifier.head(features[-1]).softmax(1).max(1)
                counts += torch.bincount(predicted[confident >= CONFIDENT].cpu(), minlength=len(counts))
            if self.opt.fid:
                inception.append(self.inception_features(images))
        scores = {"fid": frechet_distance(statistics(torch.cat(inception)), self.fid_stats)} if self.opt.fid else {}
        if self.opt.fcd:
            scores["fcd"] = frechet_distance(statistics(torch.cat(features)), self.fcd_stats)
            scores.update(confident=counts.sum().item() / self.opt.fid_samples, classes=int((counts > 0).sum()))
        run.scores, run.scored_at = scores, step
        run.append("scores.csv", dict(step=step, **scores, seconds=run.seconds))
        if run.tensorboard:
            run.tensorboard.scalars("score", step, scores)
        print(f"step {step}  " + "  ".join(f"{name} {value:.4g}" for name, value in scores.items()))

    def finish(self, run, generator, fakes):
        """At the end of training: the scores at the last step (unless scored there), then --save_fakes."""
        if (self.opt.fid or self.opt.fcd) and getattr(run, "scored_at", None) != run.step:
            self.score(run, run.step, generator, fakes)
        if self.opt.save_fakes:
            self.write_fakes(run, generator, fakes, self.opt.save_fakes)

    def write_fakes(self, run, generator, fakes, n):
        """n fakes as PNG files in <run>/fakes (a folder per class where they have labels), the input of
        `python -m pytorch_fid <run>/fakes <real images>`; returns the run."""
        written, folder = 0, run.dir / "fakes"
        for images, labels in self.fakes(generator, fakes, n) if common.is_main() else ():
            pixels = images.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for index, array in enumerate(pixels):
                target = folder / self.data.classes[int(labels[index])] if labels is not None else folder
                target.mkdir(parents=True, exist_ok=True)
                with run.writing(f"fakes/{written:06d}.png"):
                    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(
                        target / f"{written:06d}.png"
                    )
                written += 1
        print(f"wrote {n} fakes into {folder}")
        return run
