"""`msmix download` against a real HTTP server on loopback: full, resumed, corrupt, missing, stalled, imported."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import msmix_cli.cli.data  # noqa: F401  (registers download and preprocess)
from msmix_cli.cli.app import app
from msmix_cli.data import download as download_module
from msmix_cli.data.download import HttpSettings, fetch, import_files
from msmix_cli.data.specs import DATASETS, RemoteFile
from msmix_cli.errors import BadInput, RunFailed
from msmix_cli.registry import Registry

runner = CliRunner()
FAST = HttpSettings(timeout=1.0, retries=0, backoff=0.0, chunk_size=1024)


class FileServer(ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes) with Range support; `cut` paths drop the connection halfway once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.ignore_range = False
        self.release = threading.Event()  # lets stalled handlers end at teardown
        self.stalling = False
        self.requests: list[tuple[str, str | None]] = []
        self.length_header: str | None = None  # sent instead of the true Content-Length
        self.range_from_zero = False  # a 206 whose Content-Range starts at 0 whatever was asked
        self.trickle = False  # one byte at a time, each as its own write
        self.redirects: dict[str, str] = {}  # path -> Location of a 302

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def handle_error(self, request, client_address) -> None:  # a client that timed out closes on us: expected
        pass


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.server.stalling:
            self.server.release.wait(5)  # far longer than the client waits
            return
        if self.path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = self._range_start()
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is None:
            self.send_response(200)
            start = 0
        else:
            self.send_response(206)
            if self.server.range_from_zero:
                start = 0
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start:]
        self.send_header("Content-Length", self.server.length_header or str(len(payload)))
        self.end_headers()
        if self.server.trickle:
            for position in range(len(payload)):
                if self.server.release.wait(0.05):  # until the client gives up (or the test ends)
                    return
                self.wfile.write(payload[position:position + 1])
                self.wfile.flush()
            return
        if self.path in self.server.cut:
            self.server.cut.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-body
            return
        self.wfile.write(payload)

    def _range_start(self) -> int | None:
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match is None or self.server.ignore_range:
            return None
        return int(match.group(1))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def body(size: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote(name: str, data: bytes | None = None, **kwargs) -> RemoteFile:
    return RemoteFile(name, f"http://example.invalid/files/{name}", sha(data) if data is not None else None, **kwargs)


def hdf5_bytes(size: int, seed: int) -> bytes:
    """A small HDF5 file (what a .csd is) holding `size` bytes of data."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("data", data=np.frombuffer(body(size, seed), dtype=np.uint8))
        return path.read_bytes()


def serve_mosi_mmsdk(server: FileServer) -> dict[str, bytes]:
    """Put the registry's four MOSI .csd paths on the server; returns file name -> bytes."""
    served = {}
    for number, file in enumerate(DATASETS.get("mosi").sources["mmsdk"]):
        data = hdf5_bytes(5000 + number * 1000, seed=number)
        server.files["/" + file.url.split("/", 3)[3]] = data
        served[file.name] = data
    return served


def test_full_download_through_the_cli_puts_every_file_in_place(server: FileServer, tmp_path: Path) -> None:
    served = serve_mosi_mmsdk(server)
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", server.base,
                                 "--data-root", str(tmp_path), "--retries", "0", "--timeout", "2"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "raw" / "mosi"
    for name, data in served.items():
        assert (folder / name).read_bytes() == data
    assert not list(folder.glob("*.part"))
    assert "downloaded" in result.stdout


def test_data_root_comes_from_the_environment(server: FileServer, tmp_path: Path) -> None:
    serve_mosi_mmsdk(server)
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", server.base,
                                 "--retries", "0"], env={"MSMIX_DATA_ROOT": str(tmp_path / "elsewhere")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "raw" / "mosi" / "CMU_MOSI_COVAREP.csd").is_file()


