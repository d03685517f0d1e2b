"""Download an archive once into the cache, with a progress bar and an md5 check."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from ml.data.base import DataError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TIMEOUT_S = 30


class DownloadError(DataError):
    """An archive could not be fetched or failed its checksum; the message says where to put it by hand."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def cached_archive(url: str, md5: str, cache_dir: Path) -> Path:
    """The verified archive under cache_dir, downloading it first if it is not there."""
    path = Path(cache_dir).absolute() / url.rstrip("/").rsplit("/", 1)[-1]  # absolute: users copy it
    if not path.exists():
        _download(url, md5, path)
    actual = md5_of(path)
    if actual != md5:
        raise DownloadError(
            f"{path} has md5 {actual} but {url} should have md5 {md5}; delete it to download again, "
            f"or put the right archive at exactly {path}"
        )
    return path


def _download(url: str, md5: str, path: Path) -> None:
    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=None) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {url} ({reason}). If this machine is offline, download it elsewhere "
            f"and put it at exactly {path} (md5 {md5})"
        ) from None
    os.replace(part, path)
    log.info("downloaded %s to %s", url, path)
