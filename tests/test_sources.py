"""Downloads (cellgraph.io.sources, `cellgraph sources`) against a local HTTP server on 127.0.0.1 serving vendored real files."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from cellgraph.cli import main
from cellgraph.io.sources import DownloadError, fetch

REPO = Path(__file__).resolve().parents[1]
# Real STRING v12 yeast files, vendored in resources/networks/yeast.
SERVED = REPO / "resources" / "networks" / "yeast" / "4932.protein.info.v12.0.txt.gz"
OTHER = REPO / "resources" / "networks" / "yeast" / "4932.protein.physical.links.v12.0.txt.gz"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Paths: /good/F serves F; /truncated/F announces the full length and sends half of it;
    /flaky/F answers 500 on the first request of F, then serves it; /down/F always answers 503."""

    protocol_version = "HTTP/1.1"
    counts: dict = {}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        mode, _, name = self.path.strip("/").partition("/")
        type(self).counts[self.path] = type(self).counts.get(self.path, 0) + 1
        body = (SERVED.parent / name).read_bytes()
        if mode == "down" or (mode == "flaky" and type(self).counts[self.path] == 1):
            self.send_response(503 if mode == "down" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncated":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.counts
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_verifies_and_is_cached(server, tmp_path):
    base, counts = server
    url = f"{base}/good/{SERVED.name}"
    dest = tmp_path / "dl" / SERVED.name
    rec = fetch("string_info_yeast", url, _sha(SERVED), dest, retries=0, timeout=10)
    assert dest.read_bytes() == SERVED.read_bytes()
    assert rec["sha256"] == _sha(SERVED) and rec["bytes"] == SERVED.stat().st_size
    assert rec["action"] == "download"
    assert _leftovers(dest.parent) == [SERVED.name]  # no temporary file left behind
    n = counts[f"/good/{SERVED.name}"]
    rec2 = fetch("string_info_yeast", url, _sha(SERVED).upper(), dest, retries=0, timeout=10)
    assert rec2["action"] == "cached" and counts[f"/good/{SERVED.name}"] == n  # no second transfer


def test_checksum_mismatch_deletes_and_names_digests(server, tmp_path):
    base, _ = server
    dest = tmp_path / "dl" / SERVED.name
    wrong = _sha(OTHER)  # a real digest, of another file
    with pytest.raises(DownloadError) as err:
        fetch("string_info_yeast", f"{base}/good/{SERVED.name}", wrong, dest, retries=0, timeout=10)
    msg = str(err.value)
    assert "string_info_yeast" in msg and wrong in msg and _sha(SERVED) in msg
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_truncated_transfer_fails_cleanly_after_retries(server, tmp_path):
    base, counts = server
    path = f"/truncated/{SERVED.name}"
    dest = tmp_path / "dl" / SERVED.name
    with pytest.raises(DownloadError) as err:
        fetch("string_info_yeast", base + path, _sha(SERVED), dest, retries=1, timeout=10)
    assert "string_info_yeast" in str(err.value) and "2 attempt(s)" in str(err.value)
    assert counts[path] == 2  # first attempt plus one retry
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_server_error_then_success_on_retry(server, tmp_path):
    base, counts = server
    path = f"/flaky/{OTHER.name}"
    dest = tmp_path / "dl" / OTHER.name
    rec = fetch("string_physical_yeast", base + path, _sha(OTHER), dest, retries=2, timeout=10)
    assert counts[path] == 2  # 500 first, then the file
    assert rec["sha256"] == _sha(OTHER) and dest.read_bytes() == OTHER.read_bytes()


def test_server_down_names_source_and_url(server, tmp_path):
    base, counts = server
    path = f"/down/{SERVED.name}"
    with pytest.raises(DownloadError) as err:
        fetch("hint_binary_human", base + path, _sha(SERVED), tmp_path / "x.txt", retries=0, timeout=10)
    assert "hint_binary_human" in str(err.value) and path in str(err.value) and "503" in str(err.value)
    assert not (tmp_path / "x.txt").exists()


def test_unpinned_digest_is_reported_not_trusted(server, tmp_path, capsys):
    base, _ = server
    dest = tmp_path / "dl" / SERVED.name
    rc = main(["sources", "--name", "tflink_yeast", "--url", f"{base}/good/{SERVED.name}", "--sha256", "null",
               "--retries", "0", "--out", str(dest)])
    err = capsys.readouterr().err
    assert rc == 2 and "tflink_yeast" in err and _sha(SERVED) in err and "no sha256 pinned" in err
    assert not dest.exists()


def test_malformed_digest_refused_before_any_transfer(server, tmp_path):
    base, counts = server
    path = f"/good/{OTHER.name}?never"
    with pytest.raises(DownloadError, match="64 hexadecimal"):
        fetch("biogrid", base + path, "abc123", tmp_path / "b.zip")
    assert path not in counts
