"""http(s):// through fsspec: a loopback HTTP server with Range support serves the test files."""

from __future__ import annotations

import functools
import http.server
import re
import threading

import pytest
import torch

from rootml import FileAccessError, RootIterableDataset
from tests.conftest import DATA


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges (what uproot's fsspec HTTP source asks for)."""

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return super().send_head()
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return None
        start = int(match[1])
        stop = min(int(match[2]) + 1 if match[2] else len(data), len(data))
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        import io

        return io.BytesIO(data[start:stop])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_url():
    handler = functools.partial(RangeHandler, directory=str(DATA))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_reads_equal_local(http_url):
    options = dict(branches=["MET_px", "Jet_Px"], max_len=4, batch_size=500, chunk_size=800)
    remote = list(
        torch.utils.data.DataLoader(
            RootIterableDataset(f"{http_url}/uproot-HZZ.root", **options),
            batch_size=None,
            num_workers=2,
        )
    )
    local = list(
        torch.utils.data.DataLoader(
            RootIterableDataset(DATA / "uproot-HZZ.root", **options), batch_size=None, num_workers=2
        )
    )
    assert len(remote) == len(local)
    for a, b in zip(remote, local):
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["entry"], b["entry"])


def test_http_missing_file_names_the_url(http_url):
    with pytest.raises(FileAccessError, match="missing.root"):
        RootIterableDataset(f"{http_url}/missing.root", retries=0)
