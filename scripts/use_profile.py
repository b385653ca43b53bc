"""Switch this checkout's params.yaml to a profile: `python scripts/use_profile.py research
[--override small.yaml ...] [--check]`. Validates first; exit 2 names what is wrong and leaves
params.yaml as it was. `git checkout params.yaml` switches back.

A profile is a complete params file under profiles/ (e.g. the research scale). params.yaml
stays the one file DVC, `dvc exp run` and `dreamline lineage` read, so switching is a plain
edit of it that `dvc status` and `dvc params diff` show like any other. The profile's comments
are kept (round-trip YAML); an override's values replace the profile's, key by key. Nothing is
written unless the result validates (dreamline.config.parse_params)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import io  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from dreamline.atomic import write_bytes_atomic  # noqa: E402
from dreamline.config import Params, ParamsError, parse_params  # noqa: E402

PROFILES = "profiles"


def profile_path(name: str, root: str | Path = ".") -> Path:
    """`research` -> <root>/profiles/research.yaml; a path to a .yaml file is itself."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    path = Path(root) / PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(f.stem for f in (Path(root) / PROFILES).glob("*.yaml"))
        raise ParamsError(f"no profile {name!r} (known: {', '.join(known) or 'none'})")
    return path


def _merge(node, override: dict[str, Any], where: str) -> None:
    # A typed block's keys depend on its `<part>_type`: when the override changes the type,
    # its block replaces the profile's instead of merging into it.
    retyped = {k[: -len("_type")] for k, v in override.items()
               if k.endswith("_type") and node.get(k) != v}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(node.get(key), dict) and key not in retyped:
            _merge(node[key], value, f"{where}{key}.")
        else:
            node[key] = value


def _read_mapping(path: Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return raw


def compose(profile: str | Path, overrides: list[str | Path] = (), root: str | Path = ".") -> tuple[str, Params]:
    """(params.yaml text, validated params) of a profile with override files applied in order."""
    from ruamel.yaml import YAML

    path = profile_path(str(profile), root)
    _read_mapping(path)   # a clear error for a broken profile before ruamel sees it
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 100
    doc = rt.load(path.read_text())
    for extra in overrides:
        _merge(doc, _read_mapping(Path(extra)), "")
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    sources = " + ".join([str(path)] + [str(o) for o in overrides])
    params = parse_params(yaml.safe_load(text), sources, project_root=root)
    header = (f"# Written by `python scripts/use_profile.py` from {sources}.\n"
              f"# `git checkout params.yaml` returns to the committed parameters.\n")
    return header + text, params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", help="a name under profiles/ (research) or a .yaml path")
    ap.add_argument("--override", action="append", default=[], metavar="FILE",
                    help="a YAML file whose keys replace the profile's (repeatable, in order)")
    ap.add_argument("--check", action="store_true", help="validate only; write nothing")
    ap.add_argument("--out", default=str(ROOT / "params.yaml"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        text, _ = compose(args.profile, args.override, root=ROOT)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if not args.check:
        write_bytes_atomic(args.out, text.encode())
        print(f"params.yaml <- {args.profile}" + "".join(f" + {o}" for o in args.override))
    return 0


if __name__ == "__main__":
    sys.exit(main())
