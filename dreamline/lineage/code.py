"""What code a module or function can run, from its imports (static, no code is executed).

`closure("stages.train_base")` is every repository file the stage's entry point can run:
module-level and function-level imports alike, and "package.module:function" strings handed
to importlib or to a child process. `closure("dreamline.rendering.views:render_object")`
narrows the start to one function: its body, the module's top level, and the top-level
functions and classes of that module it names, then onwards through what they import.

Two users: scripts/stage_deps.py derives dvc.yaml's code deps from the stages' entry points,
and per-object caches (curate, render, caption, distill) key their work on `code_digest` of
the function that does it, so a code change invalidates exactly the work it can change.
"""
from __future__ import annotations

import ast
import hashlib
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dreamline", "flows", "tasks", "stages")
_REF = re.compile(r"^((?:%s)(?:\.\w+)*)(?::\w+)?$" % "|".join(PACKAGES))


def module_file(module: str) -> Path | None:
    """The file of a repository module (a package's __init__.py), or None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_parents(module: str) -> list[str]:
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


# A "symbol" is (module, unit): unit None is what runs when the module is imported (its
# top-level statements, decorators and defaults), unit "*" is the whole module, and a name
# is one top-level function or class with everything inside it.
Symbol = tuple[str, "str | None"]


class _Refs(ast.NodeVisitor):
    """What a piece of code refers to: modules and symbols it imports, "module:function"
    strings, and names (possibly top-level units of its own module)."""

    def __init__(self):
        self.symbols: set[Symbol] = set()
        self.names: set[str] = set()

    def visit_Import(self, node):
        for alias in node.names:
            self.symbols.update((m, None) for m in _with_parents(alias.name))
            self.symbols.add((alias.name, "*"))   # used through attributes: all of it

    def visit_ImportFrom(self, node):
        if not node.module or node.level:
            return
        self.symbols.update((m, None) for m in _with_parents(node.module))
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            self.symbols.add((sub, "*") if module_file(sub) else (node.module, alias.name))

    def visit_Constant(self, node):
        m = _REF.match(node.value) if isinstance(node.value, str) else None
        if m and ("." in m.group(1) or ":" in node.value):
            module, _, func = node.value.partition(":")
            self.symbols.update((p, None) for p in _with_parents(module))
            self.symbols.add((module, func or "*"))

    def visit_Name(self, node):
        self.names.add(node.id)


def _refs(nodes) -> _Refs:
    r = _Refs()
    for n in nodes:
        r.visit(n)
    return r


@lru_cache(maxsize=None)
def _units(module: str) -> dict:
    """unit -> (symbols it refers to, local unit names it uses) for one module."""
    tree = ast.parse(module_file(module).read_text(), str(module_file(module)))
    defs = {n.name: n for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    body = [n for n in tree.body if not (hasattr(n, "name") and defs.get(n.name) is n)]
    # What a def runs at import time: decorators, defaults, base classes, annotations.
    for d in defs.values():
        body.extend(d.decorator_list)
        if isinstance(d, ast.ClassDef):
            body.extend(d.bases)
        else:
            body.extend(d.args.defaults + d.args.kw_defaults)
    units = {None: _refs([n for n in body if n is not None])}   # kw_defaults may hold None
    for name, d in defs.items():
        units[name] = _refs([d])
    return {u: (r.symbols, r.names & set(defs)) for u, r in units.items()}


def _visit(symbol: Symbol) -> list[Symbol]:
    module, unit = symbol
    units = _units(module)
    if unit == "*":
        names = list(units)
    elif unit is None or unit in units:
        names = [None, unit]
    else:   # a name the module imports from elsewhere (a re-export): all of it, to be safe
        names = list(units)
    out: list[Symbol] = []
    for u in names:
        symbols, local = units[u]
        out.extend(symbols)
        out.extend((module, n) for n in local)
    return out


@lru_cache(maxsize=None)
def closure(entry: str) -> tuple[str, ...]:
    """Repository files whose code `entry` ("module" or "module:function") can run,
    relative to the root, sorted."""
    module, _, func = entry.partition(":")
    if module_file(module) is None:
        raise ValueError(f"{entry}: not a module of this repository")
    seen: set[Symbol] = set()
    todo: list[Symbol] = [(m, None) for m in _with_parents(module)] + [(module, func or "*")]
    while todo:
        symbol = todo.pop()
        if symbol in seen or module_file(symbol[0]) is None:
            continue
        seen.add(symbol)
        todo.extend(s for s in _visit(symbol) if s not in seen)
    return tuple(sorted({str(module_file(m).relative_to(ROOT)) for m, _ in seen}))


@lru_cache(maxsize=None)
def code_digest(*entries: str) -> str:
    """sha256 over the files (paths and bytes) of the closures of `entries` (read once per
    process: a running stage keys its work on the code it started with)."""
    h = hashlib.sha256()
    for rel in sorted(set().union(*(closure(e) for e in entries))):
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()
