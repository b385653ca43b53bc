"""Run per-item work in a child process so that an item that hangs or crashes costs only itself.

A renderer can hang in a GL driver or die with SIGSEGV on a pathological mesh; neither can
be caught in-process. ``IsolatedRunner`` starts one child interpreter per batch, feeds it
jobs one at a time over a pipe and waits for each result with a time-out. A job that
times out or kills the child becomes an error result naming why; the child is replaced and
the remaining jobs go on. Results already returned stay returned: the child writes its
outputs itself (atomically), so nothing it finished is lost.

The work is named, not pickled: ``target`` is "module:factory", and ``factory(init)`` is
called once in the child and returns the per-job function ``job -> dict``. Jobs, ``init``
and results are JSON. The protocol runs over a duplicate of the child's stdout; the child's
fd 1 is pointed at its stderr, so libraries that print cannot corrupt it.
"""
from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

JobFn = Callable[[dict[str, Any]], dict[str, Any]]


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Child:
    def __init__(self, target: str, init: dict[str, Any], env: dict[str, str]):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dreamline.isolation"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.send({"target": target, "init": init})

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message, or None on time-out; raises EOFError when the child is gone."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def stderr_tail(self, n: int = 400) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return text[-n:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.stderr.close()


class IsolatedRunner:
    """Runs ``target``'s job function over jobs in a child process, ``timeout_s`` per job.

    ``on_failure(job, reason)`` builds the result recorded for a job that timed out or whose
    child died; the default is ``{"error": reason}``. ``startup_timeout_s`` bounds the
    child's imports and set-up, which are not charged to the first job.
    """

    def __init__(self, target: str, init: dict[str, Any] | None = None, timeout_s: float = 60.0,
                 startup_timeout_s: float = 120.0, threads: int = 1,
                 on_failure: Callable[[dict[str, Any], str], dict[str, Any]] | None = None):
        self.target, self.init = target, dict(init or {})
        self.timeout_s, self.startup_timeout_s = timeout_s, startup_timeout_s
        self.on_failure = on_failure or (lambda job, reason: {"error": reason})
        self.env = dict(os.environ)
        # The child imports what this process can (tests, stage checkouts), with one thread
        # per native library: parallelism comes from running several children.
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LP_NUM_THREADS"):
            self.env[var] = str(threads)
        self.restarts = 0

    def _start(self) -> _Child:
        child = _Child(self.target, self.init, self.env)
        try:
            ready = child.receive(self.startup_timeout_s)
        except EOFError:
            ready = {"ready": False, "error": f"child {_describe_exit(child.proc.wait())}"}
        if not ready or not ready.get("ready"):
            reason = (ready or {}).get("error") or f"no answer within {self.startup_timeout_s:g}s"
            tail = child.stderr_tail()
            child.kill()
            raise RuntimeError(f"isolated worker {self.target} failed to start: {reason}\n{tail}")
        return child

    def run(self, jobs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        child = None
        try:
            for job in jobs:
                if child is None:
                    child = self._start()
                try:
                    child.send({"job": job})
                    result = child.receive(self.timeout_s)
                    reason = None if result is not None else f"timeout: no result after {self.timeout_s:g}s"
                except (EOFError, BrokenPipeError):
                    result, reason = None, None
                if result is None:
                    if reason is None:
                        child.proc.wait()
                        reason = f"worker crashed ({_describe_exit(child.proc.returncode)})"
                        tail = child.stderr_tail(200)
                        if tail:
                            reason += f": {tail}"
                    child.kill()
                    child, self.restarts = None, self.restarts + 1
                    result = self.on_failure(job, reason)
                yield result
        finally:
            if child is not None:
                child.kill()


def _load_factory(target: str) -> Callable[[dict[str, Any]], JobFn]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _serve() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints go to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        proto.write(json.dumps(message) + "\n")

    hello = json.loads(sys.stdin.readline())
    try:
        job_fn = _load_factory(hello["target"])(hello["init"])
    except Exception as err:  # reported to the parent, which raises with this reason
        send({"ready": False, "error": f"{type(err).__name__}: {err}"})
        return
    send({"ready": True})
    for line in sys.stdin:
        job = json.loads(line)["job"]
        send(job_fn(job))


if __name__ == "__main__":
    _serve()
