"""Each DVC stage's code dependencies, derived from what its entry point imports.

A stage's command is `python -m stages.<name> ...`; its code is the transitive closure of the
repository modules that `stages/<name>.py` imports (module-level and function-level imports
alike, and "package.module:function" strings handed to importlib or to a child process).
Only files of this repository count; data and other deps in dvc.yaml are left as they are.

    python scripts/stage_deps.py            # show each stage's derived code deps
    python scripts/stage_deps.py --check    # exit 1 naming missing / superfluous deps
    python scripts/stage_deps.py --write    # rewrite the code deps in dvc.yaml
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dreamline.lineage.code import PACKAGES, closure  # noqa: E402

_ENTRY = re.compile(r"python -m (stages\.\w+)")


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def _stage_blocks(dvc: dict):
    for name, stage in dvc["stages"].items():
        block = stage.get("do", stage)
        m = _ENTRY.search(block["cmd"] if isinstance(block["cmd"], str) else " ".join(block["cmd"]))
        if m:
            yield name, block, m.group(1)


def derived(dvc: dict) -> dict[str, list[str]]:
    return {name: list(closure(entry)) for name, _, entry in _stage_blocks(dvc)}


def differences(dvc: dict) -> dict[str, dict[str, list[str]]]:
    """Per stage: code deps dvc.yaml lacks ("missing") and lists without importing them
    ("superfluous"; a directory listed as a dep is superfluous as a whole)."""
    out = {}
    for name, block, entry in _stage_blocks(dvc):
        want = set(closure(entry))
        have = {d for d in block.get("deps", []) if is_code(d)}
        missing, extra = sorted(want - have), sorted(have - want)
        if missing or extra:
            out[name] = {"missing": missing, "superfluous": extra}
    return out


def write(path: Path) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    dvc = yaml.load(path.read_text())
    for _, block, entry in _stage_blocks(dvc):
        other = [d for d in block.get("deps", []) if not is_code(d)]
        deps = block["deps"]
        deps.clear()
        deps.extend(list(closure(entry)) + other)
    with path.open("w") as f:
        yaml.dump(dvc, f)


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    a = parser.parse_args(argv)
    if a.write:
        write(a.dvc_yaml)
        return 0
    dvc = yaml.safe_load(a.dvc_yaml.read_text())
    if a.check:
        diff = differences(dvc)
        for name, d in diff.items():
            for kind in ("missing", "superfluous"):
                if d[kind]:
                    print(f"{name}: {kind} {', '.join(d[kind])}")
        if diff:
            print("run `python scripts/stage_deps.py --write` to regenerate the code deps", file=sys.stderr)
        return 1 if diff else 0
    for name, files in derived(dvc).items():
        print(f"{name} ({len(files)}): {' '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
