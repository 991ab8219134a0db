"""Record every file system change a process makes, to see from outside rootml which rank writes.

Recorded: opening a file for writing, mkdir, rename, remove (the interpreter's audit events), and
torch.save to a path (torch writes those files from C++, which raises no audit event). One log
per process, FOLDER/<pid>.log: a JSON header (pid, parent pid, torchrun's RANK, LOCAL_RANK,
GROUP_RANK at start), then one tab-separated line per change: event, absolute path, and the RANK
variable at that moment (Ray Train sets it after its worker processes start).

`python _audited.py FOLDER MODULE ARGS...` runs MODULE as `python -m MODULE ARGS...` would
(torchrun's worker program in the tests); ray_worker_setup is a Ray `worker_process_setup_hook`
(FOLDER from ROOTML_AUDIT_DIR).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _paths(event: str, args: tuple) -> list:
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & WRITE_FLAGS
        return [path] if writes else []
    if event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "torch.save"):
        return [args[0]]
    if event == "os.rename":
        return [args[0], args[1]]
    return []


def install(folder: str) -> None:
    log = open(os.path.join(folder, f"{os.getpid()}.log"), "w", buffering=1)
    keys = ("RANK", "LOCAL_RANK", "GROUP_RANK")
    header = {"pid": os.getpid(), "ppid": os.getppid(), **{k: os.environ.get(k) for k in keys}}
    log.write(json.dumps(header) + "\n")

    def hook(event: str, args: tuple) -> None:
        for path in _paths(event, args):
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                log.write(f"{event}\t{path}\t{os.environ.get('RANK')}\n")

    sys.addaudithook(hook)
    import torch

    save = torch.save

    def audited_save(obj, f, *args, **kwargs):
        hook("torch.save", (f,))
        return save(obj, f, *args, **kwargs)

    torch.save = audited_save


def read(folder: Path, under: Path) -> list[dict]:
    """Per process: its header, and "changes": (event, path relative to `under`, RANK) for each
    change inside `under`."""
    found = []
    for log in sorted(folder.glob("*.log")):
        header, *lines = log.read_text().splitlines()
        changes = [line.split("\t") for line in lines]
        inside = [
            (event, Path(path).relative_to(under).as_posix(), rank)
            for event, path, rank in changes
            if Path(path).is_relative_to(under)
        ]
        found.append({**json.loads(header), "changes": inside})
    return found


def ray_worker_setup() -> None:
    install(os.environ["ROOTML_AUDIT_DIR"])


def main() -> None:
    folder, module, *arguments = sys.argv[1:]
    install(folder)
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
