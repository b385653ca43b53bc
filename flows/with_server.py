"""Run a command with one local Prefect server for all of it.

    python -m flows.with_server -- dvc repro [targets...]

Without PREFECT_API_URL every stage process (`python -m stages.<name>`) starts Prefect's
temporary server of its own, ~11 s each. This starts one (flows.serve.local_server, its output
in .prefect-server.log), runs the command with PREFECT_API_URL pointing at it, stops the server
however the command ends and exits with the command's exit code (128 + N when signal N ended
it). With PREFECT_API_URL already set it only runs the command. The server only records runs:
what the stages compute does not depend on it.

Signals: a Ctrl-C at the terminal reaches the command itself (it shares this process group;
dvc then lets the running stage stop); SIGTERM, SIGHUP, and a SIGINT not sent by the terminal
are passed on to the command. Either way this waits for the command, then stops the server.
Killed outright (SIGKILL), the server still ends: its watchdog sees this process go.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from flows.serve import local_server

SERVER_LOG = Path(".prefect-server.log")
_PASSED_ON = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _terminal_sent_it() -> bool:
    """Whether this process is in its terminal's foreground group: a Ctrl-C there has gone to
    the whole group, the command included, so passing it on would deliver it twice."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
    except OSError:                  # no controlling terminal (CI, nohup, a service)
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class _Signals:
    """While inside: SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt until a command has
    been started (`self.child`), and are passed on to it after (see the module's docstring)."""

    def __init__(self):
        self.child: Optional[subprocess.Popen] = None
        self.received: Optional[int] = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in _PASSED_ON}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.received = self.received or signum
        if self.child is None:
            raise KeyboardInterrupt(f"signal {signum}")
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        with contextlib.suppress(ProcessLookupError):
            self.child.send_signal(signum)


def run_command(cmd: list[str], env: Optional[dict], signals: _Signals) -> int:
    """Run `cmd` to its end; its exit code, 128 + N when signal N ended it, 127 when it cannot
    be started."""
    try:
        signals.child = subprocess.Popen(cmd, env=env)
    except OSError as err:
        print(f"with_server: cannot run {cmd[0]}: {err}", file=sys.stderr)
        return 127
    rc = signals.child.wait()         # PEP 475: a handled signal does not end the wait
    return 128 - rc if rc < 0 else rc


def with_server(cmd: list[str], log: Path = SERVER_LOG) -> int:
    """`cmd`'s exit code, run with a local Prefect server unless PREFECT_API_URL is set."""
    with _Signals() as signals:
        if os.environ.get("PREFECT_API_URL"):
            return run_command(cmd, None, signals)
        try:
            with local_server(log=log) as (url, proc):
                print(f"with_server: a local Prefect server (pid {proc.pid}) at {url}, its log in {log}",
                      file=sys.stderr, flush=True)
                return run_command(cmd, {**os.environ, "PREFECT_API_URL": url}, signals)
        except KeyboardInterrupt:     # a signal before the command started: the server is stopped
            return 128 + (signals.received or signal.SIGINT)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 0 if argv else 2
    return with_server(argv)


if __name__ == "__main__":
    sys.exit(main())
