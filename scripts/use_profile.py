"""Switch this checkout's params.yaml to a profile: `python scripts/use_profile.py research
[--override small.yaml ...] [--check]`. Validates first; exit 2 names what is wrong and leaves
params.yaml as it was. `git checkout params.yaml` switches back."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamline.atomic import write_bytes_atomic  # noqa: E402
from dreamline.config import ParamsError  # noqa: E402
from dreamline.profiles import compose  # noqa: E402


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
