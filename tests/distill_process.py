"""`dreamline.distill.loop.distill` as a process of its own, for tests that kill it:

    python distill_process.py PARAMS.json PROMPT WORK_DIR KEY

PARAMS.json is a DistillParams (`p.model_dump_json()`); the priors load from the model folders
it names. Run it under tests/kill_after_write.py to kill it at a chosen checkpoint write.
"""
from __future__ import annotations

import sys
from pathlib import Path

from dreamline.config import DistillParams
from dreamline.distill.loop import PriorCache, distill

if __name__ == "__main__":
    import torch

    params, prompt, work, key = sys.argv[1:5]
    p = DistillParams.model_validate_json(Path(params).read_text())
    # The process settings of the test process it is compared with (tests/conftest.py: the
    # params' one thread, denormals not flushed): they change the floats.
    torch.set_num_threads(p.threads)
    result = distill(p, prompt, PriorCache(), Path(work), key=key)
    print(f"distilled {prompt!r}: {result.steps} steps, resumed from {result.resumed_from}")
