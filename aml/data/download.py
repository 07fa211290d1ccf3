"""Downloads: streamed, resumable, retried, verified, atomically moved into place.

Everything the package fetches (datasets, gnd files, weights) goes through
:func:`download_file`; archives are unpacked by :func:`extract_archive`, which refuses
members that would land outside the target folder.
"""

import hashlib
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

log = logging.getLogger(__name__)

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification."""


def hash_prefix_from_name(filename: str) -> Optional[str]:
    """The sha256 prefix that cirtorch/torchvision file names carry (``name-<hex>.pth``)."""
    match = _HASH_IN_NAME.search(Path(filename).name)
    return match.group(1) if match else None


def _manual_hint(url: str, dest: Path) -> str:
    return f"Without internet access, fetch {url} on another machine and put it at {dest}"


def _sha256_of(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest


def _transfer(url: str, partial: Path, timeout: float, progress: bool) -> Optional[int]:
    """Append the rest of ``url`` to ``partial`` (HTTP Range); return the expected total size."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "aml"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # already complete
            return have
        raise
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=partial.name[:-5], disable=not progress
        ) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    return total


def _transfer_with_retries(url: str, dest: Path, partial: Path, retries: int, timeout: float, progress: bool) -> Optional[int]:
    error: BaseException = DownloadError("no attempt made")
    for attempt in range(max(retries, 1)):
        try:
            return _transfer(url, partial, timeout, progress)
        except (urllib.error.URLError, OSError) as err:
            error = err
            if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403, 404, 410):
                break
            log.warning("download of %s failed (%s), attempt %d/%d", url, err, attempt + 1, retries)
            time.sleep(min(2 ** attempt, 10) * 0.1)
    raise DownloadError(f"Could not download {url}: {error}. {_manual_hint(url, dest)}") from error


def download_file(
    url: str,
    dest: Union[str, Path],
    *,
    sha256_prefix: Optional[str] = None,
    size: Optional[int] = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` to ``dest`` unless ``dest`` already exists; return ``dest``.

    The body is streamed to ``dest.part`` (kept between attempts and resumed with an HTTP
    Range request), checked against the sha256 prefix (given, or read from a
    ``name-<hex>.ext`` file name) or else the expected size, then renamed into place.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    expected_hash = sha256_prefix or hash_prefix_from_name(dest.name)
    total = _transfer_with_retries(url, dest, partial, retries, timeout, progress)
    _verify(partial, url, dest, expected_hash, size if size is not None else total)
    os.replace(partial, dest)
    return dest


def _verify(partial: Path, url: str, dest: Path, expected_hash: Optional[str], expected_size: Optional[int]) -> None:
    actual_size = partial.stat().st_size
    if expected_size is not None and actual_size != expected_size:
        raise DownloadError(
            f"Incomplete download of {url}: {actual_size} of {expected_size} bytes in {partial}. "
            f"Run the command again to resume. {_manual_hint(url, dest)}"
        )
    if expected_hash:
        actual = _sha256_of(partial).hexdigest()
        if not actual.startswith(expected_hash):
            partial.unlink()
            raise DownloadError(
                f"Corrupt download of {url}: sha256 {actual[:len(expected_hash)]} != expected {expected_hash}; "
                f"the partial file was deleted, run the command again. {_manual_hint(url, dest)}"
            )


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    resolved = (target / member.name).resolve()
    if not str(resolved).startswith(str(target.resolve()) + os.sep) and resolved != target.resolve():
        raise DownloadError(f"refusing archive member {member.name!r}: it would be written outside {target}")
    if member.issym() or member.islnk():
        link = (resolved.parent / member.linkname).resolve()
        if not str(link).startswith(str(target.resolve())):
            raise DownloadError(f"refusing archive link {member.name!r} -> {member.linkname!r} outside {target}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DownloadError(f"refusing special archive member {member.name!r}")


def extract_archive(archive: Union[str, Path], target: Union[str, Path], flatten: bool = False) -> Path:
    """Unpack a (compressed) tar ``archive`` into ``target`` safely and atomically.

    Members are unpacked into a temporary sibling folder, checked against path traversal,
    links leaving the folder and device files, then moved into ``target``. With ``flatten``
    every regular file lands directly in ``target`` (the Oxford/Paris archives nest folders).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, staging)
            tar.extractall(staging, members=members, filter="data")
        files = [p for p in staging.rglob("*") if p.is_file()] if flatten else list(staging.iterdir())
        for path in files:
            os.replace(path, target / (path.name if flatten else path.relative_to(staging)))
    except tarfile.TarError as err:
        raise DownloadError(f"{archive} is not a readable archive ({err}); delete it and download it again") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
