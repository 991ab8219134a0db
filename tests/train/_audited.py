"""Run a module (`python _audited.py LOG_DIR MODULE ARGS...`) recording every file system change
the process makes: opening a file for writing, mkdir, rename, remove (the interpreter's audit
events), and torch.save to a path (torch writes those files from C++, which raises no audit
event). One log per process, LOG_DIR/<pid>.log: a JSON header (pid, parent pid, torchrun's RANK,
LOCAL_RANK, GROUP_RANK), then one tab-separated line per change (event, absolute path).

The tests launch it as torchrun's worker program, so what each rank wrote is observed from
outside rootml's own code."""

from __future__ import annotations

import json
import os
import runpy
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _paths(event: str, args: tuple) -> list:
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & WRITE_FLAGS
        return [path] if writes else []
    if event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
        return [args[0]]
    if event == "torch.save":
        return [args[0]]
    if event == "os.rename":
        return [args[0], args[1]]
    return []


def main() -> None:
    folder, module, *arguments = sys.argv[1:]
    log = open(os.path.join(folder, f"{os.getpid()}.log"), "w", buffering=1)
    keys = ("RANK", "LOCAL_RANK", "GROUP_RANK")
    header = {"pid": os.getpid(), "ppid": os.getppid(), **{k: os.environ.get(k) for k in keys}}
    log.write(json.dumps(header) + "\n")

    def hook(event: str, args: tuple) -> None:
        for path in _paths(event, args):
            if isinstance(path, (str, bytes, os.PathLike)):
                log.write(f"{event}\t{os.path.abspath(os.fsdecode(path))}\n")

    sys.addaudithook(hook)
    import torch

    save = torch.save

    def audited_save(obj, f, *args, **kwargs):
        hook("torch.save", (f,))
        return save(obj, f, *args, **kwargs)

    torch.save = audited_save
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
