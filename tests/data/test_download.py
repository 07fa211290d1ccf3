"""Downloads against a local HTTP server (a thread on 127.0.0.1)."""

import functools
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import time

import pytest

from aml.data.download import DownloadError, download_file, extract_archive, extract_archives, hash_prefix_from_name

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` with ETags, Range, If-Range and 416, as a real web server would.
    ``honour_if_range`` False mimics servers that ignore If-Range (they answer 416 to a
    range past the end)."""

    files = {}
    cut_after = {}  # path -> bytes sent before the connection drops (once)
    requests = []
    honour_if_range = True
    no_length = set()  # paths answered without Content-Length (the body ends when the connection closes)
    endless = set()  # paths whose body never ends (no Content-Length)
    slow = set()  # paths whose body comes in 8 KiB pieces, 10 ms apart
    skew = {}  # path -> bytes the next ranged answer starts past the asked-for byte (once)
    content_type = {}  # path -> its Content-Type (default: none sent)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        etag = f'"{sha(body)[:12]}"'
        start = 0
        ranged = self.headers.get("Range")
        if ranged and self.honour_if_range and self.headers.get("If-Range") not in (None, etag):
            ranged = None  # another version: the whole new file
        if ranged:
            start = int(ranged.split("=")[1].split("-")[0]) + self.skew.pop(self.path, 0)
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("ETag", etag)
        if self.path in self.content_type:
            self.send_header("Content-Type", self.content_type[self.path])
        if self.path not in self.no_length | self.endless:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        try:
            while self.path in self.endless:
                self.wfile.write(body)
            cut = self.cut_after.pop(self.path, None)
            sent = body[start:cut] if cut else body[start:]
            for piece in range(0, len(sent), 8192 if self.path in self.slow else len(sent) or 1):
                self.wfile.write(sent[piece:piece + 8192] if self.path in self.slow else sent)
                time.sleep(0.01 if self.path in self.slow else 0)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    Handler.files, Handler.cut_after, Handler.requests, Handler.honour_if_range = {}, {}, [], True
    Handler.no_length, Handler.endless, Handler.slow = set(), set(), set()
    Handler.skew, Handler.content_type = {}, {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # polled every 10 ms: shutdown() waits for the next poll (0.5 s by default)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_hash_in_file_name(server, tmp_path):
    name = f"weights-{sha(PAYLOAD)[:7]}.pth"
    Handler.files["/" + name] = PAYLOAD
    path = download_file(f"{server}/{name}", tmp_path / name, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / (name + ".part")).exists()


def test_existing_file_is_never_downloaded_again(server, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"mine")
    download_file(f"{server}/x.bin", tmp_path / "x.bin", progress=False)
    assert Handler.requests == [] and (tmp_path / "x.bin").read_bytes() == b"mine"


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    Handler.files["/big.bin"] = PAYLOAD
    Handler.cut_after["/big.bin"] = 30000
    with pytest.raises(DownloadError, match="Incomplete download.*resume"):
        download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False, retries=1)
    assert (tmp_path / "big.bin.part").stat().st_size == 30000
    download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert Handler.requests[-1] == ("/big.bin", "bytes=30000-")


def test_a_dropped_connection_is_resumed_within_the_call(server, tmp_path):
    """The retries were for errors alone: a connection that dropped (a short body, no error)
    ended the command, though the part could be resumed at once (100 archives of 1 GB)."""
    Handler.files["/big.bin"] = PAYLOAD
    Handler.cut_after["/big.bin"] = 30000
    assert download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False).read_bytes() == PAYLOAD
    assert Handler.requests == [("/big.bin", None), ("/big.bin", "bytes=30000-")]


def test_a_part_resumed_at_another_byte_is_fetched_again(server, tmp_path):
    """A 206 answer that starts past the part's end was appended as if it followed on: a gap,
    filled in later at the right size, installed with other bytes where no hash checks it."""
    Handler.files["/big.bin"] = PAYLOAD
    Handler.cut_after["/big.bin"] = 30000
    with pytest.raises(DownloadError, match="Incomplete download"):
        download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False, retries=1)
    Handler.skew["/big.bin"] = 100
    download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert Handler.requests[-2:] == [("/big.bin", "bytes=30000-"), ("/big.bin", None)]


def test_a_web_page_sent_for_a_file_is_refused_and_fetched_next_time(server, tmp_path):
    """A portal's or an error page answered with 200 was installed as the gnd, network or archive,
    recorded as intact, and never fetched again (the errors said to download it again)."""
    page = b"\n<!DOCTYPE html><html><body>Please log in</body></html>"
    Handler.files["/gnd_roxford5k.pkl"] = page
    Handler.content_type["/gnd_roxford5k.pkl"] = "text/html"
    with pytest.raises(DownloadError, match=r"the server sent a web page .*nothing was installed"):
        download_file(f"{server}/gnd_roxford5k.pkl", tmp_path / "gnd_roxford5k.pkl", progress=False)
    assert list(tmp_path.iterdir()) == []
    Handler.files["/gnd_roxford5k.pkl"] = PAYLOAD
    download_file(f"{server}/gnd_roxford5k.pkl", tmp_path / "gnd_roxford5k.pkl", progress=False)
    assert (tmp_path / "gnd_roxford5k.pkl").read_bytes() == PAYLOAD
    Handler.files["/index.html"] = page  # a page asked for is a page
    assert download_file(f"{server}/index.html", tmp_path / "index.html", progress=False).read_bytes() == page


def test_a_folder_where_a_file_goes_is_named(server, tmp_path):
    """A folder of the file's name: an IsADirectoryError's traceback, after the whole download."""
    (tmp_path / "gnd_roxford5k.pkl").mkdir()
    with pytest.raises(DownloadError, match=r"gnd_roxford5k.pkl is a folder where the file .* goes: move it away"):
        download_file(f"{server}/gnd_roxford5k.pkl", tmp_path / "gnd_roxford5k.pkl", progress=False)
    assert Handler.requests == []


def test_hash_mismatch_is_refused_and_nothing_lands(server, tmp_path):
    name = "weights-deadbee.pth"
    Handler.files["/" + name] = PAYLOAD
    with pytest.raises(DownloadError, match="Corrupt download"):
        download_file(f"{server}/{name}", tmp_path / name, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_url_names_url_and_destination(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download_file(f"{server}/gnd_roxford5k.pkl", tmp_path / "test" / "gnd_roxford5k.pkl", progress=False)
    assert f"{server}/gnd_roxford5k.pkl" in str(info.value) and str(tmp_path / "test") in str(info.value)


def test_no_network_gives_manual_instructions(tmp_path):
    with pytest.raises(DownloadError, match="put it at"):
        download_file("http://127.0.0.1:9/ims.tar.gz", tmp_path / "ims.tar.gz", retries=2, progress=False)


def test_without_network_a_file_that_differs_from_its_record_is_named_with_the_record(server, tmp_path):
    """A file put by hand where a downloaded one was (as the errors ask) differs from its record:
    without network, the error asked to put the file at the path it was already at."""
    Handler.files["/gnd.pkl"] = PAYLOAD
    path = download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False)
    path.write_bytes(b"the user's own copy")
    with pytest.raises(DownloadError, match=r"put it at .*gnd.pkl \(.*gnd.pkl is there, but differs from the file "
                                            r"downloaded before, which .gnd.pkl.download.json beside it describes: "
                                            r"if it is the file you put there, delete that record"):
        download_file("http://127.0.0.1:9/gnd.pkl", path, retries=1, progress=False)  # no network
    assert path.read_bytes() == b"the user's own copy"
    (tmp_path / ".gnd.pkl.download.json").unlink()  # as the error says: used as it is
    assert download_file("http://127.0.0.1:9/gnd.pkl", path, progress=False).read_bytes() == b"the user's own copy"


def test_a_large_installed_file_changed_at_its_size_is_fetched_again(server, tmp_path, monkeypatch):
    """A file over the hashing limit (published networks: hundreds of MB) was checked by its
    size alone: one changed in place loaded without a word. It is hashed again when its
    modification time is not the recorded one, and only then."""
    from aml.data import download

    monkeypatch.setattr(download, "_HASH_CHECK_LIMIT", 1000)  # PAYLOAD is 100 KiB: a large file here
    hashed = []
    monkeypatch.setattr(download, "_sha256_of", lambda path: hashed.append(path) or hashlib.sha256(path.read_bytes()))
    Handler.files["/weights.pth"] = PAYLOAD
    path = download_file(f"{server}/weights.pth", tmp_path / "weights.pth", progress=False)
    hashed.clear()
    download_file(f"{server}/weights.pth", path, progress=False)
    assert hashed == [] and len(Handler.requests) == 1  # untouched: neither hashed nor fetched
    changed = bytearray(PAYLOAD)
    changed[5000] ^= 1
    recorded = path.stat().st_mtime_ns
    path.write_bytes(bytes(changed))  # same size, another modification time (set: the clock's tick is coarse)
    os.utime(path, ns=(recorded, recorded + 10**9))
    assert download_file(f"{server}/weights.pth", path, progress=False).read_bytes() == PAYLOAD
    assert len(Handler.requests) == 2
    record = tmp_path / ".weights.pth.download.json"
    older = {k: v for k, v in json.loads(record.read_text()).items() if k != "mtime_ns"}
    record.write_text(json.dumps(older))  # an older aml's record: checked by size, as that aml did
    hashed.clear()
    download_file(f"{server}/weights.pth", path, progress=False)
    assert hashed == [] and len(Handler.requests) == 2
    assert json.loads(record.read_text())["mtime_ns"] == path.stat().st_mtime_ns  # its time from now on


def make_tar(members, links=None):
    """A .tgz of ``members`` (name -> bytes) and symbolic ``links`` (name -> target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def test_download_and_extract_flattened_archive(server, tmp_path):
    Handler.files["/paris_1.tgz"] = make_tar({"paris/defense/a.jpg": b"a", "paris/eiffel/b.jpg": b"b"})
    archive = download_file(f"{server}/paris_1.tgz", tmp_path / "paris_1.tgz", progress=False)
    extract_archive(archive, tmp_path / "jpg", flatten=True)
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == ["a.jpg", "b.jpg"]


def test_archive_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.tgz"
    archive.write_bytes(make_tar({"../../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_an_archive_whose_gzip_check_fails_is_refused_before_anything_is_unpacked(tmp_path):
    """tarfile stops at the last member, before gzip's CRC: a damaged archive of the right
    size (no hash is published for the data sets' archives) was unpacked and deleted."""
    data = bytearray(make_tar({"paris/a.jpg": b"a" * 5000}))
    data[-8] ^= 1  # the CRC32 of the uncompressed bytes
    archive = tmp_path / "paris_1.tgz"
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match=r"paris_1.tgz is damaged \(CRC check failed.*download it again"):
        extract_archive(archive, tmp_path / "jpg")
    assert not (tmp_path / "jpg").exists() and archive.exists()


def test_hash_prefix_parsing():
    assert hash_prefix_from_name("imagenet-caffe-vgg16-features-d369c8e.pth") == "d369c8e"
    assert hash_prefix_from_name("gnd_roxford5k.pkl") is None


def test_resume_of_a_changed_file_fetches_the_new_version_whole(server, tmp_path):
    old, new = PAYLOAD, bytes(reversed(PAYLOAD))
    Handler.files["/gnd.pkl"], Handler.cut_after["/gnd.pkl"] = old, 30000
    with pytest.raises(DownloadError, match="Incomplete"):
        download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False, retries=1)
    Handler.files["/gnd.pkl"] = new  # the server's file changed between the attempts
    download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False)
    assert (tmp_path / "gnd.pkl").read_bytes() == new  # not old[:30000] + new[30000:]


def test_stale_larger_part_answered_416_is_fetched_again(server, tmp_path):
    Handler.files["/gnd.pkl"], Handler.honour_if_range = PAYLOAD, False
    Handler.cut_after["/gnd.pkl"] = 1000
    with pytest.raises(DownloadError):
        download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False, retries=1)
    part = tmp_path / "gnd.pkl.part"
    part.write_bytes(b"x" * (len(PAYLOAD) + 500))  # a larger part of an older, longer version
    download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False)
    assert (tmp_path / "gnd.pkl").read_bytes() == PAYLOAD


def test_oversized_part_without_record_never_blocks(server, tmp_path):
    Handler.files["/oxbuild.tgz"], Handler.honour_if_range = PAYLOAD, False
    (tmp_path / "oxbuild.tgz.part").write_bytes(b"y" * (2 * len(PAYLOAD)))
    download_file(f"{server}/oxbuild.tgz", tmp_path / "oxbuild.tgz", progress=False)
    assert (tmp_path / "oxbuild.tgz").read_bytes() == PAYLOAD


def test_part_of_the_same_version_is_resumed_with_if_range(server, tmp_path):
    Handler.files["/big.bin"], Handler.cut_after["/big.bin"] = PAYLOAD, 30000
    with pytest.raises(DownloadError):
        download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False, retries=1)
    download_file(f"{server}/big.bin", tmp_path / "big.bin", progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD and Handler.requests[-1][1] == "bytes=30000-"


def test_installed_file_damaged_later_is_fetched_again(server, tmp_path):
    Handler.files["/gnd.pkl"] = PAYLOAD
    path = download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False)
    path.write_bytes(PAYLOAD[:5000])  # truncated by a full disk, say
    download_file(f"{server}/gnd.pkl", path, progress=False)
    assert path.read_bytes() == PAYLOAD and len(Handler.requests) == 2
    download_file(f"{server}/gnd.pkl", path, progress=False)
    assert len(Handler.requests) == 2  # intact: not fetched again


def test_interrupted_unpacking_leaves_no_partial_folder(tmp_path, monkeypatch):
    first, second = tmp_path / "paris_1.tgz", tmp_path / "paris_2.tgz"
    first.write_bytes(make_tar({"paris/a.jpg": b"a"}))
    second.write_bytes(make_tar({"paris/b.jpg": b"b"})[:40])  # truncated
    with pytest.raises(DownloadError, match="paris_2.tgz is truncated or not a readable archive"):
        extract_archives([first, second], tmp_path / "jpg", flatten=True)
    assert not (tmp_path / "jpg").exists() and not (tmp_path / ".jpg.staging").exists()

    import aml.data.download as download

    unpack = download._unpack

    def killed_after_first(archive, *args):
        unpack(archive, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_unpack", killed_after_first)
    second.write_bytes(make_tar({"paris/b.jpg": b"b"}))
    with pytest.raises(KeyboardInterrupt):
        extract_archives([first, second], tmp_path / "jpg", flatten=True)
    assert not (tmp_path / "jpg").exists()
    monkeypatch.setattr(download, "_unpack", unpack)
    extract_archives([first, second], tmp_path / "jpg", flatten=True)
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("kind", ["absolute", "link-out", "hardlink-out", "device", "fifo"])
def test_archive_members_that_escape_or_are_special_are_refused(tmp_path, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("jpg/evil" if kind != "absolute" else str(tmp_path / "evil.txt"))
        if kind == "link-out":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        elif kind == "hardlink-out":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            info.type = tarfile.FIFOTYPE
        tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)
    archive = tmp_path / "evil.tgz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DownloadError, match="refusing"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("entries", [
    [("sym", "l", "sub"), ("file", "l/x.jpg", "")],  # a file written through the archive's link
    [("sym", "l1", "."), ("sym", "l2", "l1/.."), ("file", "l2/x.jpg", "")],  # a chain: l2 is the folder above
    [("file", "a.jpg", ""), ("sym", "s", "a.jpg"), ("hard", "h", "s")],  # a hard link to a link
    [("sym", "d", "sub"), ("sym", "e", "d/../..")],  # a link that leaves through another
], ids=["through-link", "chain", "hardlink-to-link", "leaves-through-link"])
def test_archives_that_reach_through_their_own_links_are_refused_before_anything_is_written(tmp_path, entries):
    """The checks read each path as its text says, while a chain of the archive's own links can
    lead elsewhere: on some Pythons (CVE-2025-4517, 3.11.7 among them) past the data filter
    too, so that files outside the folder were written and replaced."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for kind, name, target in entries:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info, io.BytesIO(b"") if kind == "file" else None)
    archive = tmp_path / "links.tgz"
    archive.write_bytes(buffer.getvalue())
    for flatten in (False, True):
        with pytest.raises(DownloadError, match=r"refusing archive (member|link) .*(through a link|through another "
                                                r"link)"):
            extract_archive(archive, tmp_path / "out", flatten=flatten)
        assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["links.tgz"]


def test_a_set_of_archives_cannot_reach_through_a_link_another_one_unpacked(tmp_path):
    """Each archive's names were checked against its own links only, while a set's archives
    (revisitop1m's 100) unpack into one folder: a link from the first let the second write
    through it."""
    first, second = tmp_path / "1.tgz", tmp_path / "2.tgz"
    first.write_bytes(make_tar({"sub/a.jpg": b"a"}, {"l": "sub"}))  # a chain's first link, harmless alone
    second.write_bytes(make_tar({"l/escaped.jpg": b"x"}))
    with pytest.raises(DownloadError, match=r"refusing .*2.tgz: its member 'l/escaped.jpg' reaches through the link "
                                            r"'l' that an archive of the set unpacked"):
        extract_archives([first, second], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.tgz", "2.tgz"]


def test_revisitop1m_comes_through_the_resumable_verified_downloader(server, tmp_path, monkeypatch):
    from aml.data import distractors, download

    monkeypatch.setattr(distractors, "REVISITOP1M", f"{server}/revisitop/revisitop1m/")
    monkeypatch.setattr(distractors, "REVISITOP1M_ARCHIVES", 2)
    for i in (1, 2):
        Handler.files[f"/revisitop/revisitop1m/jpg/revisitop1m.{i}.tar.gz"] = make_tar({f"d{i}/img{i}.jpg": PAYLOAD[:10]})
    Handler.files["/revisitop/revisitop1m/revisitop1m.txt"] = b"d1/img1.jpg\nd2/img2.jpg\n"
    archive = "/revisitop/revisitop1m/jpg/revisitop1m.2.tar.gz"
    Handler.cut_after[archive] = 40  # the connection drops once: resumed at once
    monkeypatch.setattr(download, "download_file", functools.partial(download_file, retries=1))
    with pytest.raises(DownloadError, match="revisitop1m.2.tar.gz.*Run the command again to resume"):
        distractors.distractor_images("1m", tmp_path, progress=False)
    assert not (tmp_path / "test" / "revisitop1m" / "jpg").exists()  # nothing unpacked from an incomplete set
    Handler.requests.clear()
    monkeypatch.undo()
    monkeypatch.setattr(distractors, "REVISITOP1M", f"{server}/revisitop/revisitop1m/")
    monkeypatch.setattr(distractors, "REVISITOP1M_ARCHIVES", 2)
    images = distractors.distractor_images("1m", tmp_path, progress=False)  # again: resumes where it stopped
    assert images == [str(tmp_path / "test" / "revisitop1m" / "jpg" / f"d{i}" / f"img{i}.jpg") for i in (1, 2)]
    assert all(open(path, "rb").read() == PAYLOAD[:10] for path in images)
    assert [r for p, r in Handler.requests if "tar.gz" in p] == ["bytes=40-"]  # archive 1 was complete
    assert not list((tmp_path / "test" / "revisitop1m" / "archives").glob("*.tar.gz"))  # unpacked archives removed
    Handler.requests.clear()
    assert distractors.distractor_images("1m", tmp_path, progress=False) == images  # in place: nothing fetched
    assert Handler.requests == []


def test_a_body_without_length_or_hash_is_never_installed(server, tmp_path):
    Handler.files["/list.txt"], Handler.no_length = PAYLOAD, {"/list.txt"}
    Handler.cut_after["/list.txt"] = len(PAYLOAD) // 3  # the connection drops: it looks like the end
    with pytest.raises(DownloadError, match="did not say how long the file is"):
        download_file(f"{server}/list.txt", tmp_path / "list.txt", progress=False, retries=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a known size or hash tells a cut body from a whole one
    with pytest.raises(DownloadError, match="Incomplete"):
        Handler.cut_after["/list.txt"] = len(PAYLOAD) // 3
        download_file(f"{server}/list.txt", tmp_path / "list.txt", progress=False, retries=1, size=len(PAYLOAD))
    path = download_file(f"{server}/list.txt", tmp_path / "list.txt", progress=False, sha256_prefix=sha(PAYLOAD)[:8])
    assert path.read_bytes() == PAYLOAD


def test_a_full_size_part_answered_416_is_checked_or_fetched_again(server, tmp_path):
    Handler.files["/gnd.pkl"], Handler.cut_after["/gnd.pkl"] = PAYLOAD, 30000
    with pytest.raises(DownloadError, match="Incomplete"):
        download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False, retries=1)
    part = tmp_path / "gnd.pkl.part"
    part.write_bytes(b"z" * len(PAYLOAD))  # full size, the record's ETag still matches: garbage all the same
    path = download_file(f"{server}/gnd.pkl", tmp_path / "gnd.pkl", progress=False)
    assert path.read_bytes() == PAYLOAD and Handler.requests[-1][1] is None  # fetched again from the start


def test_an_endless_body_is_cut_at_the_limit_and_deleted(server, tmp_path):
    Handler.files["/stream.bin"], Handler.endless = PAYLOAD, {"/stream.bin"}
    with pytest.raises(DownloadError, match=r"more than 1000000 bytes.*max_bytes"):
        download_file(f"{server}/stream.bin", tmp_path / "stream.bin", progress=False, retries=1, max_bytes=10 ** 6,
                      sha256_prefix="00000000")
    assert list(tmp_path.iterdir()) == []


def test_flattening_refuses_two_files_of_one_name_and_keeps_copies_once(tmp_path):
    first, second = tmp_path / "paris_1.tgz", tmp_path / "paris_2.tgz"
    first.write_bytes(make_tar({"paris/defense/x.jpg": b"one", "paris/defense/same.jpg": b"s"}))
    second.write_bytes(make_tar({"paris/eiffel/x.jpg": b"two", "paris/eiffel/same.jpg": b"s"}))
    with pytest.raises(DownloadError, match=r"paris_2.tgz: paris/eiffel/x.jpg and an earlier file both flatten to "
                                            r"x.jpg with different contents"):
        extract_archives([first, second], tmp_path / "jpg", flatten=True)
    assert not (tmp_path / "jpg").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    second.write_bytes(make_tar({"paris/eiffel/y.jpg": b"two", "paris/eiffel/same.jpg": b"s"}))
    extract_archives([first, second], tmp_path / "jpg", flatten=True)
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == ["same.jpg", "x.jpg", "y.jpg"]


def test_flattened_links_become_copies_and_links_that_would_leave_are_refused(tmp_path):
    archive = tmp_path / "nested.tgz"
    archive.write_bytes(make_tar({"set/a/x.jpg": b"x"}, {"set/a/b/c/link.jpg": "../../x.jpg"}))
    extract_archive(archive, tmp_path / "jpg", flatten=True)
    link = tmp_path / "jpg" / "link.jpg"
    assert not link.is_symlink() and link.read_bytes() == b"x"
    deep = "d/" * 8 + "link.jpg"  # inside the folder as unpacked, /etc/passwd once flattened
    archive.write_bytes(make_tar({"set/a/x.jpg": b"x"}, {deep: "../" * 8 + "etc/passwd"}))
    with pytest.raises(DownloadError, match=r"refusing archive link d/d/d/d/d/d/d/d/link.jpg in .*nested.tgz: it points "
                                            r"to (\.\./){8}etc/passwd, not to a file of the archive"):
        extract_archive(archive, tmp_path / "other", flatten=True)
    assert not (tmp_path / "other").exists()


def test_a_full_disk_stops_a_download_at_once_and_names_it(server, small_disk):
    from aml.utils.atomic import DiskFull
    from tests.conftest import fill_disk

    Handler.files["/big.bin"] = PAYLOAD
    disk = small_disk(1)
    fill_disk(disk, leave=16 << 10)
    with pytest.raises(DiskFull, match=f"no space left on the device for {disk}/big.bin.part while downloading "
                                       f"{server}/big.bin: free space and run again"):
        download_file(f"{server}/big.bin", disk / "big.bin", progress=False)
    assert len(Handler.requests) == 1 and not (disk / "big.bin").exists()


def test_a_member_named_like_the_unpacking_scratch_folder_is_an_ordinary_file(tmp_path):
    archive = tmp_path / "set.tgz"
    archive.write_bytes(make_tar({"set/a/x.jpg": b"x", "set/b/.unpacking": b"mine", ".unpacking/y.jpg": b"y"}))
    folder = extract_archive(archive, tmp_path / "jpg", flatten=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"x.jpg": b"x", ".unpacking": b"mine", "y.jpg": b"y"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jpg", "set.tgz"]


def test_a_file_put_by_hand_is_checked_once_against_the_hash_its_name_carries(server, tmp_path):
    """A file without an install record was trusted by its name: another network saved as
    retrievalSfM120k-vgg16-gem-b4dcdc6.pth loaded as the published one, its whitening applied."""
    from aml.data.download import DownloadError

    name = f"weights-{sha(PAYLOAD)[:7]}.pth"
    other = tmp_path / "other" / name
    other.parent.mkdir()
    other.write_bytes(b"another network")
    with pytest.raises(DownloadError, match=rf"{name} is not the file .* names: its sha256 begins [0-9a-f]{{7}}, not "
                                            rf"{sha(PAYLOAD)[:7]} .*move it away"):
        download_file(f"{server}/{name}", other, progress=False)
    assert other.read_bytes() == b"another network" and Handler.requests == []  # left as it is, nothing fetched
    right = tmp_path / name
    right.write_bytes(PAYLOAD)
    assert download_file(f"{server}/{name}", right, progress=False) == right and Handler.requests == []
    assert json.loads((tmp_path / f".{name}.download.json").read_text())["sha256"] == sha(PAYLOAD)


def test_processes_fetching_one_file_at_once_download_it_once(server, tmp_path):
    """Two processes (the ranks of a torchrun node, two jobs on one data root) wrote the same
    .part at once: the download failed as corrupt, or a file of both bodies was kept."""
    Handler.files["/shared.bin"] = PAYLOAD
    Handler.slow.add("/shared.bin")
    dest = tmp_path / f"shared-{sha(PAYLOAD)[:8]}.bin"
    results, errors = [], []

    def fetch():
        try:
            results.append(download_file(f"{server}/shared.bin", dest, progress=False))
        except Exception as err:  # noqa: BLE001 (any failure of either is the finding)
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and results == [dest, dest]
    assert dest.read_bytes() == PAYLOAD and [path for path, _ in Handler.requests] == ["/shared.bin"]


def test_jobs_preparing_one_set_at_once_fetch_and_unpack_it_once(server, tmp_path, monkeypatch):
    """Two jobs on one data root each unpacked the whole set into a staging folder of its own
    (twice the space: 100 GB more for the 1M distractors), and the first to finish deleted the
    archives the other was reading: a FileNotFoundError, or the archives fetched again."""
    from aml.data import distractors, download

    monkeypatch.setattr(distractors, "REVISITOP1M", f"{server}/revisitop/revisitop1m/")
    monkeypatch.setattr(distractors, "REVISITOP1M_ARCHIVES", 2)
    for i in (1, 2):
        Handler.files[f"/revisitop/revisitop1m/jpg/revisitop1m.{i}.tar.gz"] = make_tar({f"d{i}/img{i}.jpg": PAYLOAD})
    Handler.files["/revisitop/revisitop1m/revisitop1m.txt"] = b"d1/img1.jpg\nd2/img2.jpg\n"
    unpacking, real_extract = threading.Event(), download._extract
    results, errors = [], []

    def extract(archive, folder, progress):  # the second job unpacks slowly: the first one ends meanwhile
        if unpacking.is_set():
            time.sleep(0.5)
        unpacking.set()
        real_extract(archive, folder, progress)

    monkeypatch.setattr(download, "_extract", extract)

    def prepare(wait):
        try:
            if wait:  # the second job starts while the first one unpacks
                unpacking.wait(30)
            results.append(distractors.distractor_images("1m", tmp_path, progress=False))
        except Exception as err:  # noqa: BLE001 (any failure of either is the finding)
            errors.append(err)

    threads = [threading.Thread(target=prepare, args=(wait,)) for wait in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert sorted(path for path, _ in Handler.requests if "tar.gz" in path) == [
        "/revisitop/revisitop1m/jpg/revisitop1m.1.tar.gz", "/revisitop/revisitop1m/jpg/revisitop1m.2.tar.gz"]
    folder = tmp_path / "test" / "revisitop1m"
    assert not list(folder.glob(".*.staging")) and not list(folder.glob(".*.lock"))
    assert not list((folder / "archives").glob("*.tar.gz"))


def test_a_full_disk_while_unpacking_is_named_and_keeps_the_archives(tmp_path, small_disk):
    """A bare OSError (Errno 28), naming no file and no fix."""
    import random

    from aml.utils.atomic import DiskFull

    archive = tmp_path / "set.tgz"
    archive.write_bytes(make_tar({f"a/{k}.jpg": random.Random(k).randbytes(400_000) for k in range(6)}))
    disk = small_disk(1)
    with pytest.raises(DiskFull, match=rf"no space left on the device for {disk} while unpacking {archive}: free "
                                       r"space and run again \(the archives are kept"):
        extract_archive(archive, disk / "jpg")
    assert archive.is_file() and list(disk.iterdir()) == []


@pytest.mark.parametrize("page", [b"\xef\xbb\xbf<!DOCTYPE html>", b"<!-- portal -->\n<html>", b"<head><title>Login",
                                  b"\n<body>Not found</body>", b'<?xml version="1.0"?>\n<html xmlns="x">'])
def test_web_pages_of_every_opening_are_refused_where_a_file_was_asked_for(server, tmp_path, page):
    """Pages opening with a byte order mark, a comment, <head>, <body> or an XML declaration
    were installed as the file (a distractor list of the page's words)."""
    Handler.files["/revisitop1m.txt"] = page + b" ..." * 20
    with pytest.raises(DownloadError, match="the server sent a web page"):
        download_file(f"{server}/revisitop1m.txt", tmp_path / "revisitop1m.txt", progress=False)
    assert list(tmp_path.iterdir()) == []