def test_a_present_file_is_skipped_without_a_request(server: FileServer, tmp_path: Path) -> None:
    data = body(3000)
    (tmp_path / "x.bin").write_bytes(data)
    outcome = fetch(remote("x.bin", data), tmp_path, replace(FAST, mirror=server.base), dataset="mosi")
    assert outcome.status == "present" and outcome.verified
    assert server.requests == []


def test_a_cut_connection_leaves_only_a_part_file_and_the_next_run_resumes_it(server: FileServer,
                                                                              tmp_path: Path) -> None:
    served = serve_mosi_mmsdk(server)
    covarep = "/CMU-MOSI/acoustic/CMU_MOSI_COVAREP.csd"
    server.cut.add(covarep)
    args = ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", server.base,
            "--data-root", str(tmp_path), "--retries", "0", "--timeout", "2"]
    first = runner.invoke(app, args)
    folder = tmp_path / "raw" / "mosi"
    assert first.exit_code == 1
    assert "CMU_MOSI_COVAREP.csd" in first.stderr and "--from" in first.stderr
    assert not (folder / "CMU_MOSI_COVAREP.csd").exists()
    part = folder / "CMU_MOSI_COVAREP.csd.part"
    kept = part.stat().st_size
    assert 0 < kept < len(served["CMU_MOSI_COVAREP.csd"])

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert (folder / "CMU_MOSI_COVAREP.csd").read_bytes() == served["CMU_MOSI_COVAREP.csd"]
    assert not part.exists()
    assert (covarep, f"bytes={kept}-") in server.requests


def test_a_retry_within_one_run_resumes_and_verifies(server: FileServer, tmp_path: Path) -> None:
    data = body(10_000)
    server.files["/files/y.bin"] = data
    server.cut.add("/files/y.bin")
    outcome = fetch(remote("y.bin", data), tmp_path, replace(FAST, retries=1, mirror=server.base), dataset="mosi")
    assert outcome.status == "downloaded" and outcome.verified
    assert (tmp_path / "y.bin").read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]


def test_a_server_that_ignores_the_range_restarts_the_file_cleanly(server: FileServer, tmp_path: Path) -> None:
    data = body(4000)
    server.files["/files/z.bin"] = data
    server.ignore_range = True
    (tmp_path / "z.bin.part").write_bytes(b"stale bytes from another file")
    fetch(remote("z.bin", data), tmp_path, replace(FAST, mirror=server.base), dataset="mosi")
    assert (tmp_path / "z.bin").read_bytes() == data


def test_a_checksum_mismatch_removes_the_download(server: FileServer, tmp_path: Path) -> None:
    server.files["/files/w.bin"] = body(2000)
    wrong = remote("w.bin", b"something else")
    with pytest.raises(RunFailed, match="checksum mismatch"):
        fetch(wrong, tmp_path, replace(FAST, mirror=server.base), dataset="mosi")
    assert list(tmp_path.iterdir()) == []


def test_a_checksum_mismatch_through_the_cli_exits_1(server: FileServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    served = serve_mosi_mmsdk(server)
    spec = DATASETS.get("mosi")
    files = tuple(replace(f, sha256=sha(b"not it")) for f in spec.sources["mmsdk"])
    registry = Registry("dataset")
    registry.register("mosi")(replace(spec, sources={"mmsdk": files}))
    monkeypatch.setattr(download_module, "DATASETS", registry)
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", server.base,
                                 "--data-root", str(tmp_path), "--retries", "0"])
    assert result.exit_code == 1
    assert "checksum mismatch" in result.stderr
    assert not any((tmp_path / "raw" / "mosi" / name).exists() for name in served)
    assert not list((tmp_path / "raw" / "mosi").glob("*.part"))


def test_a_missing_file_is_one_clear_message_and_exit_1(server: FileServer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", server.base,
                                 "--data-root", str(tmp_path), "--retries", "3"])
    assert result.exit_code == 1
    assert "HTTP 404" in result.stderr and server.base in result.stderr and "--from" in result.stderr
    assert "Traceback" not in result.output
    assert len(server.requests) == 1  # a 404 is not retried
    assert not list((tmp_path / "raw" / "mosi").iterdir())


