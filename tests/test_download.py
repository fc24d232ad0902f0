"""core.data.download: all-or-nothing fetching, tested against a local HTTP server only."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from core.data.dataset import prepare_dataset
from core.data.download import DownloadError, download_oxford_pets, ensure_oxford_pets, looks_complete
from core.data.synthetic import generate_synthetic


def _tar_gz(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def data_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """images.tar.gz and annotations.tar.gz of a tiny dataset in the official layout."""
    src = generate_synthetic(tmp_path_factory.mktemp("src") / "set", n_images=6, image_size=32, seed=1)
    files = {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}
    return {
        "images.tar.gz": _tar_gz({k: v for k, v in files.items() if k.startswith("images/")}),
        "annotations.tar.gz": _tar_gz({k: v for k, v in files.items() if k.startswith("annotations/")}),
    }


class _Server:
    """A local HTTP server: routes map a path to bytes, or to ("truncate", bytes) / ("hang", seconds)."""

    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.requests: list[str] = []
        routes, requests = self.routes, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if isinstance(route, tuple) and route[0] == "hang":
                    time.sleep(route[1])
                    return
                truncate = isinstance(route, tuple) and route[0] == "truncate"
                body = route[1] if truncate else route
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) * 2 if truncate else len(body)))
                self.end_headers()
                self.wfile.write(body)
                if truncate:
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pets/"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def serve(self, archives: dict[str, bytes]) -> dict[str, str]:
        for name, data in archives.items():
            self.routes[f"/pets/{name}"] = data
        return {name: _md5(data) for name, data in archives.items()}


@pytest.fixture
def data_server(monkeypatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = _Server()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _assert_failed_cleanly(excinfo: pytest.ExceptionInfo, parent: Path, pattern: str) -> None:
    message = str(excinfo.value)
    assert pattern in message, message
    assert "\n" not in message
    assert f"put images/ and annotations/ from the Oxford-IIIT Pet release under {parent / 'pets'}" in message
    assert list(parent.iterdir()) == []  # no root, no temporary debris


def test_download_with_correct_checksums_gives_a_loadable_root(data_server, data_archives, tmp_path: Path) -> None:
    checksums = data_server.serve(data_archives)
    root = download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, checksums, progress=False)
    assert root == tmp_path / "dl" / "pets" and looks_complete(root)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["pets"]
    d = prepare_dataset(root, 16, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert len(d.infos) == 6 and d.skipped == [] and d.source == "oxford-pets"


def test_checksum_mismatch_fails_and_leaves_nothing(data_server, data_archives, tmp_path: Path) -> None:
    checksums = data_server.serve(data_archives)
    checksums["annotations.tar.gz"] = "0" * 32
    (tmp_path / "dl").mkdir()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, checksums, progress=False)
    _assert_failed_cleanly(e, tmp_path / "dl", "checksum mismatch for " + data_server.url + "annotations.tar.gz")


def test_connection_dropped_mid_body_fails_and_leaves_nothing(data_server, data_archives, tmp_path: Path) -> None:
    data_server.serve(data_archives)
    data_server.routes["/pets/images.tar.gz"] = ("truncate", data_archives["images.tar.gz"])
    (tmp_path / "dl").mkdir()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, {}, progress=False)
    _assert_failed_cleanly(e, tmp_path / "dl", "connection dropped after")


def test_http_404_fails(data_server, data_archives, tmp_path: Path) -> None:
    data_server.serve({"images.tar.gz": data_archives["images.tar.gz"]})
    (tmp_path / "dl").mkdir()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, {}, progress=False)
    _assert_failed_cleanly(e, tmp_path / "dl", "HTTP 404")


def test_unreachable_server_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "dl").mkdir()
    start = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", f"http://127.0.0.1:{port}/", progress=False)
    assert time.monotonic() - start < 10
    _assert_failed_cleanly(e, tmp_path / "dl", "cannot reach http://127.0.0.1")


def test_silent_server_times_out(data_server, tmp_path: Path) -> None:
    data_server.routes["/pets/images.tar.gz"] = ("hang", 3.0)
    (tmp_path / "dl").mkdir()
    start = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, {}, timeout=0.5, progress=False)
    assert time.monotonic() - start < 2.5
    _assert_failed_cleanly(e, tmp_path / "dl", "timed out")


@pytest.mark.parametrize(
    "archive, pattern",
    [
        (_tar_gz({"../escaped.txt": b"x"}), "unsafe member"),
        (_tar_gz({}, symlinks={"annotations/evil": "/etc/passwd"}), "unsafe member"),
        (b"this is not a gzip file", "bad archive"),
    ],
)
def test_bad_or_unsafe_archives_fail(data_server, data_archives, tmp_path: Path, archive: bytes, pattern: str) -> None:
    data_server.serve({**data_archives, "annotations.tar.gz": archive})
    (tmp_path / "dl").mkdir()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, {}, progress=False)
    _assert_failed_cleanly(e, tmp_path / "dl", pattern)
    assert not (tmp_path / "escaped.txt").exists()


def test_archives_without_the_layout_fail(data_server, tmp_path: Path) -> None:
    data_server.serve({"images.tar.gz": _tar_gz({"images/a.jpg": b"x"}), "annotations.tar.gz": _tar_gz({"README": b"x"})})
    (tmp_path / "dl").mkdir()
    with pytest.raises(DownloadError) as e:
        download_oxford_pets(tmp_path / "dl" / "pets", data_server.url, {}, progress=False)
    _assert_failed_cleanly(e, tmp_path / "dl", "do not contain annotations/trimaps, annotations/trainval.txt, annotations/test.txt")


def test_non_empty_root_is_left_alone(data_server, tmp_path: Path) -> None:
    (tmp_path / "pets").mkdir()
    (tmp_path / "pets" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="already exists and is not empty"):
        download_oxford_pets(tmp_path / "pets", data_server.url, {}, progress=False)
    assert data_server.requests == [] and (tmp_path / "pets" / "notes.txt").read_text() == "mine"


def test_ensure_returns_a_complete_root_without_network(data_server, data_archives, tmp_path: Path) -> None:
    checksums = data_server.serve(data_archives)
    root = ensure_oxford_pets(tmp_path / "pets", data_server.url, checksums, progress=False)
    assert len(data_server.requests) == 2
    assert ensure_oxford_pets(root, data_server.url, checksums, progress=False) == root
    assert len(data_server.requests) == 2


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every name lookup and outgoing connection fails, and is counted."""
    tried: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        tried.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return tried


def test_no_folder_named_means_the_synthetic_set_and_no_network(monkeypatch, tmp_path: Path) -> None:
    from core.data.sources import load_data

    monkeypatch.setenv("SEGSWEEP_CACHE", str(tmp_path / "cache"))
    tried = _no_network(monkeypatch)
    lines: list[str] = []
    ds = load_data("auto", None, 32, synthetic_images=12, log=lines.append)
    assert ds.source == "synthetic" and len(ds.images) == 12
    assert tried == [] and not [line for line in lines if "download" in line.lower() or "warning" in line]
    assert not (tmp_path / "cache" / "data" / "oxford-iiit-pet").exists()


def test_oxford_pets_is_downloaded_only_when_asked_and_fails_in_one_line(monkeypatch, tmp_path: Path) -> None:
    from core.data.dataset import DataError
    from core.data.sources import load_data

    monkeypatch.setenv("SEGSWEEP_CACHE", str(tmp_path / "cache"))
    tried = _no_network(monkeypatch)
    with pytest.raises(DataError) as err:
        load_data("oxford-pets", None, 32, log=lambda _msg: None)
    assert tried and "\n" not in str(err.value)
