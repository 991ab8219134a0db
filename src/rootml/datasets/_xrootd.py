"""The XRootD client (XrdCl, through pyxrootd and fsspec-xrootd) in a process that forks.

XrdCl prepares for fork() in a pthread_atfork handler: it stops its threads and waits for each.
Python holds the GIL through os.fork(), so a client thread that is handing a reply to a Python
callback at that moment (fsspec-xrootd opens, reads and closes files asynchronously) waits for the
GIL while the forking thread waits for it: the process hangs inside fork() for good. A
DataLoader starting its workers after the main process read root:// files forks like that.

rootml turns XrdCl's handler off in the process and runs the same three steps (prepare, parent,
child) from Python's fork hooks through ctypes, which releases the GIL while XrdCl stops its
threads: a callback waiting for the GIL finishes, and then the fork goes ahead. Where the entry
points are missing (a build without them, not Linux) or XRD_RUNFORKHANDLER is set in the
environment (the user's choice), XrdCl's own handler stays in charge.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

# XrdCl::DefaultEnv::GetForkHandler() and XrdCl::ForkHandler::Prepare/Parent/Child(), the
# functions XrdCl's pthread_atfork handler calls (Itanium C++ ABI names, exported by libXrdCl).
_SYMBOLS = {
    "handler": "_ZN5XrdCl10DefaultEnv14GetForkHandlerEv",
    "prepare": "_ZN5XrdCl11ForkHandler7PrepareEv",
    "parent": "_ZN5XrdCl11ForkHandler6ParentEv",
    "child": "_ZN5XrdCl11ForkHandler5ChildEv",
}
# Held from the fork hooks' start to their end, so that switching XrdCl's handler off and ours on
# never straddles a fork made by another thread.
_lock = threading.Lock()
_steps: dict[str, Any] | None = None  # the ctypes functions while rootml's hooks are in charge
_tried = False
_prepared = False


def make_fork_safe() -> bool:
    """Put rootml's fork hooks in charge of XrdCl in this process (once; later calls are free).
    Call before the first XRootD request. Returns whether they are in charge."""
    global _steps, _tried
    if _tried:
        return _steps is not None
    with _lock:
        if not _tried:
            _tried = True
            steps = _entry_points()
            if steps is not None:
                from XRootD import client

                os.register_at_fork(before=_before, after_in_parent=_parent, after_in_child=_child)
                # Refused when XRD_RUNFORKHANDLER comes from the environment: it stands.
                if client.EnvPutInt("RunForkHandler", 0):
                    _steps = steps
    return _steps is not None


def _entry_points() -> dict[str, Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        from pyxrootd import client

        library = ctypes.CDLL(client.__file__)  # dlsym searches its dependency libXrdCl too
        steps = {name: getattr(library, symbol) for name, symbol in _SYMBOLS.items()}
    except (ImportError, OSError, AttributeError) as err:
        log.debug("XrdCl's fork handler stays in charge: %s", err)
        return None
    steps["handler"].argtypes, steps["handler"].restype = [], ctypes.c_void_p
    for name in ("prepare", "parent", "child"):
        steps[name].argtypes, steps[name].restype = [ctypes.c_void_p], None
    return steps


def _run(step: str) -> None:
    steps = _steps
    steps[step](steps["handler"]())


def _before() -> None:
    global _prepared
    _lock.acquire()
    _prepared = _steps is not None
    if _prepared:
        _run("prepare")  # stops XrdCl's threads; the GIL is free meanwhile


def _parent() -> None:
    if _prepared:
        _run("parent")
    _lock.release()


def _child() -> None:
    if _prepared:
        _run("child")  # new XrdCl threads for this process
    _lock.release()


def release_handle(source: Any) -> None:
    """Close now the XRootD handle that fsspec-xrootd keeps for the file of an uproot
    FSSpecSource (rootml has closed the file). fsspec-xrootd keeps every file it read open for
    30 s after its last read and then closes it from its event loop: without this a process
    would hold a handle for every file read in the last 30 s, and close them at random times."""
    fs = getattr(source, "_fs", None)
    path = getattr(source, "_file_path", None)
    if path is None or type(fs).__module__.split(".")[0] != "fsspec_xrootd":
        return
    try:
        fs.invalidate_cache(path)  # waits for the close (bounded by the filesystem's timeout)
    except Exception as err:  # a dead connection may fail to close; nothing is lost
        log.debug("closing the XRootD handle of %s failed: %s", path, err)