def test_a_host_that_is_down_names_the_url_and_the_manual_route(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler) as probe:
        port = probe.server_address[1]  # closed when the block ends: nothing listens there any more
    mirror = f"http://127.0.0.1:{port}/"
    result = runner.invoke(app, ["download", "--dataset", "mosei", "--source", "mmsdk", "--mirror", mirror,
                                 "--data-root", str(tmp_path), "--retries", "0"])
    assert result.exit_code == 1
    assert f"{mirror}CMU-MOSEI/" in result.stderr and "msmix download --dataset mosei --from PATH" in result.stderr


def test_a_stalled_server_times_out(server: FileServer, tmp_path: Path) -> None:
    server.files["/files/s.bin"] = body(100)
    server.stalling = True
    with pytest.raises(RunFailed, match=r"no answer within 0.5 s"):
        fetch(remote("s.bin"), tmp_path, replace(FAST, timeout=0.5, mirror=server.base), dataset="mosi")
    assert not (tmp_path / "s.bin").exists()


def test_pickles_without_a_download_point_to_the_drive_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--data-root", str(tmp_path)])
    assert result.exit_code == 2
    assert "aligned_50.pkl" in result.stderr and "1A2S4pqCHryGmiqnNSPLv7rEg63WvjCSk" in result.stderr
    assert "--from" in result.stderr


def test_import_picks_the_file_with_the_published_checksum(tmp_path: Path) -> None:
    mosi, mosei = body(900, seed=3), body(900, seed=4)
    drive = tmp_path / "drive"
    for dataset, data in (("MOSI", mosi), ("MOSEI", mosei)):
        (drive / dataset / "Processed").mkdir(parents=True)
        (drive / dataset / "Processed" / "aligned_50.pkl").write_bytes(data)
    folder = tmp_path / "raw" / "mosei"
    [outcome] = import_files([remote("aligned_50.pkl", mosei)], drive, folder, dataset="mosei")
    assert outcome.status == "imported" and outcome.verified
    assert (folder / "aligned_50.pkl").read_bytes() == mosei
    assert not (folder / "aligned_50.pkl.part").exists()


def test_import_of_a_renamed_file_matches_by_checksum_and_links(tmp_path: Path) -> None:
    data = body(700)
    own = tmp_path / "aligned_50 (1).pkl"
    own.write_bytes(data)
    [outcome] = import_files([remote("aligned_50.pkl", data), remote("unaligned_50.pkl", b"x")], own,
                             tmp_path / "raw", dataset="mosi", link=True)
    assert outcome.name == "aligned_50.pkl" and outcome.detail.startswith("linked")
    assert (tmp_path / "raw" / "aligned_50.pkl").read_bytes() == data


def test_import_refuses_a_file_whose_checksum_differs(tmp_path: Path) -> None:
    (tmp_path / "aligned_50.pkl").write_bytes(b"a file made elsewhere")
    with pytest.raises(BadInput, match="not the published"):
        import_files([remote("aligned_50.pkl", b"the published bytes")], tmp_path / "aligned_50.pkl",
                     tmp_path / "raw", dataset="mosi")
    assert not (tmp_path / "raw" / "aligned_50.pkl").exists()


def test_import_through_the_cli_reports_what_it_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = body(600)
    spec = DATASETS.get("mosi")
    registry = Registry("dataset")
    registry.register("mosi")(replace(spec, sources={"mmsa": (remote("aligned_50.pkl", data, role="aligned"),
                                                               remote("unaligned_50.pkl", b"u", role="unaligned"))}))
    monkeypatch.setattr(download_module, "DATASETS", registry)
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "aligned_50.pkl").write_bytes(data)
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--from", str(tmp_path / "drive"),
                                 "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "imported" in result.stdout and "missing" in result.stdout
    assert (tmp_path / "data" / "raw" / "mosi" / "aligned_50.pkl").read_bytes() == data


