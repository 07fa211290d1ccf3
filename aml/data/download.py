"""Downloads: streamed, resumable, retried, verified, atomically moved into place.

Everything the package fetches (datasets, gnd files, weights) goes through
`download_file`; archives are unpacked by `extract_archive`, which refuses
members that would land outside the target folder.
"""

import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Set, Tuple, Union


from aml.utils.atomic import DiskFull, atomic_write, is_disk_full, lock_beside, publish_folder, staged
from aml.utils.progress import progress_bar
from aml.utils.errors import AmlError
from aml.utils.plain_files import begins_as

log = logging.getLogger(__name__)

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.")
_CHUNK = 1 << 20
_HASH_CHECK_LIMIT = 64 << 20  # files up to this size are re-hashed when found present
# No single file of the data sets is near this (revisitop1m's archives are about 1 GB each):
# a stream that goes on past it is refused instead of filling the disk.
DEFAULT_MAX_BYTES = 32 << 30


class DownloadError(AmlError, RuntimeError):
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


def file_sha256(path: Union[str, Path]) -> str:
    """The sha256 of a file, as hex digits."""
    return _sha256_of(Path(path)).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, record: dict) -> None:
    atomic_write(path, lambda out: out.write(json.dumps(record, sort_keys=True).encode()))


def _validator(record: dict) -> Optional[str]:
    """What tells one version of a remote file from another: its ETag, else Last-Modified."""
    return record.get("etag") or record.get("last_modified")


def _complete_size(content_range: Optional[str]) -> Optional[int]:
    """N of a 'bytes */N' or 'bytes a-b/N' Content-Range header."""
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None


