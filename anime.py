"""--dataset anime: download the anime faces and unpack them, imported by common.load_images only when
<data_root>/anime holds no images. torchvision's own helpers do not fit: its check_integrity knows only
MD5 and download_url cannot resume, so this keeps a SHA-256 check and a resumable download of its own.
Runs sharing a data root take turns (an OS lock beside the folder), and the archive, downloaded or found
there, is unpacked only once its SHA-256 is ANIME_SHA256, within size limits, and moved into place whole.
"""

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

import folders
from folders import UsageError, first_line  # common imports this module, never the reverse

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
# The most an archive may unpack to, in all and a file: the faces take about 0.5 GB, 10 kB a file; a zip
# bomb (a small archive that inflates to fill the disk) is refused before anything is written.
MAX_UNPACKED, MAX_FILE = 4 * 2**30, 64 * 2**20


def fetch(folder):
    """Download the anime faces and unpack them into `folder`, or fail with the manual steps.
    The archive is fetched as <name>.part (resumed if a previous try was cut off), checked against
    ANIME_SHA256, renamed, then unpacked beside `folder` and moved into place: no half-written
    folder is ever left behind. A second run waits for the first, then finds its images."""
    archive, manual = folder.with_name("anime-faces.zip"), ANIME_HELP.format(url=ANIME_URL, folder=folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with locked(folder.with_name("anime.lock")):
            if folder.is_dir() and any(folder.iterdir()):  # never unpack over (or delete) the user's own files
                if folders.image_files(folder):
                    return  # another run unpacked them while this one waited
                raise UsageError(f"{folder} holds no images but is not empty: {manual}")
            if not archive.exists():
                print(
                    f"{folder} holds no images: downloading the anime faces (462 MB) from {ANIME_URL}", file=sys.stderr
                )
                download(ANIME_URL, ANIME_SHA256, archive)
            elif (digest := sha256(archive)) != ANIME_SHA256:  # left by a run cut short, or someone else's
                raise UsageError(
                    f"{archive} is not the anime faces (SHA-256 {digest[:16]}..., expected {ANIME_SHA256[:16]}...): "
                    "delete it to download them again"
                )
            unpack_zip(archive, folder)
            archive.unlink()
    except zipfile.BadZipFile as error:
        raise UsageError(f"{archive} was not unpacked ({first_line(error)}): delete it; {manual}")
    except OSError as error:  # urllib's errors are OSErrors
        partial = archive.with_name(archive.name + ".part")
        kept = f"; the partial download {partial} resumes on the next try" if partial.exists() else ""
        raise UsageError(f"could not download the anime faces ({first_line(error)}){kept}: {manual}")


@contextlib.contextmanager
def locked(path):
    """An exclusive lock on the file `path` (created, and kept: deleting it would let a third run lock a
    new file while a second holds the old), waited for; the kernel drops it if the process dies. Where
    fcntl is missing (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run fetching the anime faces into {path.parent}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download(url, expected, dest):
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
    if (digest := sha256(partial)) != expected:
        partial.unlink()
        raise OSError(
            f"the download is corrupt (SHA-256 {digest[:16]}..., expected {expected[:16]}...) and was deleted"
        )
    os.replace(partial, dest)


def unpack_zip(archive, folder):
    """Unpack `archive` into `folder` through a staging folder of its own beside it, moved into place whole;
    refuses paths that leave it and more than MAX_UNPACKED bytes in all or MAX_FILE in a file (zipfile
    writes no more than the sizes its entries declare)."""
    with zipfile.ZipFile(archive) as zipped:
        entries = zipped.infolist()
        for entry in entries:
            if Path(entry.filename).is_absolute() or ".." in Path(entry.filename).parts:
                raise zipfile.BadZipFile(f"unsafe path {entry.filename!r}")
            if entry.file_size > MAX_FILE:
                raise zipfile.BadZipFile(
                    f"{entry.filename} would unpack to {entry.file_size:,} bytes, over {MAX_FILE:,}"
                )
        if (total := sum(entry.file_size for entry in entries)) > MAX_UNPACKED:
            raise zipfile.BadZipFile(f"it would unpack to {total:,} bytes, over the {MAX_UNPACKED:,} allowed")
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-unpacking-", dir=folder.parent))
        try:
            zipped.extractall(staging)
            staging.chmod(0o755)  # mkdtemp's folder is private to its owner
            if folder.is_dir():  # an empty folder the user made (fetch refuses a non-empty one)
                folder.rmdir()
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
