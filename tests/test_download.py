"""--dataset anime's download, against a loopback HTTP server the test starts: no live network."""

import hashlib
import http.server
import io
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

import anime
import common


class ArchiveServer(http.server.BaseHTTPRequestHandler):
    """Serves `payload` with Range support; `cut_after` bytes into a response it drops the connection;
    with `hold` set, it waits for `release` before sending (and sets `arrived`)."""

    payload, cut_after, requests, hold = b"", None, [], False
    arrived, release = threading.Event(), threading.Event()

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        type(self).requests.append(start)
        if self.hold:
            self.arrived.set()
            self.release.wait(30)
        if start >= len(self.payload):
            self.send_response(416)
            self.end_headers()
            return
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            type(self).cut_after, body = None, body[: self.cut_after]  # cut once, like a dropped line
            self.wfile.write(body)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def face_zip(count=4, extra=()):
    """A zip of `count` small PNG faces under images/, plus (name, bytes) entries `extra`."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for i in range(count):
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(png, "PNG")
            zipped.writestr(f"images/{i}.png", png.getvalue())
        for name, data in extra:
            zipped.writestr(name, data)
    return buffer.getvalue()


def serve(monkeypatch, payload):
    """The server's archive from now on, pinned as ANIME_SHA256."""
    ArchiveServer.payload, ArchiveServer.cut_after, ArchiveServer.requests = payload, None, []
    monkeypatch.setattr(anime, "ANIME_SHA256", hashlib.sha256(payload).hexdigest())


