"""Folders of image files, for --dataset folder and anime and cogan's --domain_b folder; common.py
imports it only for them (and this module nothing of common's). A folder is decoded into memory where it
fits (by worker processes when it holds many files) and streamed from its files where it does not.
torchvision's ImageFolder needs a folder per class and stops at the first bad file; here a flat folder is
one unlabelled class and an unreadable file (truncated, not an image, a decompression bomb) is skipped
with a warning."""

import os
import sys

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IN_MEMORY_LIMIT = 4 * 2**30  # decoded data up to this many bytes is held in memory; larger folders stream
MAX_PIXELS = 100_000_000  # a file of more pixels is skipped as unreadable: no photo, or a decompression bomb


class UsageError(Exception):
    """A problem the user can fix (an empty or unreadable folder): the script prints it in one line."""


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def image_files(folder):
    """The image files below `folder` (any nesting), sorted, without hidden files and folders."""
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    return [p for p in paths if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()]


def load(folder, img_size, channels, labelled):
    """A folder of images, its sub-folders classes in ImageFolder's layout when `labelled`, as the fields of
    common.ImageData: `images` decoded into memory where they fit (by workers when many; else None, streamed),
    `files`, `labels` (or None) and `classes`, unreadable files skipped."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled &= bool(subfolders) and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())
    files, labels = [], []
    for index, sub in enumerate(subfolders if labelled else [folder]):
        if not (found := image_files(sub)):
            raise UsageError(f"no images in {sub} (any nesting, {' '.join(IMAGE_EXTENSIONS)}): add some or remove it")
        files, labels = files + found, labels + [index] * len(found)
    classes = [sub.name for sub in subfolders] if labelled else []
    labels = torch.tensor(labels) if labelled else None
    if len(files) * channels * img_size**2 > IN_MEMORY_LIMIT:
        return dict(images=None, files=files, labels=labels, classes=classes)
    workers = min(os.cpu_count() or 1, 8) if len(files) > 2000 else 0
    decoded = list(torch.utils.data.DataLoader(Decoder(files, img_size, channels), 256, num_workers=workers))
    keep = torch.cat([indices for _, indices in decoded])
    bad = [files[-1 - i] for i in keep[keep < 0].tolist()]
    if len(bad) == len(files):
        raise UsageError(f"none of the {len(bad)} image files under {folder} could be read (first: {bad[0]})")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image file(s) of {len(files)}; first: {bad[0]}", file=sys.stderr)
    images, keep = torch.cat([images for images, _ in decoded])[keep >= 0], keep[keep >= 0]
    return dict(
        images=images, files=[files[i] for i in keep], labels=labels[keep] if labelled else None, classes=classes
    )


def open_image(path, img_size, channels):
    """One file as uint8 C x size x size: grey or RGB, shorter side resized, center-cropped."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is more than the {MAX_PIXELS:,} pixels allowed")
        img.draft("L" if channels == 1 else "RGB", (img_size, img_size))
        img.load()
    if img.mode.startswith("I"):  # 16 or 32-bit grey: scaled to 8 bits
        img = img.point(lambda value, scale=255 / max(img.getextrema()[1], 1): value * scale).convert("L")  # noqa: B008
    if "A" in img.mode or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    img = TF.resize(img.convert("L" if channels == 1 else "RGB"), img_size, TF.InterpolationMode.BICUBIC)
    return TF.pil_to_tensor(TF.center_crop(img, img_size))


class Decoder(torch.utils.data.Dataset):
    """(image, index) of a file; unreadable: (zeros, -1 - index), or streaming the next readable file."""

    def __init__(self, files, img_size, channels, replace=False):
        self.files, self.img_size, self.channels, self.replace = files, img_size, channels, replace

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        for at in [i % len(self) for i in range(index, index + len(self) if self.replace else index + 1)]:
            try:
                return open_image(self.files[at], self.img_size, self.channels), at
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                if self.replace:
                    print(f"warning: skipped {self.files[at]}: {first_line(error)}", file=sys.stderr)
        return torch.zeros(self.channels, self.img_size, self.img_size, dtype=torch.uint8), -1 - index
