"""A download the network breaks, against a real HTTP server on 127.0.0.1: one line naming the
URL, exit 1, and no file left that looks like a download."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

SENT = b"PK\x03\x04" + b"x" * 96  # the first 100 bytes of a 1,000-byte archive


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "stall"  # stall | close | silent
    release: threading.Event

    def do_GET(self) -> None:
        if self.mode == "silent":  # accept the connection, never answer
            self.release.wait(30)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(SENT)
        self.wfile.flush()
        if self.mode == "stall":
            self.release.wait(30)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"mode": request.param, "release": release})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("server", ["stall"], indirect=True)
def test_a_download_that_stalls_ends_in_one_line_naming_the_url_and_the_timeout(
    server, tmp_path, cli
):
    (tmp_path / "data").mkdir()
    start = time.monotonic()
    code, _, err = cli(
        "data", "download", "ml-100k", "--to", tmp_path / "data", "--base-url", server,
        "--timeout", "1",
    )  # fmt: skip
    took = time.monotonic() - start
    line = _one_line(err)
    assert code == 1
    assert line.startswith(f"recsys-mtl: error: {server}ml-100k.zip: the download stalled")
    assert "nothing received for 1 s after 100 bytes" in line
    assert took < 10
    assert list((tmp_path / "data").iterdir()) == []  # no partial file, no folder


@pytest.mark.parametrize("server", ["close"], indirect=True)
def test_a_connection_closed_early_keeps_nothing_and_says_how_much_came(server, tmp_path, cli):
    code, _, err = cli(
        "data", "download", "ml-100k", "--to", tmp_path / "new" / "data", "--base-url", server,
        "--timeout", "5",
    )  # fmt: skip
    line = _one_line(err)
    assert code == 1
    assert f"{server}ml-100k.zip: the server closed the connection after 100 of 1,000" in line
    assert list(tmp_path.iterdir()) == []  # the folders this command made are gone too


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_a_server_that_never_answers_times_out_in_one_line(server, tmp_path, cli):
    code, _, err = cli(
        "data", "download", "ml-latest-small", "--to", tmp_path, "--base-url", server,
        "--timeout", "1",
    )  # fmt: skip
    line = _one_line(err)
    assert code == 1
    assert (
        line
        == f"recsys-mtl: error: {server}ml-latest-small.zip.md5: no answer within 1 s; nothing kept"
    )
    assert list(tmp_path.iterdir()) == []