@pytest.fixture
def server(monkeypatch):
    """A loopback server with a small zip of faces; ANIME_URL and ANIME_SHA256 point at it."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(anime, "ANIME_URL", f"http://127.0.0.1:{httpd.server_port}/data.zip")
    serve(monkeypatch, face_zip())
    ArchiveServer.hold = False
    ArchiveServer.arrived.clear()
    ArchiveServer.release.clear()
    yield ArchiveServer
    ArchiveServer.release.set()
    httpd.shutdown()
    httpd.server_close()


def left(root):
    """What a download left in the data root, beside its lock file."""
    return sorted(p.name for p in root.iterdir() if p.name != "anime.lock")


def test_download_verify_unpack(server, tmp_path):
    data = common.load_images("anime", tmp_path, 16, 3)
    assert data.images.shape == (4, 3, 16, 16)
    assert left(tmp_path) == ["anime"]  # no archive, no partial file, no staging folder left
    assert common.load_images("anime", tmp_path, 16, 3).images.shape == (4, 3, 16, 16)
    assert server.requests == [0]  # the second load found the images and downloaded nothing


def test_corrupt_download_is_deleted(server, monkeypatch, tmp_path):
    monkeypatch.setattr(anime, "ANIME_SHA256", "0" * 64)
    with pytest.raises(anime.UsageError, match="download is corrupt .* was deleted") as error:
        common.load_images("anime", tmp_path, 16, 3)
    assert "\n" not in str(error.value) and anime.ANIME_URL in str(error.value)
    assert left(tmp_path) == []


def test_interrupted_download_resumes(server, tmp_path):
    server.cut_after = 100
    with pytest.raises(anime.UsageError, match="partial download .* resumes on the next try"):
        common.load_images("anime", tmp_path, 16, 3)
    assert not (tmp_path / "anime").exists()
    assert (tmp_path / "anime-faces.zip.part").stat().st_size == 100
    assert common.load_images("anime", tmp_path, 16, 3).images.shape == (4, 3, 16, 16)
    assert server.requests == [0, 100]  # the second try asked only for the rest


def test_offline_gives_the_manual_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(anime, "ANIME_URL", "http://127.0.0.1:9/data.zip")  # nothing listens on port 9
    with pytest.raises(anime.UsageError, match=r"could not download the anime faces.*Anime Face Dataset.*anime") as e:
        common.load_images("anime", tmp_path, 16, 3)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "anime").exists() and not (tmp_path / "anime-faces.zip.part").exists()


def test_non_empty_folder_without_images_is_left_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(anime, "ANIME_URL", "http://127.0.0.1:9/data.zip")
    (tmp_path / "anime").mkdir()
    (tmp_path / "anime" / "notes.txt").write_text("mine")
    with pytest.raises(anime.UsageError, match="holds no images but is not empty"):
        common.load_images("anime", tmp_path, 16, 3)
    assert (tmp_path / "anime" / "notes.txt").read_text() == "mine"


def test_a_second_run_waits_for_the_first_and_finds_its_images(server, tmp_path, capsys):
    """Two runs sharing the data root: the second waits on the lock, then finds the first's images and
    downloads nothing (without the lock it would write the same .part file and staging folder)."""
    server.hold, shapes = True, []
    first = threading.Thread(target=lambda: shapes.append(common.load_images("anime", tmp_path, 16, 3).images.shape))
    first.start()
    assert server.arrived.wait(30)  # the first run is downloading, holding the lock
    second = threading.Thread(target=lambda: shapes.append(common.load_images("anime", tmp_path, 16, 3).images.shape))
    second.start()
    said = ""
    for _ in range(300):  # until the second run says it waits for the lock (it does not download)
        said += capsys.readouterr().err
        if "waiting for another run fetching the anime faces" in said:
            break
        time.sleep(0.1)
    assert "waiting for another run" in said and server.requests == [0]
    server.release.set()
    first.join(30)
    second.join(30)
    assert shapes == [(4, 3, 16, 16)] * 2 and server.requests == [0]
    assert left(tmp_path) == ["anime"] and len(list((tmp_path / "anime").rglob("*.png"))) == 4


def test_without_fcntl_it_goes_on_unlocked(server, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows
    assert common.load_images("anime", tmp_path, 16, 3).images.shape == (4, 3, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anime"]


def test_a_foreign_archive_in_the_data_root_is_refused(server, tmp_path):
    (tmp_path / "anime-faces.zip").write_bytes(face_zip(count=2))  # not the pinned archive
    with pytest.raises(anime.UsageError, match="anime-faces.zip is not the anime faces .SHA-256 .*delete it") as e:
        common.load_images("anime", tmp_path, 16, 3)
    assert "\n" not in str(e.value) and server.requests == []
    assert left(tmp_path) == ["anime-faces.zip"]  # nothing unpacked; the file is left to its owner


def test_the_pinned_archive_found_in_the_data_root_is_unpacked(server, tmp_path):
    (tmp_path / "anime-faces.zip").write_bytes(server.payload)  # as a run cut short after its download leaves it
    assert common.load_images("anime", tmp_path, 16, 3).images.shape == (4, 3, 16, 16)
    assert server.requests == [] and left(tmp_path) == ["anime"]


@pytest.mark.parametrize(
    "limit, extra, refused",
    [
        ("MAX_FILE", [("images/bomb.bin", bytes(2**20))], "images/bomb.bin would unpack to 1,048,576 bytes"),
        ("MAX_UNPACKED", [(f"images/{i}.bin", bytes(2**17)) for i in range(8)], "it would unpack to 1,0"),
    ],
)
def test_an_archive_that_unpacks_too_large_is_refused(server, monkeypatch, tmp_path, limit, extra, refused):
    monkeypatch.setattr(anime, limit, 2**20 - 1)  # a megabyte of zeros compresses to a kilobyte
    serve(monkeypatch, face_zip(extra=extra))
    with pytest.raises(anime.UsageError, match=f"anime-faces.zip was not unpacked .{refused}") as e:
        common.load_images("anime", tmp_path, 16, 3)
    assert "\n" not in str(e.value) and left(tmp_path) == ["anime-faces.zip"]


def test_unsafe_zip_paths_are_refused(server, monkeypatch, tmp_path):
    serve(monkeypatch, face_zip(extra=[("../escape.png", b"x")]))
    with pytest.raises(anime.UsageError, match="was not unpacked .unsafe path '../escape.png'"):
        common.load_images("anime", tmp_path, 16, 3)
    assert not (tmp_path / "escape.png").exists() and left(tmp_path) == ["anime-faces.zip"]
