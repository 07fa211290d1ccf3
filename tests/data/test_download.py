"""Downloads against a local HTTP server (a thread on 127.0.0.1)."""

import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from aml.data.download import DownloadError, download_file, extract_archive, hash_prefix_from_name

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


class Handler(http.server.BaseHTTPRequestHandler):
    files = {}
    cut_after = {}  # path -> bytes sent before the connection drops (once)
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.cut_after.pop(self.path, None)
        self.wfile.write(body[start:cut] if cut else body[start:])


@pytest.fixture
def server():
    Handler.files, Handler.cut_after, Handler.requests = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
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


def test_hash_mismatch_is_refused_and_nothing_lands(server, tmp_path):
    name = "weights-deadbee.pth"
    Handler.files["/" + name] = PAYLOAD
    with pytest.raises(DownloadError, match="Corrupt download"):
        download_file(f"{server}/{name}", tmp_path / name, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_url_names_url_and_destination(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download_file(f"{server}/gnd_roxford5k.pkl", tmp_path / "test" / "gnd_roxford5k.pkl", progress=False)
    assert "gnd_roxford5k.pkl" in str(info.value) and str(tmp_path / "test") in str(info.value)


def test_no_network_gives_manual_instructions(tmp_path):
    with pytest.raises(DownloadError, match="put it at"):
        download_file("http://127.0.0.1:9/ims.tar.gz", tmp_path / "ims.tar.gz", retries=2, progress=False)


def make_tar(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
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


def test_hash_prefix_parsing():
    assert hash_prefix_from_name("imagenet-caffe-vgg16-features-d369c8e.pth") == "d369c8e"
    assert hash_prefix_from_name("gnd_roxford5k.pkl") is None
