"""A render job function that hangs or crashes on chosen uids (named by env vars), for tests."""
from __future__ import annotations

import os
import signal
import time

from dreamline.rendering.views import object_job


def faulty_object_job(init):
    real = object_job(init)
    hang = set(filter(None, os.environ.get("DREAMLINE_TEST_HANG", "").split(",")))
    crash = set(filter(None, os.environ.get("DREAMLINE_TEST_CRASH", "").split(",")))

    def job(j):
        if j["uid"] in hang:
            time.sleep(3600)
        if j["uid"] in crash:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(j)

    return job
