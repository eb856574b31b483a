"""Downloads against a real HTTP server on 127.0.0.1 serving archives made in tmp_path."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial

import pytest

from recsys_mtl.data.download import DownloadError, download
from recsys_mtl.errors import UserError


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _archive(root, name="ml-latest-small", md5: str | None = None):
    path = root / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n")
        z.writestr(f"{name}/movies.csv", "movieId,title,genres\n1,A (1999),Drama\n")
    digest = md5 or hashlib.md5(path.read_bytes()).hexdigest()
    (root / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {digest}\n")


def test_download_checks_the_published_md5_and_extracts_into_place(server, tmp_path):
    root, url = server
    _archive(root)
    out = download("ml-latest-small", tmp_path / "data", base_url=url, progress=False)
    assert out == tmp_path / "data" / "ml-latest-small"
    assert (out / "ratings.csv").read_text().startswith("userId,")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ml-latest-small"]
    # a second call finds it in place and does not fetch again
    (root / "ml-latest-small.zip").unlink()
    assert download("ml-latest-small", tmp_path / "data", base_url=url, progress=False) == out


def test_a_checksum_mismatch_keeps_nothing(server, tmp_path):
    root, url = server
    _archive(root, md5="0" * 32)
    with pytest.raises(DownloadError, match="does not match the expected 0000"):
        download("ml-latest-small", tmp_path / "data", base_url=url, progress=False)
    assert not (tmp_path / "data").exists()  # the folder this call made is gone too
    (tmp_path / "kept").mkdir()
    with pytest.raises(DownloadError, match="does not match"):
        download("ml-latest-small", tmp_path / "kept", base_url=url, progress=False)
    assert list((tmp_path / "kept").iterdir()) == []  # a folder the user had stays


def test_a_failed_download_leaves_no_empty_data_folder(tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404|cannot connect"):
        download("ml-latest", tmp_path / "a" / "b", base_url="http://127.0.0.1:9/", timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_pinned_checksums_are_used_for_fixed_releases(server, tmp_path):
    root, url = server
    _archive(root, name="ml-100k")  # our archive cannot match GroupLens' published ml-100k MD5
    with pytest.raises(DownloadError, match="expected 0e33842e24a9c977be4e0107933c0723"):
        download("ml-100k", tmp_path / "data", base_url=url, progress=False)


def test_unknown_name_and_unreachable_server(tmp_path):
    with pytest.raises(UserError, match="unknown data set 'ml-5m'; known: ml-100k"):
        download("ml-5m", tmp_path)
    with pytest.raises(DownloadError, match=r"HTTP 404|cannot connect"):
        download("ml-latest", tmp_path, base_url="http://127.0.0.1:9/", progress=False, timeout=2)


def test_cli_exit_codes_for_download(server, tmp_path, cli):
    root, url = server
    _archive(root)
    code, out, _ = cli(
        "data", "download", "ml-latest-small", "--to", tmp_path / "d", "--base-url", url
    )
    assert code == 0 and out.strip().endswith("ml-latest-small")
    code, _, err = cli("data", "download", "ml-nope", "--to", tmp_path / "d")
    assert code == 2 and "unknown data set" in err
    code, _, err = cli("data", "download", "ml-100k", "--to", tmp_path / "e", "--base-url", "srv")
    assert (
        code == 2
        and err == "recsys-mtl: error: --base-url 'srv': expected an http:// or https:// URL\n"
    )
    code, _, err = cli("data", "download", "ml-100k", "--to", tmp_path / "e", "--timeout", "0")
    assert code == 2 and err == "recsys-mtl: error: --timeout: must be more than 0 seconds, got 0\n"
    assert not (tmp_path / "e").exists()
