"""Run a stage (or script) that SIGKILLs its own process right after a chosen write lands.

    python tests/kill_after_write.py PATTERN COUNT [--before] -m MODULE [ARGS...]
    python tests/kill_after_write.py PATTERN COUNT [--before] SCRIPT.py [ARGS...]

Atomic writes end in a rename (`os.replace`; dreamline.atomic and most writers). This wraps
`os.replace` and `os.rename`: the COUNT-th rename whose destination path matches the regular
expression PATTERN (searched in the destination's POSIX path) lands, then the process SIGKILLs
itself, as an OOM killer or a pre-empted node would, with no chance to clean up. With
`--before`, it dies just before that rename instead: the file is written under its temporary
name and never appears under its own (a kill in the middle of a write).

The stage decides nothing about it and knows nothing of it; a test decides exactly where the
kill falls, whatever the speed of the machine. If the program ends without COUNT matching
renames, this exits with status 97 and says how many it saw, so a test that expects a kill
fails instead of silently testing nothing.

Writes made in other processes (Dask workers, spawned pools) are not seen: run the stage with
the thread task runner. Threads are counted together, under a lock.
"""
from __future__ import annotations

import os
import re
import runpy
import signal
import sys
import threading

NOT_KILLED = 97


def install(pattern: str, count: int, before: bool = False) -> dict:
    """Wrap os.replace / os.rename in this process; returns the live counter."""
    regex = re.compile(pattern)
    state = {"seen": 0}
    lock = threading.Lock()

    def die() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(real):
        def renamed(src, dst, *args, **kwargs):
            target = os.fsdecode(os.fspath(dst)).replace(os.sep, "/")
            if not regex.search(target):
                return real(src, dst, *args, **kwargs)
            with lock:                                 # one matching rename at a time
                state["seen"] += 1
                last = state["seen"] == count
                if last and before:
                    die()
                result = real(src, dst, *args, **kwargs)
                if last:
                    die()
                return result
        renamed.__wrapped__ = real
        return renamed

    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)
    return state


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit(__doc__)
    pattern, count, rest = argv[1], int(argv[2]), argv[3:]
    before = rest[0] == "--before"
    if before:
        rest = rest[1:]
    state = install(pattern, count, before)
    if rest[0] == "-m":
        module, args = rest[1], rest[2:]
        # As `python -m MODULE` would have it: the working directory first on the path.
        sys.path[0] = os.getcwd()
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as done:
            code = done.code
        else:
            code = 0
    else:
        script, args = rest[0], rest[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        sys.argv = [script, *args]
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as done:
            code = done.code
        else:
            code = 0
    print(f"kill_after_write: the program ended ({code!r}) after {state['seen']} of {count} renames "
          f"matching {pattern!r}; not killed", file=sys.stderr, flush=True)
    sys.exit(NOT_KILLED)


if __name__ == "__main__":
    main(sys.argv)
