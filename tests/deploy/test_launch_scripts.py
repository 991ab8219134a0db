"""deploy/slurm and deploy/htcondor: the multi-node training launchers.

No batch system runs here: each script runs under bash with stand-ins for the batch system's
commands (scontrol, srun; condor_config_val, condor_chirp, hostname) that behave as those do for
a two-node job, and for torchrun, which records its arguments. The recorded command line is then
parsed by torchrun's own argument parser and checked against `rootml train`'s options.
shellcheck lints both scripts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from torch.distributed.run import get_args_parser

DEPLOY = Path(__file__).parents[2] / "deploy"
SCRIPTS = [DEPLOY / "slurm" / "rootml-train.sbatch", DEPLOY / "htcondor" / "torchrun-node.sh"]


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def recorder(folder: Path, name: str) -> None:
    """`name` writes its arguments, one per line, into $RECORD."""
    stub(folder, name, 'printf "%s\\n" "$@" > "$RECORD"\n')


def run(script: Path, folder: Path, env: dict[str, str], record: Path, *args: str) -> list[str]:
    env = {
        **os.environ,
        **env,
        "PATH": f"{folder / 'bin'}:{os.environ['PATH']}",
        "RECORD": str(record),
    }
    result = subprocess.run(
        ["bash", script, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return record.read_text().splitlines()


def train_options() -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "rootml", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"--[a-z][a-z-]*", result.stdout))


def check_torchrun(arguments: list[str], options: set[str]):
    """The arguments parsed as torchrun parses them; they run `rootml train` with known options,
    resuming from the run folder's checkpoint."""
    parsed = get_args_parser().parse_args(arguments)
    assert parsed.module and parsed.training_script == "rootml"
    command, *train = parsed.training_script_args
    assert command == "train"
    assert {a for a in train if a.startswith("--")} <= options
    assert "--auto-resume" in train and os.path.isabs(train[train.index("--out") + 1])
    assert parsed.rdzv_backend == "c10d" and parsed.max_restarts > 0
    return parsed


def test_shellcheck_finds_nothing():
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run([shellcheck, *SCRIPTS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_slurm_script_starts_one_agent_per_node_meeting_on_the_first(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    # One host a line, the second written after a pause, as a long list can be: a reader that
    # stops after the first line (head -n 1) then SIGPIPEs it, which pipefail makes fatal.
    stub(
        bin_,
        "scontrol",
        '[ "$1 $2" = "show hostnames" ] && echo gpu17 && sleep 0.2 && echo gpu18\n',
    )
    # srun runs its command once per task; one run stands for them (same arguments on each).
    stub(bin_, "srun", 'while [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    recorder(bin_, "torchrun")
    slurm = {"SLURM_JOB_NODELIST": "gpu[17-18]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242"}
    slurm |= {"SLURM_JOB_NAME": "rootml-train", "SLURM_CPUS_PER_TASK": "32"}
    parsed = check_torchrun(
        run(SCRIPTS[0], tmp_path, slurm, tmp_path / "torchrun.args"), train_options()
    )
    assert (parsed.nnodes, parsed.nproc_per_node) == ("2", "4")
    assert (parsed.rdzv_endpoint, parsed.rdzv_id) == ("gpu17:29500", "4242")


def test_htcondor_nodes_find_node_0_through_the_job_ad(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    ad = tmp_path / "job.ad"
    stub(bin_, "condor_config_val", f'[ "$1" = LIBEXEC ] && echo "{bin_}"\n')
    stub(
        bin_,
        "condor_chirp",
        f'case "$1" in\n  set_job_attr) echo "$3" > "{ad}.$2" ;;\n'
        f'  get_job_attr) cat "{ad}.$2" 2>/dev/null || echo UNDEFINED ;;\nesac\n',
    )
    stub(bin_, "hostname", 'echo "node$_CONDOR_PROCNO.cluster.example"\n')
    recorder(bin_, "python3")
    script = tmp_path / "torchrun-node.sh"
    script.write_text(SCRIPTS[1].read_text())
    options = train_options()
    for node in (0, 1):
        condor = {"_CONDOR_PROCNO": str(node), "_CONDOR_NPROCS": "2", "_CONDOR_CLUSTER_ID": "77"}
        record = tmp_path / f"node{node}.args"
        arguments = run(script, tmp_path, condor, record, "4", str(tmp_path / "runs" / "tth"))
        # The script's first words are `python3 -m torch.distributed.run`.
        assert arguments[:2] == ["-m", "torch.distributed.run"]
        parsed = check_torchrun(arguments[2:], options)
        assert (parsed.nnodes, parsed.node_rank, parsed.nproc_per_node) == ("2", node, "4")
        assert parsed.rdzv_endpoint == "node0.cluster.example:29500"  # node 1 read node 0's
        assert parsed.rdzv_id == "condor-77"