def test_import_from_a_folder_without_the_files_is_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "--dataset", "sims", "--from", str(tmp_path),
                                 "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "found none of" in result.stderr


def test_csd_files_under_other_names_are_imported_with_features(tmp_path: Path) -> None:
    """Words and labels under their published names, COVAREP and FACET under the user's own."""
    folder, data = tmp_path / "mine", tmp_path / "data"
    folder.mkdir()
    for name in ("CMU_MOSI_TimestampedWordVectors.csd", "CMU_MOSI_Opinion_Labels.csd"):
        (folder / name).write_bytes(name.encode())
    (folder / "covarep.csd").write_bytes(b"audio")
    (folder / "facet41.csd").write_bytes(b"vision")
    wide = {"COLUMNS": "250"}  # one table row per file
    args = ["download", "--dataset", "mosi", "--source", "mmsdk", "--from", str(folder), "--data-root", str(data)]
    result = runner.invoke(app, args, env=wide)
    assert result.exit_code == 0, result.output
    missing = [line for line in result.stdout.splitlines() if "missing" in line]
    assert len(missing) == 2 and "--features audio=FILE" in missing[0] and "--features vision=FILE" in missing[1]
    result = runner.invoke(app, [*args, "--features", "audio=covarep.csd", "--features", "vision=facet41.csd"], env=wide)
    assert result.exit_code == 0, result.output
    raw = data / "raw" / "mosi"
    assert (raw / "CMU_MOSI_COVAREP.csd").read_bytes() == b"audio"
    assert (raw / "CMU_MOSI_Visual_Facet_41.csd").read_bytes() == b"vision"


@pytest.mark.parametrize("features, fragment", [
    ("covarep=covarep.csd", "audio (CMU_MOSI_COVAREP.csd)"),
    ("audio=nothere.csd", "nothere.csd is not a file"),
    ("audio", "ROLE=FILE"),
])
def test_bad_features_are_one_line_naming_what_is_expected(tmp_path: Path, features: str, fragment: str) -> None:
    (tmp_path / "covarep.csd").write_bytes(b"audio")
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--from", str(tmp_path),
                                 "--features", features, "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert fragment in " ".join(result.stderr.split())


# ------------------------------------------------------------------------ servers that misbehave (issue 11)

def one_error_line(result) -> str:
    """Every download error is one line of stderr: no blank line before it, nothing after it."""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), repr(result.stderr)
    return result.stderr.strip()


def cli_download(server: FileServer, tmp_path: Path, *more: str):
    return runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", server.base,
                               "--data-root", str(tmp_path), "--retries", "0", "--timeout", "5", *more])


def test_a_content_length_that_is_no_number_means_an_unknown_length(server: FileServer, tmp_path: Path) -> None:
    served = serve_mosi_mmsdk(server)
    server.length_header = "lots"
    result = cli_download(server, tmp_path)
    assert result.exit_code == 0, result.stderr
    assert all((tmp_path / "raw" / "mosi" / name).read_bytes() == data for name, data in served.items())


def test_a_deadline_bounds_a_server_that_trickles(server: FileServer, tmp_path: Path) -> None:
    """A byte every 50 ms never trips the per-read --timeout; --deadline ends the download."""
    serve_mosi_mmsdk(server)
    server.trickle = True
    result = cli_download(server, tmp_path, "--deadline", "1")
    assert result.exit_code == 1
    assert "not complete within --deadline 1 s" in one_error_line(result)


def test_a_206_from_the_wrong_place_is_not_appended(server: FileServer, tmp_path: Path) -> None:
    data = body(4000)
    server.files["/files/r.bin"] = data
    part = tmp_path / "r.bin.part"
    part.write_bytes(data[:1000])
    server.range_from_zero = True
    with pytest.raises(RunFailed, match="Content-Range 'bytes 0-3999/4000' for a request from byte 1000"):
        fetch(remote("r.bin"), tmp_path, replace(FAST, mirror=server.base), dataset="mosi")
    server.range_from_zero = False
    fetch(remote("r.bin", data), tmp_path, replace(FAST, mirror=server.base), dataset="mosi")  # afresh, and right
    assert (tmp_path / "r.bin").read_bytes() == data