def _range_start(content_range: Optional[str]) -> Optional[int]:
    """a of a 'bytes a-b/N' Content-Range header (None for another)."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _resumable_size(partial: Path, url: str) -> Tuple[int, Optional[str]]:
    """Bytes of ``partial`` worth resuming and the version they belong to: (0, None) when
    its record (``.part.json``) is missing, names another URL, or has no ETag or
    Last-Modified to send in If-Range, or when the part is larger than the file it
    belongs to. Such a part is deleted: resuming it could mix two versions of the file."""
    record = _read_json(_part_record(partial))
    have = partial.stat().st_size if partial.exists() else 0
    version = _validator(record)
    total = record.get("total")
    if have and version and record.get("url") == url and (total is None or have <= total):
        return have, version
    if have:
        log.info(">> discarding %s: it cannot be matched to the current version of %s", partial, url)
    _discard(partial)
    return 0, None


def _part_record(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _discard(partial: Path) -> None:
    """Delete a partial download and its record."""
    partial.unlink(missing_ok=True)
    _part_record(partial).unlink(missing_ok=True)


def _restart(url: str, partial: Path, limits: "_Limits", progress: bool) -> "_Received":
    """Delete ``partial`` and its record and fetch ``url`` from the start."""
    _discard(partial)
    return _transfer(url, partial, limits, progress)


@dataclass(frozen=True)
class _Limits:
    """Per download: the socket timeout, the most bytes accepted, whether a hash will check the result."""

    timeout: float
    max_bytes: int
    hashed: bool


@dataclass(frozen=True)
class _Received:
    """What a transfer knows of the file: its total size (None: the server did not say) and
    whether the body's end was delimited (a length or chunked encoding), so that a cut
    connection shows as an error rather than as the end of the file."""

    total: Optional[int]
    delimited: bool


def _copy_body(response, out, have: int, total: Optional[int], limits: _Limits, bar) -> None:
    """Stream ``response`` into ``out``, refusing more bytes than announced or than ``max_bytes``."""
    cap = min(total, limits.max_bytes) if total is not None else limits.max_bytes
    for block in iter(lambda: response.read(_CHUNK), b""):
        have += len(block)
        if have > cap:
            raise DownloadError(
                f"the server sent more than {cap} bytes"
                + (
                    f" (it announced {total})"
                    if total is not None and total <= limits.max_bytes
                    else "; raise max_bytes if the file really is that large"
                )
            )
        out.write(block)
        bar.update(len(block))


def _transfer(url: str, partial: Path, limits: _Limits, progress: bool) -> _Received:
    """Append the rest of ``url`` to ``partial``; what is known of the file's size.

    A part is resumed with ``Range`` and ``If-Range`` (the ETag or Last-Modified recorded
    when it was started): a server whose file changed answers with the whole new file,
    which replaces the part. A 416 answer counts as complete only when the server's size
    equals the part's and a hash will check the part; otherwise the part is fetched again
    from the start (a 416 says nothing of the part's bytes)."""
    have, version = _resumable_size(partial, url)
    request = urllib.request.Request(url, headers={"User-Agent": "aml"})
    if have and version:  # a part worth resuming always has its version
        request.add_header("Range", f"bytes={have}-")
        request.add_header("If-Range", version)
    try:
        response = urllib.request.urlopen(request, timeout=limits.timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        if _complete_size(err.headers.get("Content-Range")) == have and limits.hashed:
            return _Received(have, True)
        log.info(">> %s cannot be checked against %s (a 416 answer); fetching it again", partial, url)
        return _restart(url, partial, limits, progress)
    resumed = bool(have) and response.status == 206
    if resumed and _range_start(response.headers.get("Content-Range")) != have:  # a gap or an overlap
        response.close()
        log.info(">> %s: %s resumed it elsewhere than at byte %d; fetching it again", partial, url, have)
        return _restart(url, partial, limits, progress)
    with response:
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        chunked = "chunked" in (response.headers.get("Transfer-Encoding") or "").lower()
        total = _complete_size(response.headers.get("Content-Range")) if resumed else None
        if total is None and length is not None:
            total = have + int(length)
        record = {
            "url": url,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "total": total,
        }
        _write_json(_part_record(partial), record)
        with (
            open(partial, "ab" if resumed else "wb") as out,
            progress_bar(
                total=total, initial=have, unit="B", unit_scale=True, desc=partial.name[:-5], enabled=progress
            ) as bar,
        ):
            try:
                _copy_body(response, out, have, total, limits, bar)
            except DownloadError:
                out.close()
                _discard(partial)
                raise
    return _Received(total, total is not None or chunked)


def _transfer_with_retries(
    url: str, dest: Path, partial: Path, retries: int, limits: _Limits, progress: bool
) -> _Received:
    error: BaseException = DownloadError("no attempt made")
    for attempt in range(max(retries, 1)):
        try:
            received = _transfer(url, partial, limits, progress)
            have = partial.stat().st_size if partial.exists() else 0
            if received.total is None or have >= received.total or attempt + 1 >= max(retries, 1):
                return received  # complete, or as far as the attempts went (`_verify` names it)
            log.warning(
                "download of %s stopped at %d of %d bytes, attempt %d/%d: resuming",
                url,
                have,
                received.total,
                attempt + 1,
                retries,
            )
            continue
        except DownloadError as err:
            raise DownloadError(
                f"Refused download of {url}: {err}; the partial file was deleted. {_manual_hint(url, dest)}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if is_disk_full(err):  # not the network's fault: another attempt would fail the same way
                raise DiskFull(
                    f"no space left on the device for {partial} while downloading {url}: free space and "
                    "run again (the download resumes where it stopped)"
                ) from err
            error = err
            if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403, 404, 410):
                break
            log.warning("download of %s failed (%s), attempt %d/%d", url, err, attempt + 1, retries)
            time.sleep(min(2**attempt, 10) * 0.1)
    raise DownloadError(f"Could not download {url}: {error}. {_manual_hint(url, dest)}") from error


def _install_record(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.download.json")


def _record_install(dest: Path, url: str, digest: str) -> None:
    """Record the file at ``dest`` as the one installed from ``url``: its size, modification
    time and sha256."""
    stat = dest.stat()
    _write_json(
        _install_record(dest), {"url": url, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    )


def _intact(dest: Path, url: str, expected_hash: Optional[str]) -> bool:
    """Whether a file already at ``dest`` is still the one the downloader installed (same
    size and sha256 as recorded then; a file over 64 MiB is hashed again only when its
    modification time changed, and a record without one, of an older aml, takes the time the
    file has when found). A file put there by hand, as the manual-download hint
    asks, has no record: it is checked once against the sha256 prefix its name (or the
    caller) gives, then recorded; one without a known hash is trusted.

    Raises:
        DownloadError: for a file put there by hand that is not the one ``url`` names (it is
            left as it is: it may be another of the user's files).
    """
    record = _read_json(_install_record(dest))
    if not record:
        if expected_hash is None:
            return True
        digest = _sha256_of(dest).hexdigest()
        if not digest.startswith(expected_hash):
            raise DownloadError(
                f"{dest} is not the file {url} names: its sha256 begins {digest[: len(expected_hash)]}, not "
                f"{expected_hash} (another network saved under that name?); move it away to download the right one. "
                f"{_manual_hint(url, dest)}"
            )
        # checked once: later calls compare the size (and hash small files) against the record;
        # in a read-only folder it is checked again next time
        with contextlib.suppress(OSError):
            _record_install(dest, url, digest)
        return True
    stat = dest.stat()
    if record.get("size") != stat.st_size:
        return False
    recorded = record.get("sha256")
    older = "mtime_ns" not in record  # an older aml's record, which checked the size alone: trusted as it did
    touched = not older and record["mtime_ns"] != stat.st_mtime_ns  # a large file is hashed again only then
    if recorded and (stat.st_size <= _HASH_CHECK_LIMIT or touched) and _sha256_of(dest).hexdigest() != recorded:
        return False
    if recorded and (older or touched):  # its time from now on (in a read-only folder, the record stays)
        with contextlib.suppress(OSError):
            _record_install(dest, url, recorded)
    return True


def download_file(
    url: str,
    dest: Union[str, Path],
    *,
    sha256_prefix: Optional[str] = None,
    size: Optional[int] = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Fetch ``url`` to ``dest`` unless an intact ``dest`` already exists; return ``dest``.

    The body is streamed to ``dest.part`` (kept between attempts and resumed with HTTP
    Range + If-Range, so a part of another version of the file is never extended), checked
    against the sha256 prefix (given, or read from a ``name-<hex>.ext`` file name) or else
    the expected size, then renamed into place. The installed file's size, modification time
    and sha256 are recorded next to it (``.<name>.download.json``): a later call fetches a
    file that has since been truncated or altered again (one over 64 MiB is hashed again only
    when its modification time changed). A file put at ``dest`` by hand is checked once
    against the sha256 prefix, and refused (left as it is) when it is another file. A file
    with neither a hash nor a known size is installed only when the server delimited its
    body (Content-Length or chunked): a
    connection that drops is otherwise indistinguishable from the file's end. A body
    larger than announced, or than ``max_bytes``, is refused and deleted. Processes fetching
    one file at once (the ranks of a node, two jobs on one data root) take turns on a lock
    beside it (``.<name>.lock``): one downloads, the others then find it in place.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise DownloadError(f"{dest} is a folder where the file {url} goes: move it away and run again")
    expected_hash = sha256_prefix or hash_prefix_from_name(dest.name)
    if dest.exists() and _intact(dest, url, expected_hash):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with lock_beside(dest):  # one process fetches the file (into one .part), the others then find it
        differs = dest.exists()
        if differs:
            if _intact(dest, url, expected_hash):
                return dest
            log.warning(">> %s differs from the file downloaded from %s; fetching it again", dest, url)
        partial = dest.with_name(dest.name + ".part")
        limits = _Limits(timeout, max_bytes, hashed=bool(expected_hash))
        try:
            received = _transfer_with_retries(url, dest, partial, retries, limits, progress)
        except DownloadError as err:
            if not differs:
                raise
            raise DownloadError(
                f"{err} ({dest} is there, but differs from the file downloaded before, which "
                f"{_install_record(dest).name} beside it describes: if it is the file you put there, delete that "
                "record to use it as it is)"
            ) from None
        if not (expected_hash or size is not None or received.delimited):
            _discard(partial)
            raise DownloadError(
                f"Unverifiable download of {url}: the server did not say how long the file is and no hash "
                f"or size is known for it, so a cut connection cannot be told from the file's end; "
                f"nothing was installed. {_manual_hint(url, dest)}"
            )
        _verify(partial, url, dest, expected_hash, size if size is not None else received.total)
        _refuse_web_page(partial, url, dest)
        digest = _sha256_of(partial).hexdigest()
        os.replace(partial, dest)
        _part_record(partial).unlink(missing_ok=True)
        _record_install(dest, url, digest)
        return dest


def _refuse_web_page(partial: Path, url: str, dest: Path) -> None:
    """Refuse a web page (a login portal's, a server's error page sent as 200) where the file
    was asked for: installed, it would be recorded as intact and never fetched again."""
    if dest.suffix.lower() in (".html", ".htm"):
        return
    with open(partial, "rb") as handle:
        head = handle.read(64)
    if begins_as(head, "a web page (HTML)"):
        _discard(partial)
        raise DownloadError(
            f"Bad download of {url}: the server sent a web page (a login, proxy or error page?), not the file; "
            f"nothing was installed. {_manual_hint(url, dest)}"
        )


def _verify(partial: Path, url: str, dest: Path, expected_hash: Optional[str], expected_size: Optional[int]) -> None:
    actual_size = partial.stat().st_size
    if expected_size is not None and actual_size > expected_size:
        _discard(partial)
        raise DownloadError(
            f"Bad download of {url}: {actual_size} bytes where the server announced {expected_size}; "
            f"the partial file was deleted, run the command again. {_manual_hint(url, dest)}"
        )
    if expected_size is not None and actual_size != expected_size:
        raise DownloadError(
            f"Incomplete download of {url}: {actual_size} of {expected_size} bytes in {partial}. "
            f"Run the command again to resume. {_manual_hint(url, dest)}"
        )
    if expected_hash:
        actual = _sha256_of(partial).hexdigest()
        if not actual.startswith(expected_hash):
            _discard(partial)
            raise DownloadError(
                f"Corrupt download of {url}: sha256 {actual[: len(expected_hash)]} != expected {expected_hash}; "
                f"the partial file was deleted, run the command again. {_manual_hint(url, dest)}"
            )


def _plain(path: str, links: Set[PurePosixPath], itself: bool = False) -> Optional[PurePosixPath]:
    """An archive path made plain component by component (``a/./b/../c`` is ``a/c``); None when
    it is absolute, leaves the archive's folder or goes through one of the archive's ``links``
    (``itself``: its last component may be one, the link member's own name)."""
    if posixpath.isabs(path):
        return None
    parts: List[str] = []
    components = [c for c in path.split("/") if c not in ("", ".")]
    for k, component in enumerate(components):
        if component == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(component)
        if PurePosixPath(*parts) in links and not (itself and k == len(components) - 1):
            return None
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


#: the fix said of an archive that is refused: not a download cut short, so fetching it again as it is fails alike
_NOT_OURS = "; it is not an archive of the data set as published: delete it and check where it came from"


def _check_members(members: Sequence[tarfile.TarInfo], archive: Path) -> None:
    """Refuse an ``archive`` of which any member would land, or point, outside the folder it
    is unpacked into.

    Checked on the members' names alone, before anything is written (the folder is empty):
    every path made plain stays inside and goes through no link of the archive itself, so
    the paths the names say are the paths written (a chain of links is how an archive
    reaches beyond the folder, past Python's own ``data`` filter in some versions)."""
    links = {PurePosixPath(posixpath.normpath(m.name)) for m in members if m.issym() or m.islnk()}
    for member in members:
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise DownloadError(f"refusing special archive member {member.name!r} of {archive}{_NOT_OURS}")
        if _plain(member.name, links, itself=True) is None:
            raise DownloadError(
                f"refusing archive member {member.name!r} of {archive}: it would be written outside the folder it is "
                f"unpacked into, or through a link{_NOT_OURS}"
            )
        if member.issym() or member.islnk():
            # a symbolic link's target is read from its folder, a hard link's from the archive's root
            folder = posixpath.dirname(member.name) if member.issym() else ""
            if posixpath.isabs(member.linkname) or _plain(posixpath.join(folder, member.linkname), links) is None:
                raise DownloadError(
                    f"refusing archive link {member.name!r} -> {member.linkname!r} of {archive}: it points outside "
                    f"the folder it is unpacked into, or through another link{_NOT_OURS}"
                )


def _check_on_disk(member: tarfile.TarInfo, folder: Path, archive: Path) -> None:
    """Refuse a member whose path, or whose link's target, goes through a link already in
    ``folder``: one an earlier archive of the same set unpacked there (which the members' names
    cannot show), or one a file system that folds case finds under another case."""
    paths = [member.name]
    if member.issym():
        paths.append(posixpath.join(posixpath.dirname(member.name), member.linkname))
    elif member.islnk():
        paths.append(member.linkname)
    for path in paths:
        current = folder
        for component in (c for c in path.split("/") if c not in ("", ".")):
            current = current.parent if component == ".." else current / component
            if current.is_symlink():
                raise DownloadError(
                    f"refusing {archive}: its member {member.name!r} reaches through the link {component!r} that "
                    "an archive of the set unpacked; delete the archives and download them again"
                )


def _unpack(archive: Path, folder: Path, flatten: bool, progress: bool) -> None:
    """Unpack one archive into ``folder`` (a staging folder) after checking every member;
    with ``flatten``, through a scratch folder beside it (inside, a member could bear its name)."""
    if flatten:
        with staged(folder) as scratch:
            _extract(archive, scratch, progress)
            _flatten(scratch, folder, archive)
    else:
        _extract(archive, folder, progress)


def _extract(archive: Path, folder: Path, progress: bool) -> None:
    """Every member of ``archive`` into ``folder``, each checked first."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _read_to_the_end(tar)
            _check_members(members, archive)
            for member in progress_bar(
                members, desc=f"unpacking {archive.name}", unit="file", enabled=progress, leave=False
            ):
                _check_on_disk(member, folder, archive)
                tar.extract(member, folder, filter="data")
    except tarfile.FilterError as err:  # a member Python's data filter refuses: downloading again would not help
        raise DownloadError(f"refusing {archive}: {err}{_NOT_OURS}") from err
    except gzip.BadGzipFile as err:  # an OSError, but the archive's, not the disk's
        raise DownloadError(f"{archive} is damaged ({err}); delete it and download it again") from err
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise DiskFull(
            f"no space left on the device for {folder.parent} while unpacking {archive}: free space and run again "
            "(the archives are kept; the unpacking starts over)"
        ) from err
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DownloadError(
            f"{archive} is truncated or not a readable archive ({err}); delete it and download it again"
        ) from err


def _read_to_the_end(tar: tarfile.TarFile) -> None:
    """Read a compressed archive past its last member: gzip checks its CRC and length only at
    the end of the stream, which tarfile stops short of (a flipped bit was unpacked unseen)."""
    if isinstance(tar.fileobj, gzip.GzipFile):
        while tar.fileobj.read(1 << 20):
            pass


def _materialise_links(scratch: Path, archive: Path) -> None:
    """Replace every symbolic link under ``scratch`` by a copy of the file it points to,
    which must be a regular file inside ``scratch``: once flattened, a relative link would
    point elsewhere (``a/b/x.jpg -> ../y.jpg`` leaves the folder)."""
    root = scratch.resolve()
    for link in sorted(p for p in scratch.rglob("*") if p.is_symlink()):
        resolved = link.resolve()
        if root not in resolved.parents or not resolved.is_file():
            raise DownloadError(
                f"refusing archive link {link.relative_to(scratch)} in {archive}: it points to "
                f"{os.readlink(link)}, not to a file of the archive"
            )
        data = resolved.read_bytes()
        link.unlink()
        link.write_bytes(data)


def _flatten(scratch: Path, folder: Path, archive: Path) -> None:
    """Move every file under ``scratch`` into ``folder`` itself. Two files of one name (in
    one archive or across archives) are refused unless their bytes are equal."""
    _materialise_links(scratch, archive)
    for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
        target = folder / path.name
        if target.exists():
            if target.read_bytes() != path.read_bytes():
                raise DownloadError(
                    f"{archive}: {path.relative_to(scratch)} and an earlier file both flatten to "
                    f"{path.name} with different contents; unpack it without flattening and rename one"
                )
            log.info(">> %s: %s is a copy of an earlier %s; kept once", archive, path.relative_to(scratch), path.name)
            path.unlink()
            continue
        os.replace(path, target)


def extract_archives(
    archives: Sequence[Union[str, Path]], target: Union[str, Path], flatten: bool = False, progress: bool = False
) -> Path:
    """Unpack (compressed) tar ``archives`` into a new folder ``target``, safely and atomically.

    Everything is unpacked into a staging sibling of this process (``.<target>.<pid>.*.staging``),
    every member checked against path traversal, links leaving the folder and device files;
    only when all archives are in is the staging folder renamed to ``target``. An
    interrupted unpacking therefore never leaves a partial ``target`` that a later run
    would take as complete. With ``flatten`` every regular file lands directly in
    ``target`` (the Oxford/Paris archives nest folders).
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise DownloadError(f"{target} already exists and is not empty; move it away to unpack the archives again")
    with staged(target) as staging:
        for archive in archives:
            _unpack(Path(archive), staging, flatten, progress)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        if not publish_folder(staging, target):
            log.info(">> %s was unpacked by another process meanwhile; keeping it", target)
    return target


def extract_archive(
    archive: Union[str, Path], target: Union[str, Path], flatten: bool = False, progress: bool = False
) -> Path:
    """`extract_archives` of one archive."""
    return extract_archives([archive], target, flatten, progress)


def fetch_archives(
    downloads: Sequence[Tuple[str, Path]], target: Path, flatten: bool = False, progress: bool = False
) -> Path:
    """Download the archives (url, path) with `download_file`, unpack them into ``target``
    with `extract_archives`, then delete them; unless ``target`` exists, which is returned.

    Processes preparing one set at once (two jobs on one data root) take turns on a lock beside
    ``target`` (``.<target>.lock``): one fetches and unpacks, the others then find it in place
    (each unpacked a copy of its own, and the first to finish deleted the archives the others
    were reading).

    Args:
        downloads: the archives' URLs and where each is downloaded to.
        target: the folder they are unpacked into.
        flatten: every regular file directly in ``target``.
        progress: progress bars.

    Returns:
        ``target``.

    Examples:
        >>> from pathlib import Path
        >>> from aml.data.download import fetch_archives
        >>> fetch_archives([("https://example.org/a.tgz", Path("data/a.tgz"))], Path("data/a"))  # doctest: +SKIP
        PosixPath('data/a')
    """
    if target.exists():
        return target
    with lock_beside(target):
        if target.exists():  # another process unpacked it while this one waited
            log.info(">> %s was unpacked by another process meanwhile", target)
            return target
        files = [download_file(url, path, progress=progress) for url, path in downloads]
        extract_archives(files, target, flatten, progress)
        for path in files:
            remove_download(path)
    return target


def remove_download(path: Union[str, Path]) -> None:
    """Delete a downloaded file (an unpacked archive) and its install record."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _install_record(path).unlink(missing_ok=True)
