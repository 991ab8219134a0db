"""Multi-node DDP through torchrun's c10d rendezvous: two torchrun agents on 127.0.0.1 act as two
nodes of two processes each (gloo on CPU), as docs/scaling.md tells a user to launch them on
two machines.

Checked from outside rootml: every training (file, entry) once per epoch over the four ranks
(rootml's debug record compared with the entry numbers the files hold); only global rank 0
changes anything in the run folder (an interpreter audit hook in every worker logs each file
written, created, renamed or removed); and a node killed mid-epoch (its agent and workers
SIGKILLed) rejoins after a relaunch, the job continuing from the last epoch's checkpoint to the
same metrics as the uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rootml.errors import ConfigError
from rootml.train.folder import check_run_folder
from tests.conftest import free_port
from tests.train import _audited
from tests.train.test_run import EXPECTED_TRAIN, PARAMS, trained_entries

pytestmark = pytest.mark.slow

AUDITED = Path(__file__).with_name("_audited.py")
EPOCHS = 2
# The ttH MLP; on the node whose environment names a marker file, the first training step taken
# once epoch 1's checkpoint exists creates the marker and hangs: a node failing mid-epoch 2 at a
# known point, whatever the machine's load (the test then kills that node).
MODEL = """import os
import time

import torch


class Stalling(torch.nn.Module):
    def __init__(self, idim):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(idim, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1), torch.nn.Sigmoid())

    def forward(self, x):
        marker = os.environ.get("STALL_MARKER")
        if marker and self.training and os.path.exists(os.environ["STALL_AFTER"]):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                while True:
                    time.sleep(1)
        return self.net(x)


def model(idim):
    return Stalling(idim)
