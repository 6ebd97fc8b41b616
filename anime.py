"""--dataset anime: download the anime faces and unpack them, imported by common.load_images only when
<data_root>/anime holds no images. torchvision's own helpers do not fit: its check_integrity knows only
MD5 and download_url cannot resume, so this keeps a SHA-256 check and a resumable download of its own.
"""

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

import common

# A CC0 copy of the Kaggle "Anime Face Dataset" on the Hugging Face hub, pinned to one commit so that the
# checksum holds. A plain zip: Python unpacks it with no extra package.
ANIME_URL = (
    "https://huggingface.co/datasets/huggan/anime-faces/resolve/67ebcf8c69b45feb3883d695f04227078a6c9da9/data.zip"
)
ANIME_SHA256 = "b50c3f2e1bbad0d119f8c5748a0d01138cb56152fb8997ce5c8b139129bf3c23"
ANIME_HELP = (
    "download {url} (or the Kaggle 'Anime Face Dataset', kaggle.com/datasets/splcher/animefacedataset) "
    "and unpack its images into {folder} (any nesting), or train on faces you have with "
    "--dataset folder --data_root DIR"
)


def fetch(folder):
    """Download the anime faces and unpack them into `folder`, or fail with the manual steps.
    The archive is fetched as <name>.part (resumed if a previous try was cut off), checked against
    ANIME_SHA256, renamed, then unpacked beside `folder` and moved into place: no half-written
    folder is ever left behind."""
    archive = folder.with_name("anime-faces.zip")
    manual = ANIME_HELP.format(url=ANIME_URL, folder=folder)
    if folder.is_dir() and any(folder.iterdir()):  # never unpack over (or delete) the user's own files
        raise common.UsageError(f"{folder} holds no images but is not empty: {manual}")
    print(f"{folder} holds no images: downloading the anime faces (462 MB) from {ANIME_URL}", file=sys.stderr)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not archive.exists():
            download(ANIME_URL, ANIME_SHA256, archive)
        unpack_zip(archive, folder)
    except (OSError, zipfile.BadZipFile) as error:  # urllib's errors are OSErrors
        partial = archive.with_name(archive.name + ".part")
        kept = f"; the partial download {partial} resumes on the next try" if partial.exists() else ""
        raise common.UsageError(f"could not download the anime faces ({common.first_line(error)}){kept}: {manual}")
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
            with (
                open(partial, "ab" if have else "wb") as f,
                tqdm(
                    total=have + size or None, initial=have, unit="B", unit_scale=True, desc=f"downloading {dest.name}"
                ) as bar,
            ):
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
        raise OSError(
            f"the download is corrupt (SHA-256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}...) and was deleted"
        )
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
