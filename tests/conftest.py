"""Shared fixtures: the real test files and a real XRootD server on a loopback port."""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rootml.datasets._files import xrootd_defaults

DATA = Path(__file__).parent / "data"
HZZ = DATA / "uproot-HZZ.root"
ZMUMU = DATA / "uproot-Zmumu.root"
RNTUPLE = DATA / "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"


# A test that hangs past its pytest-timeout limit by this much ends the run. pytest-timeout's
# SIGALRM handler (and its "thread" method's timer) are Python code: a thread stuck in C with the
# GIL held, such as a fork() waiting for a thread that waits for the GIL, never lets them run,
# and CI would hang until its own limit. faulthandler's watchdog is a C thread that needs no
# GIL: it prints every thread's stack to the terminal and exits with status 1.
HANG_GRACE_S = 60
_terminal_stderr: int | None = None


def pytest_configure(config):
    global _terminal_stderr
    with contextlib.suppress(AttributeError, OSError, ValueError):
        # Capturing is suspended while pytest configures: this is the terminal's stderr.
        _terminal_stderr = os.dup(sys.stderr.fileno())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    marker = item.get_closest_marker("timeout")
    given = item.config.getoption("timeout", None)
    if marker is not None and marker.args:
        limit = marker.args[0]
    else:
        limit = given if given is not None else item.config.getini("timeout")
    armed = bool(limit) and float(limit) > 0 and _terminal_stderr is not None
    if armed:
        faulthandler.dump_traceback_later(
            float(limit) + HANG_GRACE_S, exit=True, file=_terminal_stderr
        )
    try:
        return (yield)
    finally:
        if armed:
            faulthandler.cancel_dump_traceback_later()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under `root` -> sha256 of its bytes ("dir" for folders): equal
    digests mean a byte-identical tree."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class XRootDServer:
    """xrootd-server exporting `folder` on a loopback port; can be stopped and restarted."""

    def __init__(self, folder: Path, workdir: Path):
        self.folder, self.workdir = folder, workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.port}/{self.folder}/{name}"

    def start(self, ready_within: float = 60) -> None:
        """Start xrootd and wait until it is ready: its log says its initialization completed
        (it listens before that) and the port takes connections. Fails after `ready_within` s
        (generous: a loaded machine), with the end of its log."""
        config = self.workdir / "xrootd.cfg"
        config.write_text(
            f"xrd.port {self.port}\nall.export {self.folder}\nall.adminpath {self.workdir}\n"
        )
        log = self.workdir / "xrootd.log"
        seen = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
        command = ["xrootd", "-c", str(config), "-l", str(log)]
        if os.geteuid() == 0:
            command[1:1] = ["-R", "nobody"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._log_since(seen).find(f":{self.port} initialization completed") >= 0:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
            time.sleep(0.05)
        text = self._log_since(seen)
        self.stop()
        raise RuntimeError(
            f"xrootd did not become ready on port {self.port} within {ready_within} s:\n"
            f"{text[-2000:]}"
        )

    def _log_since(self, offset: int) -> str:
        log = self.workdir / "xrootd.log"
        if not log.exists():
            return ""
        with open(log, errors="replace") as text:
            text.seek(offset)
            return text.read()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _require_xrootd() -> None:
    if shutil.which("xrootd") is None:
        if os.environ.get("ROOTML_REQUIRE_XROOTD") == "1":
            pytest.fail(
                "ROOTML_REQUIRE_XROOTD=1 but no xrootd binary (apt-get install xrootd-server)"
            )
        pytest.skip(
            "no xrootd binary: apt-get install xrootd-server (set ROOTML_REQUIRE_XROOTD=1 to fail)"
        )


@contextlib.contextmanager
def running_xrootd(files):
    """A real xrootd-server serving copies of `files`, stopped (and cleaned up) on exit."""
    _require_xrootd()
    # The XRootD client of this process reads its settings once, when it loads: whichever test
    # loads it first (rootml, or uproot.open in a test) gets the ones rootml sets.
    xrootd_defaults()
    # Not under pytest's tmp folder: that one is private to root, and xrootd runs as nobody.
    base = Path(tempfile.mkdtemp(prefix="rootml-xrootd-"))
    folder, workdir = base / "export", base / "work"
    folder.mkdir()
    workdir.mkdir()
    for source in files:
        shutil.copy(source, folder / Path(source).name)
    for path in (base, folder, workdir, *folder.iterdir()):
        path.chmod(0o777 if path.is_dir() else 0o644)
    if os.geteuid() == 0:
        shutil.chown(workdir, "nobody")
    server = XRootDServer(folder, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def write_results(test: str, record: dict, default_folder: Path) -> Path:
    """Write a reliability test's figures as $ROOTML_RESULTS_DIR/<test id>.json (default:
    `default_folder`); scripts/reliability_report.py renders them into docs/reliability.md."""
    folder = Path(os.environ.get("ROOTML_RESULTS_DIR") or default_folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", test).strip("_") + ".json")
    path.write_text(json.dumps({"test": test, **record}, indent=1) + "\n")
    return path


@pytest.fixture
def results(request, tmp_path):
    """A dict a reliability test fills with its figures (faults injected, inputs refused, load);
    written by `write_results` at teardown when not empty."""
    record: dict = {}
    yield record
    if record:
        write_results(request.node.nodeid, record, tmp_path)


@pytest.fixture(scope="session")
def xrootd_server():
    """A real xrootd-server serving a copy of tests/data. Skips without the binary, unless
    ROOTML_REQUIRE_XROOTD=1 (CI), where a missing binary fails."""
    with running_xrootd(sorted(DATA.glob("*.root"))) as server:
        yield server