"""
RUN_FILES = {
    "checkpoint.pt",
    *(f"checkpoints/epoch_{e:03d}.pt" for e in range(1, EPOCHS + 1)),
    *(f"debug/entries_epoch_{e:03d}.npz" for e in range(1, EPOCHS + 1)),
    "history.csv",
    "history.json",
    "model.py",
    "params.json",
    "specs.json",
    "summary.json",
    *(f"plots/{name}.png" for name in ("loss", "accuracy", "auc", "roc", "rejection", "scores")),
    "plots/roc.json",
    "plots/scores.json",
}


class TwoNodes:
    """Two torchrun agents (--nnodes=2 --nproc-per-node=2, c10d rendezvous on 127.0.0.1) running
    `rootml train` on the ttH files into one run folder (a shared file system between nodes)."""

    def __init__(self, tth_data: Path, folder: Path, torchrun: list[str], env: dict[str, str]):
        self.folder, self.torchrun = folder, torchrun
        self.run, self.audit = folder / "run", folder / "audit"
        self.audit.mkdir(parents=True)
        params, model = folder / "params.json", folder / "model.py"
        params.write_text(json.dumps({**PARAMS, "epochs": EPOCHS}))
        model.write_text(MODEL)
        self.train = ["--files", tth_data / "files.txt", "--labels", tth_data / "labels.txt"]
        self.train += ["--model", model, "--params", params, "--out", self.run, "--auto-resume"]
        # One thread per process (4 workers share 2 cores); gloo on the loopback interface only.
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **env}
        self.port = free_port()
        self.agents: list[subprocess.Popen] = []

    def launch(self, node: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2"]
        command += ["--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-id=rootml-test"]
        command += [f"--rdzv-endpoint=127.0.0.1:{self.port}", "--local-addr=127.0.0.1"]
        command += [f"--node-rank={node}", *self.torchrun]
        command += [AUDITED, self.audit, "rootml", "train", *self.train]
        log = open(self.folder / f"node{node}-{len(self.agents)}.log", "w")
        agent = subprocess.Popen(
            list(map(str, command)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.agents.append(agent)
        if node == 0:  # node 0 hosts the rendezvous store: the other node joins it
            _wait_for_port(self.port, agent)
        return agent

    def wait(self, agents: list[subprocess.Popen], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        for agent in agents:
            code = agent.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert code == 0, self.logs()

    def kill(self, agent: subprocess.Popen) -> None:
        """A node lost: SIGKILL its agent and every process under it (torchrun starts each
        worker in a session of its own, so a process group kill would miss them)."""
        for pid in [agent.pid, *_descendants(agent.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.wait(timeout=30)

    def close(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                self.kill(agent)
        for process in self.processes():  # workers whose agent died before them
            with contextlib.suppress(OSError):
                if str(self.audit) in Path(f"/proc/{process['pid']}/cmdline").read_text():
                    os.kill(process["pid"], signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n" + log.read_text()[-3000:]
            for log in sorted(self.folder.glob("node*.log"))
        )

    def processes(self) -> list[dict]:
        """Per worker process: its torchrun environment and what it changed under the run."""
        return _audited.read(self.audit, self.run)


def _wait_for_port(port: int, agent: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert agent.poll() is None, "the node-0 agent exited before its rendezvous store started"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no rendezvous store on 127.0.0.1:{port} after {timeout} s")


def _descendants(pid: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{name}/stat").read_text()
            parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


@contextlib.contextmanager
def two_nodes(tth_data, folder, torchrun=(), env=None):
    nodes = TwoNodes(tth_data, folder, list(torchrun), env or {})
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def uninterrupted(tth_data, tmp_path_factory):
    with two_nodes(tth_data, tmp_path_factory.mktemp("two-nodes")) as nodes:
        nodes.wait([nodes.launch(0), nodes.launch(1)])
        return nodes


def assert_each_entry_once_per_epoch(run: Path) -> None:
    uneven = False
    for epoch in range(1, EPOCHS + 1):
        keys, per_rank = trained_entries(run, epoch)
        np.testing.assert_array_equal(keys, EXPECTED_TRAIN)  # each once, none held out
        assert len(per_rank) == 4 and per_rank.min() > 0
        uneven |= len(set(per_rank)) > 1
    assert uneven  # 700-entry units over 4 ranks: ranks run out of batches at different steps


def assert_only_rank_0_writes(processes: list[dict], run: Path) -> None:
    """Every change inside the run folder came from global rank 0, and the folder holds exactly
    the files rank 0 writes, each written by it."""
    writers = {rank for p in processes for _, _, rank in p["changes"]}
    assert writers == {"0"}, [(p["pid"], p["changes"][:3]) for p in processes if p["changes"]]
    written = {path for p in processes for _, path, _ in p["changes"]}
    present = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert present == RUN_FILES
    assert present <= written


def test_two_nodes_train_every_entry_once_and_only_rank_0_writes(uninterrupted):
    nodes = uninterrupted
    processes = nodes.processes()
    # Two agents, each the parent of two workers: global ranks 0-3 over two "nodes".
    assert sorted(p["RANK"] for p in processes) == ["0", "1", "2", "3"]
    per_agent = {
        agent.pid: sorted(p["LOCAL_RANK"] for p in processes if p["ppid"] == agent.pid)
        for agent in nodes.agents
    }
    assert list(per_agent.values()) == [["0", "1"], ["0", "1"]]
    assert {p["GROUP_RANK"] for p in processes} == {"0", "1"}

    assert_each_entry_once_per_epoch(nodes.run)
    assert_only_rank_0_writes(processes, nodes.run)
    history = json.loads((nodes.run / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert all(row["train_events"] == 4500 and row["val_events"] == 1500 for row in history)
    summary = json.loads((nodes.run / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["epochs"] == EPOCHS


def test_a_node_killed_mid_epoch_rejoins_and_the_run_resumes(uninterrupted, tth_data, tmp_path):
    # --max-restarts: the surviving agent restarts its workers and waits in a new rendezvous
    # round for the relaunched node; every worker runs with --auto-resume, so the restarted job
    # continues from the run folder's last checkpoint. The relaunched agent joins a round that
    # node 0's agent started: torch shares node 0's agent store with the workers by default,
    # and a freshly started agent then waits forever for that store's address (torch 2.13), so
    # the recipe turns the sharing off.
    share = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    with two_nodes(tth_data, tmp_path, ["--max-restarts=1"], share) as nodes:
        marker = tmp_path / "stalled"
        stall = {"STALL_MARKER": str(marker), "STALL_AFTER": str(nodes.run / "checkpoints")}
        stall["STALL_AFTER"] += "/epoch_001.pt"
        node0 = nodes.launch(0)
        node1 = nodes.launch(1, stall)
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert node0.poll() is None and node1.poll() is None, nodes.logs()
            assert time.monotonic() < deadline, nodes.logs()
            time.sleep(0.2)
        # Inside epoch 2: epoch 1 is checkpointed, epoch 2 is not (a worker of node 1 hangs in it).
        assert not (nodes.run / "checkpoints" / "epoch_002.pt").exists()
        nodes.kill(node1)
        node1 = nodes.launch(1, stall)  # the marker exists: it does not hang again
        nodes.wait([node0, node1])

    processes = nodes.processes()
    # Node 0's agent restarted its two workers once; node 1 ran twice, in two agents.
    assert sorted(p["LOCAL_RANK"] for p in processes if p["ppid"] == node0.pid) == list("0011")
    assert len(processes) == 8 and len({p["ppid"] for p in processes}) == 3

    assert_each_entry_once_per_epoch(nodes.run)
    assert_only_rank_0_writes(processes, nodes.run)
    # Epoch 2 was re-run from its start from epoch 1's checkpoint on every rank: what the ranks
    # had trained of it before the kill is gone with their processes, so the result is the
    # uninterrupted run's (epoch 1 bit for bit; after the restart, up to the float rounding of
    # gradient all-reduces in a new process group).
    resumed = json.loads((nodes.run / "history.json").read_text())
    reference = json.loads((uninterrupted.run / "history.json").read_text())
    assert len(resumed) == EPOCHS
    for key in ("train_loss", "train_auc", "val_loss", "val_auc", "val_accuracy"):
        assert resumed[0][key] == reference[0][key]
        assert resumed[-1][key] == pytest.approx(reference[-1][key], abs=1e-6), key


def test_auto_resume_starts_an_empty_folder_and_continues_a_run(uninterrupted, tmp_path):
    # What lets the same command serve a job's first start and its restarts.
    assert check_run_folder(tmp_path / "new", "auto", False, EPOCHS) is None
    assert check_run_folder(uninterrupted.run, "auto", False, EPOCHS + 1) == EPOCHS
    with pytest.raises(ConfigError, match="holds no run"):
        check_run_folder(tmp_path / "new", True, False, EPOCHS)
