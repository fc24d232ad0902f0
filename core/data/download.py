"""Fetch the official Oxford-IIIT Pet archives into a dataset root, all or nothing.

Archives are streamed with urllib (progress bar from tqdm), checked against their MD5, unpacked
with tarfile's "data" filter (no absolute paths, no escaping the target, no device files) into
a temporary sibling of the root, checked for the expected layout and only then renamed into
place. Every failure raises DownloadError with a one-line message and leaves neither a partial
root nor temporary files behind.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from core.data.layout import IMAGES_DIR, SPLIT_LISTS, TRIMAPS_DIR

OFFICIAL_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
ARCHIVES = ("images.tar.gz", "annotations.tar.gz")
DEFAULT_CHECKSUMS = {  # MD5, the values torchvision uses
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
CHUNK = 1 << 20


class DownloadError(Exception):
    """The dataset could not be fetched; the message is one line meant for the user."""


def looks_complete(root: str | Path) -> bool:
    """True when root has the parts of the official layout that the loader needs."""
    root = Path(root)
    return (root / IMAGES_DIR).is_dir() and (root / TRIMAPS_DIR).is_dir() and all(
        (root / rel).is_file() for rel in SPLIT_LISTS)


def ensure_oxford_pets(
    root: str | Path,
    base_url: str = OFFICIAL_BASE_URL,
    checksums: dict[str, str] | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """root as is when it already holds the dataset, else download it there first."""
    root = Path(root).expanduser().resolve()
    if looks_complete(root):
        return root
    return download_oxford_pets(root, base_url, checksums, timeout, progress)


def download_oxford_pets(
    root: str | Path,
    base_url: str = OFFICIAL_BASE_URL,
    checksums: dict[str, str] | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download and unpack images.tar.gz and annotations.tar.gz from base_url into root.

    checksums maps archive name -> expected MD5 (default: the official ones); an archive
    missing from the mapping is not verified. timeout bounds connecting and each read.
    """
    root = Path(root).expanduser().resolve()
    checksums = DEFAULT_CHECKSUMS if checksums is None else checksums
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        _fail(f"{root} already exists and is not empty (move it away to download again)", root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.download-"))
    except OSError as exc:
        _fail(f"cannot create {root.parent} ({exc.strerror or exc})", root)
    try:
        extracted = work / "root"
        extracted.mkdir()
        for name in ARCHIVES:
            url = urllib.parse.urljoin(base_url if base_url.endswith("/") else base_url + "/", name)
            archive = work / name
            _fetch(url, archive, checksums.get(name), timeout, progress, root)
            _extract(archive, extracted, url, root)
            archive.unlink()
        missing = [p for p in (IMAGES_DIR, TRIMAPS_DIR, *SPLIT_LISTS) if not (extracted / p).exists()]
        if missing:
            _fail(f"the archives from {base_url} do not contain {', '.join(missing)}", root)
        try:
            if root.exists():
                root.rmdir()  # empty (checked above); a rename cannot replace a directory portably
            extracted.rename(root)
        except OSError as exc:
            _fail(f"cannot move the unpacked files to {root} ({exc.strerror or exc})", root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def _fail(what: str, root: Path) -> NoReturn:
    raise DownloadError(
        f"Oxford-IIIT Pet download failed: {what}; "
        f"put images/ and annotations/ from the Oxford-IIIT Pet release under {root}"
    )


def _resolve_within(host: str, port: int, timeout: float) -> None:
    """Resolve host with a deadline: getaddrinfo ignores socket timeouts and can hang offline."""
    done = threading.Event()
    error: list[BaseException] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, port)
        except BaseException as exc:  # reported to the caller below
            error.append(exc)
        done.set()

    threading.Thread(target=resolve, daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"resolving {host} took more than {timeout:g} s")
    if error:
        raise error[0]


def _uses_proxy(scheme: str, host: str) -> bool:
    """Whether urllib will go through an environment-configured proxy (which resolves the host)."""
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


def _fetch(url: str, dest: Path, md5: str | None, timeout: float, progress: bool, root: Path) -> None:
    """Stream url to dest, checking length and MD5."""
    parts = urllib.parse.urlsplit(url)
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        if parts.hostname and not _uses_proxy(parts.scheme, parts.hostname):
            _resolve_within(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise http.client.IncompleteRead(b"", total - received)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the open response
        _fail(f"HTTP {exc.code} {exc.reason} for {url}", root)
    except urllib.error.URLError as exc:
        _fail(f"cannot reach {url} ({_reason(exc.reason)})", root)
    except http.client.IncompleteRead as exc:
        expected = received + (exc.expected or 0)
        _fail(f"connection dropped after {received} of {expected} bytes of {url}", root)
    except (http.client.HTTPException, OSError) as exc:
        _fail(f"error while downloading {url} ({_reason(exc)})", root)
    if md5 is not None and digest.hexdigest() != md5.lower():
        _fail(f"checksum mismatch for {url} (MD5 {digest.hexdigest()}, expected {md5.lower()})", root)


def _reason(exc: object) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())  # one line


def _extract(archive: Path, dest: Path, url: str, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        _fail(f"unsafe member in the archive from {url} ({_reason(exc)})", root)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        _fail(f"bad archive from {url} ({_reason(exc)})", root)
