"""--dataset anime's download, against a loopback HTTP server the test starts: no live network."""

import hashlib
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

import common


class ArchiveServer(http.server.BaseHTTPRequestHandler):
    """Serves `payload` with Range support; `cut_after` bytes into a response it drops the connection."""

    payload, cut_after, requests = b"", None, []

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        type(self).requests.append(start)
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


def face_zip(count=4):
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w") as zipped:
        for i in range(count):
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(png, "PNG")
            zipped.writestr(f"images/{i}.png", png.getvalue())
    return buffer.getvalue()


@pytest.fixture
def server(monkeypatch):
    """A loopback server with a small zip of faces; ANIME_URL and ANIME_SHA256 point at it."""
    payload = face_zip()
    ArchiveServer.payload, ArchiveServer.cut_after, ArchiveServer.requests = payload, None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(common, "ANIME_URL", f"http://127.0.0.1:{httpd.server_port}/data.zip")
    monkeypatch.setattr(common, "ANIME_SHA256", hashlib.sha256(payload).hexdigest())
    yield ArchiveServer
    httpd.shutdown()
    httpd.server_close()


def test_download_verify_unpack(server, tmp_path):
    data = common.load_images("anime", tmp_path, 16, 3)
    assert data.images.shape == (4, 3, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anime"]  # no archive, no partial file left
    assert common.load_images("anime", tmp_path, 16, 3).images.shape == (4, 3, 16, 16)
    assert server.requests == [0]  # the second load found the images and downloaded nothing


def test_corrupt_download_is_deleted(server, monkeypatch, tmp_path):
    monkeypatch.setattr(common, "ANIME_SHA256", "0" * 64)
    with pytest.raises(common.UsageError, match="download is corrupt .* was deleted") as error:
        common.load_images("anime", tmp_path, 16, 3)
    assert "\n" not in str(error.value) and common.ANIME_URL in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes(server, tmp_path):
    server.cut_after = 100
    with pytest.raises(common.UsageError, match="partial download .* resumes on the next try"):
        common.load_images("anime", tmp_path, 16, 3)
    assert not (tmp_path / "anime").exists()
    assert (tmp_path / "anime-faces.zip.part").stat().st_size == 100
    assert common.load_images("anime", tmp_path, 16, 3).images.shape == (4, 3, 16, 16)
    assert server.requests == [0, 100]  # the second try asked only for the rest


def test_offline_gives_the_manual_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "ANIME_URL", "http://127.0.0.1:9/data.zip")  # nothing listens on port 9
    with pytest.raises(common.UsageError, match=r"could not download the anime faces.*Anime Face Dataset.*anime") as error:
        common.load_images("anime", tmp_path, 16, 3)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "anime").exists() and not (tmp_path / "anime-faces.zip.part").exists()


def test_non_empty_folder_without_images_is_left_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "ANIME_URL", "http://127.0.0.1:9/data.zip")
    (tmp_path / "anime").mkdir()
    (tmp_path / "anime" / "notes.txt").write_text("mine")
    with pytest.raises(common.UsageError, match="holds no images but is not empty"):
        common.load_images("anime", tmp_path, 16, 3)
    assert (tmp_path / "anime" / "notes.txt").read_text() == "mine"


def test_unsafe_zip_paths_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../escape.png", b"x")
    with pytest.raises(zipfile.BadZipFile, match="unsafe path"):
        common.unpack_zip(archive, tmp_path / "anime")
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "anime").exists()