@pytest.mark.parametrize("page", [b"<html><body>502 Bad Gateway</body></html>", b"\x89HDF\r\n\x1a\n" + b"\0" * 40])
def test_a_csd_that_is_no_hdf5_file_is_not_declared_downloaded(server: FileServer, tmp_path: Path, page: bytes) -> None:
    server.files["/files/x.csd"] = page
    with pytest.raises(RunFailed, match="did not send an HDF5 file"):
        fetch(remote("x.csd"), tmp_path, replace(FAST, mirror=server.base), dataset="mosi")
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_another_host_is_followed_and_shown(server: FileServer, tmp_path: Path) -> None:
    other = FileServer()
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        data = body(3000)
        other.files["/moved/m.bin"] = data
        server.redirects["/files/m.bin"] = other.base.replace("127.0.0.1", "localhost") + "moved/m.bin"
        seen: list[str] = []
        fetch(remote("m.bin", data), tmp_path, replace(FAST, mirror=server.base),
              progress=lambda name, done, total: seen.append(name), dataset="mosi")
        assert (tmp_path / "m.bin").read_bytes() == data
        assert seen and set(seen) == {f"m.bin (redirected to localhost:{other.server_address[1]})"}
    finally:
        other.shutdown()
        other.server_close()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x.csd"])
def test_a_redirect_off_the_web_is_bad_input_at_once(server: FileServer, tmp_path: Path, location: str) -> None:
    serve_mosi_mmsdk(server)
    first = DATASETS.get("mosi").sources["mmsdk"][0]
    server.redirects["/" + first.url.split("/", 3)[3]] = location
    result = cli_download(server, tmp_path, "--retries", "3")
    assert result.exit_code == 2
    assert f"redirects to {location}; only http and https" in one_error_line(result)
    assert len(server.requests) == 1  # refused, not retried


@pytest.mark.parametrize("mirror", ["file:///tmp/", "ftp://example.org/", "127.0.0.1:8000"])
def test_a_mirror_off_the_web_is_bad_input(tmp_path: Path, mirror: str) -> None:
    result = runner.invoke(app, ["download", "--dataset", "mosi", "--source", "mmsdk", "--mirror", mirror,
                                 "--data-root", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not an http:// or https:// address" in one_error_line(result)


def test_a_failed_download_is_one_line_after_files_that_came(server: FileServer, tmp_path: Path) -> None:
    """In a child process, as a user runs it, stderr a pipe: the bars of the files that came were printed there
    (after a blank line) before the error of the one that did not."""
    serve_mosi_mmsdk(server)
    server.files.pop("/" + DATASETS.get("mosi").sources["mmsdk"][-1].url.split("/", 3)[3])  # the last one: 404
    done = subprocess.run([sys.executable, "-m", "msmix_cli", "download", "--dataset", "mosi", "--source", "mmsdk",
                           "--mirror", server.base, "--data-root", str(tmp_path), "--retries", "0"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error:") and "HTTP 404" in done.stderr, repr(done.stderr)


def test_on_a_terminal_a_stalled_download_fails_in_one_line(server: FileServer, tmp_path: Path) -> None:
    """stderr a terminal (a pty): the live display, stopped before its first bar, ended with a blank line."""
    server.stalling = True
    serve_mosi_mmsdk(server)
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "msmix_cli", "download", "--dataset", "mosi", "--source", "mmsdk",
                                "--mirror", server.base, "--data-root", str(tmp_path), "--retries", "0", "--timeout", "1"],
                               stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    shown = b""
    while True:
        try:
            piece = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not piece:
            break
        shown += piece
    os.close(primary)
    assert process.wait(timeout=1800) == 1
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode()).replace("\r", "")
    assert text.startswith("error:") and text.count("\n") == 1 and "no answer within 1 s" in text, repr(text)
