"""Where each stage writes, relative to the project root (the DVC stages' working dir)."""
from pathlib import Path

DATA = Path("data")
MIRROR = DATA / "mirror"
CURATED = DATA / "curated"
CAPTIONS = DATA / "captions"
RENDERS = DATA / "renders"
