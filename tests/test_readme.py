"""Every example of README.md runs as written: the ```python and ```bash blocks are read from the
README itself (an edited README is tested as it reads), and run in README order in one working
folder holding what `scripts/demo.sh` makes first (out/demo/data, from examples/tth/make_data.py,
with fewer events) and the repository's examples/. A python block runs in a fresh interpreter,
a bash block under `bash -euo pipefail`.

What is changed to run them here, and nothing else:
- port 8000 becomes a free loopback port (other servers may hold 8000);
- `rootml`, `python`, `python3` and `torchrun` are this interpreter's (shell functions), and
  `rootml serve`, which a reader runs in a terminal of its own, starts in the background and is
  waited for until ready (stopped at the end);
- curl fails on an HTTP error answer (--fail-with-body), as a reader would see one.
A block right after a `<!-- not run by tests/test_readme.py: REASON -->` line is not run: only the
set-up commands, which are what runs this test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EVENTS = 2000  # per file; the demo makes 20000
NOT_RUN = re.compile(r"<!-- not run by tests/test_readme.py: (.+?) -->")
PORT_8000 = re.compile(r"(?<=:)8000\b|(?<=--port )8000\b")

PRELUDE = r"""
set -euo pipefail
python() { "$README_PYTHON" "$@"; }
python3() { "$README_PYTHON" "$@"; }
torchrun() { "$README_PYTHON" -m torch.distributed.run "$@"; }
curl() { command curl --fail-with-body --show-error "$@"; }
rootml() {
  if [ "${1:-}" != serve ]; then "$README_PYTHON" -m rootml "$@"; return; fi
  setsid "$README_PYTHON" -m rootml "$@" </dev/null >>"$README_LOGS/serve.log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$README_LOGS/servers"
  for _ in $(seq 1200); do
    command curl -sf "http://127.0.0.1:$README_PORT/v2/health/ready" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "rootml serve did not become ready:" >&2; tail -30 "$README_LOGS/serve.log" >&2; return 1
}
"""


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    section: str
    not_run: str | None = None  # the reason given in the marker

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"line{self.line}-{self.language}-{slug}"


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with their language, line, section (the last `## `
    heading) and the reason of a not-run marker on the line before (blank lines skipped)."""
    blocks, section, previous, fence = [], "", "", None
    for number, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.strip() == "```":
                marker = NOT_RUN.search(fence["previous"])
                blocks.append(
                    Block(
                        fence["language"],
                        "\n".join(fence["lines"]) + "\n",
                        fence["line"],
                        section,
                        marker.group(1) if marker else None,
                    )
                )
                fence = None
            else:
                fence["lines"].append(line)
            continue
        if line.startswith("```"):
            language = line[3:].strip()
            fence = {"language": language, "lines": [], "line": number, "previous": previous}
        elif line.startswith("## "):
            section = line[3:].strip()
        if line.strip():
            previous = line
    if fence is not None:
        raise ValueError(f"unclosed code fence at line {fence['line']}")
    return blocks


BLOCKS = read_blocks(README.read_text())
RUN = [b for b in BLOCKS if b.language in ("python", "bash") and b.not_run is None]


def test_read_blocks_finds_languages_sections_and_markers() -> None:
    text = (
        "# T\n## One\ntext\n<!-- not run by tests/test_readme.py: CI runs it -->\n\n"
        "```bash\nbash a.sh\n```\n## Two words\n```python\nx = 1\n\ny = 2\n```\n```\ntree\n```\n"
    )
    assert read_blocks(text) == [
        Block("bash", "bash a.sh\n", 6, "One", "CI runs it"),
        Block("python", "x = 1\n\ny = 2\n", 10, "Two words"),
        Block("", "tree\n", 15, "Two words"),
    ]
    with pytest.raises(ValueError, match="line 2"):
        read_blocks("x\n```python\nopen\n")


