"""Where each stage writes, relative to the project root (the DVC stages' working dir)."""
from pathlib import Path

DATA = Path("data")
MIRROR = DATA / "mirror"
CURATED = DATA / "curated"
CAPTIONS = DATA / "captions"
RENDERS = DATA / "renders"
MODELS = DATA / "models"
# Training checkpoints: scratch for resuming a killed run, not a stage output (DVC does not
# track it); a finished training removes its own.
CHECKPOINTS = DATA / "checkpoints"
DISTILL = DATA / "distill"
ABLATION = DATA / "ablation"
EVAL = DATA / "eval"
REPORT = DATA / "report"
