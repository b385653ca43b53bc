"""Where each stage writes, relative to the project root (the DVC stages' working dir), and
the one routine that confines a path that comes from data or params to the folder it must
stay in (`confine`, `confine_any`, `param_path`; UnsafePathError otherwise)."""
import os
from pathlib import Path
from typing import Iterable

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
EVAL_STUDIES = DATA / "eval_studies"
REPORT = DATA / "report"
REPORT_STUDIES = DATA / "report_studies"


# --- confinement: paths that come from data or params never lead outside their root -------

_MAX_LINKS = 40


class UnsafePathError(ValueError):
    """A path from data or params that leads outside the folder it must stay in."""


def _root_forms(root: str | os.PathLike) -> tuple[str, tuple[str, ...]]:
    """(real root, the spellings an absolute path inside it may start with)."""
    absolute = os.path.abspath(os.path.expanduser(os.fspath(root)))
    real = os.path.realpath(absolute)
    return real, tuple(dict.fromkeys((real, absolute)))


def _under(path: str, prefixes: tuple[str, ...]) -> str | None:
    """The part of absolute `path` below one of `prefixes` (lexically), or None."""
    for prefix in prefixes:
        if path == prefix:
            return ""
        head = prefix if prefix.endswith("/") else prefix + "/"
        if path.startswith(head):
            return path[len(head):]
    return None


def _toward(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether absolute `path` is one of `prefixes`, lies under one, or is (lexically) an
    ancestor of one."""
    head = path if path.endswith("/") else path + "/"
    return _under(path, prefixes) is not None or any(prefix.startswith(head) for prefix in prefixes)


def _walk(path: str, roots: list[tuple[str, tuple[str, ...]]], what: str, shown: str, where: str,
          start: str | None = None) -> str:
    """Resolve `path` one component at a time, like realpath, but without ever touching
    anything outside the roots: `..` may not climb above the root it is in, and a symbolic
    link is read (inside the root) and followed only when its target lies under a root.
    Relative paths start at the first root, or at `start` when given; an absolute one (or
    a link target) is taken lexically until it reaches a root, and refused as soon as a
    name in it leads away from all."""

    def refuse(why: str) -> UnsafePathError:
        return UnsafePathError(f"{what}: {shown!r} {why}, outside {where}; refused (nothing read there)")

    def enter(origin: str, parts: list[str], why: str) -> tuple[int, list[str]]:
        """From `origin` (a real directory, or '/'), follow `parts` lexically until they
        reach a root; refused when a name leads away from every root."""
        cur = origin
        for k in range(len(parts) + 1):
            for i, (_, prefixes) in enumerate(roots):
                rest = _under(cur, prefixes)
                if rest is not None:
                    return i, rest.split("/") + parts[k:]
            if k == len(parts):
                break
            part = parts[k]
            if part == "..":
                cur = os.path.dirname(cur)
            elif part not in ("", "."):
                cur = os.path.join(cur, part)
                if not any(_toward(cur, prefixes) for _, prefixes in roots):
                    break
        raise refuse(why)

    if "\x00" in path:
        raise refuse("holds a NUL byte")
    if start is not None and not os.path.isabs(path):
        current, parts = enter(os.path.realpath(start), path.split("/"), "climbs out")
    elif os.path.isabs(path):
        current, parts = enter("/", path.split("/"), "is an absolute path")
    else:
        current, parts = 0, path.split("/")
    cur = roots[current][0]
    todo = list(reversed(parts))
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if cur == roots[current][0]:  # out of this root: only into another one
                current, rest = enter(os.path.dirname(cur), list(reversed(todo)), "climbs out with '..'")
                cur = roots[current][0]
                todo = list(reversed(rest))
            else:
                cur = os.path.dirname(cur)
            continue
        step = os.path.join(cur, part)
        if os.path.islink(step):  # an lstat of a name inside the root
            links += 1
            if links > _MAX_LINKS:
                raise refuse("has too many levels of symbolic links")
            target = os.readlink(step)
            if os.path.isabs(target):
                link = os.path.relpath(step, roots[current][0])
                current, rest = enter("/", target.split("/"), f"goes through the symbolic link {link} -> {target}")
                cur = roots[current][0]
                todo.extend(reversed(rest))
            else:
                todo.extend(reversed(target.split("/")))
            continue
        cur = step
    return cur


def confine(path: str | os.PathLike, root: str | os.PathLike, what: str,
            relative_to: str | os.PathLike | None = None) -> Path:
    """`path` resolved, symbolic links and `..` included, and required to stay inside
    `root`; UnsafePathError naming `what` otherwise. A relative `path` is relative to
    `root`, or to `relative_to` when given (e.g. the working directory, for paths a stage
    wrote as it saw them). Nothing outside `root` is opened or stat'ed on the way."""
    real, prefixes = _root_forms(root)
    start = None if relative_to is None else os.path.abspath(os.fspath(relative_to))
    return Path(_walk(os.fspath(path), [(real, prefixes)], what, os.fspath(path), os.fspath(root), start))


def confine_any(path: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str,
                where: str | None = None) -> Path:
    """As `confine`, inside any of `roots`; a relative path is relative to the first.
    `where` names the roots in the error (default: the roots themselves)."""
    roots = list(roots)
    forms = [_root_forms(r) for r in roots]
    where = where or " and ".join(os.fspath(r) for r in roots)
    return Path(_walk(os.fspath(path), forms, what, os.fspath(path), where))


def param_path(value: str, key: str, project_root: str | os.PathLike | None = None,
               allowed_roots: Iterable[str | os.PathLike] = ()) -> Path:
    """A path-valued parameter resolved against the project root (the stages' working
    directory, '~' expanded) that must lie inside it or under one of `allowed_roots`
    (params `paths.allowed_roots`); UnsafePathError naming the key otherwise."""
    root = os.fspath(project_root) if project_root is not None else os.getcwd()
    allowed = [os.fspath(r) for r in allowed_roots]
    where = f"the project ({root}) and paths.allowed_roots ({', '.join(allowed) or 'none listed'})"
    try:
        return confine_any(os.path.expanduser(value), [root, *allowed], key, where)
    except UnsafePathError as err:
        raise UnsafePathError(f"{err}: move it into the project or list its folder in "
                              f"paths.allowed_roots") from None