def test_every_code_block_of_the_readme_is_run_or_says_why_not() -> None:
    languages = {b.language for b in BLOCKS}
    assert languages <= {"python", "bash", ""}, languages  # "": the layout tree, not code
    assert {b.language for b in RUN} == {"python", "bash"}
    not_run = [b for b in BLOCKS if b.not_run]
    assert [b.section for b in not_run] == ["Set-up: two commands"], not_run
    assert "scripts/test.sh" in not_run[0].code


class Session:
    """The README's blocks run in order in one working folder; each block runs once."""

    def __init__(self, folder: Path):
        self.folder, self.logs = folder, folder / ".readme"
        self.logs.mkdir()
        self.port = free_port()
        self.env = dict(
            os.environ,
            README_PYTHON=sys.executable,
            README_PORT=str(self.port),
            README_LOGS=str(self.logs),
            MPLBACKEND="Agg",
        )
        self.done: dict[int, subprocess.CompletedProcess] = {}

    def make_demo_data(self) -> None:
        (self.folder / "examples").symlink_to(ROOT / "examples")
        subprocess.run(
            [sys.executable, "examples/tth/make_data.py", "out/demo/data", "--events", str(EVENTS)],
            cwd=self.folder,
            check=True,
            capture_output=True,
            timeout=300,
        )

    def run_through(self, block: Block) -> subprocess.CompletedProcess:
        """Run every block before `block` not run yet, then `block`; its completed process."""
        for earlier in RUN[: RUN.index(block) + 1]:
            if earlier.line not in self.done:
                self.done[earlier.line] = self._run(earlier)
        return self.done[block.line]

    def failed_before(self, block: Block) -> list[int]:
        return [b.line for b in RUN[: RUN.index(block)] if self.done[b.line].returncode != 0]

    def _run(self, block: Block) -> subprocess.CompletedProcess:
        code = PORT_8000.sub(str(self.port), block.code)
        script = self.logs / f"{block.name}.{'py' if block.language == 'python' else 'sh'}"
        script.write_text(code if block.language == "python" else PRELUDE + code)
        command = [sys.executable if block.language == "python" else "bash", str(script)]
        try:
            return subprocess.run(
                command,
                cwd=self.folder,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=400,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(command, -1, err.stdout or "", f"timed out: {err}")

    def stop_servers(self) -> None:
        servers = self.logs / "servers"
        for pid in servers.read_text().split() if servers.exists() else []:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("readme"))
    session.make_demo_data()
    yield session
    session.stop_servers()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # with -k, the blocks before the chosen one run first
@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_readme_example_runs_as_written(session, block) -> None:
    done = session.run_through(block)
    if done.returncode != 0:
        earlier = session.failed_before(block)
        pytest.fail(
            f"README.md line {block.line} ({block.section}, {block.language}) failed "
            f"(exit {done.returncode}){f'; blocks failed before it: lines {earlier}' if earlier else ''}"
            f"\n--- block ---\n{block.code}--- stdout ---\n{done.stdout[-3000:]}"
            f"\n--- stderr ---\n{done.stderr[-5000:]}",
            pytrace=False,
        )


@pytest.mark.slow
def test_readme_scores_are_entry_aligned_and_served_equal_local(session) -> None:
    """What the README's predict examples wrote: a score per entry of each input (counted by
    uproot), the served model's scores equal to the local onnxruntime ones."""
    session.run_through(RUN[-1])
    out = session.folder / "out"
    data = out / "demo" / "data"
    local = uproot.open(out / "signal_jets.root")["Events"]["score"].array(library="np")
    for name in ("signal", "background"):
        served = uproot.open(out / "scores" / f"{name}_scores.root")["Events"]
        assert served.num_entries == uproot.open(data / f"{name}.root")["Events"].num_entries
    served = uproot.open(out / "scores" / "signal_scores.root")["Events"]["score"].array(
        library="np"
    )
    assert len(local) == EVENTS and np.all((local >= 0) & (local <= 1))
    np.testing.assert_allclose(served, local, atol=1e-6)
    assert pq.read_table(out / "all.parquet").num_rows == 2 * EVENTS
