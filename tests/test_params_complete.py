"""params.yaml is the one source of truth of the parameters, and dvc.yaml's `params:` say
what each stage's code reads (issue 16).

1. Every leaf of the validated model is written in params.yaml with its value, including the
   typed blocks that are validated separately (the representation block, every guidance term
   a stage can use, the captioner block), and the code's defaults equal those values, so a
   default edited in dreamline/config.py cannot change a result behind DVC's back.

2. A stage's `params:` in dvc.yaml list what its code reads, no more and no less.

   What a stage reads is found statically, from the code: the stage's entry module
   (`stages/<name>.py`, named by its `cmd`), the `before=` hook and the flow it hands to
   `run_stage`, and every function those call that is defined in `flows/` or `stages/`
   (resolved through their imports). In each, the attribute chains on the `Params` argument
   (`params.distill.camera.radius`) are cut where they leave the model's fields (a method
   such as `model_copy`) and recorded; `getattr(params, k)` is resolved when `k` runs over
   a module-level tuple of names (the report's sections).

   Why static rather than running each flow with a recording proxy: the flows are the only
   code that sees the whole `Params` (tasks and the library get one section, which DVC
   tracks whole or by the sub-keys listed), so the question "which sections" is answered
   by ~15 small functions; reading them is deterministic, takes milliseconds, needs no
   models, data or Prefect server, and sees every branch (a proxy sees only the branches a
   given run takes, e.g. not `captioner_type == "image"`). Anything it cannot resolve (the
   whole `Params` handed to a function outside flows/ and stages/, a `getattr` with a
   computed name, a library module importing `Params` or loading a params file itself)
   fails the test rather than passing silently.

   `execution` (how shards run) and `paths` (only refuses) are read but never change an
   output, so no stage may list them. A few keys of a section a stage lists by sub-key
   are run settings, not inputs (RUN_ONLY); each is checked to be left out of the cache
   key that decides whether the output is recomputed.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from dreamline.config import Params, load_params
from dreamline.guidance.configs import GUIDANCES

REPO = Path(__file__).resolve().parents[1]

# Read by every stage (or by validation) but never change an output: not DVC params.
NOT_DEPS = {"execution", "paths"}
# Keys that never change an output (the device and the number of data-parallel processes
# agree within float tolerance); compute.precision does, and is a dependency.
NOT_DEP_KEYS = {("compute", "device"), ("compute", "processes")}
# Keys of a section listed by sub-key that are run settings, not inputs: checkpoint and log
# cadence and torch threads. distill_key leaves exactly these out (checked below).
RUN_ONLY = {("distill", "checkpoint_every"), ("distill", "log_every"), ("distill", "threads")}


# ----------------------------------------------------------------- 1. params.yaml complete

def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf; lists and empty mappings are leaves."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _terms(p: Params) -> list[str]:
    """Every guidance term a stage can use: distill's guidance_type, each ablation type, and
    every block written."""
    used = set(p.distill.guidance_terms) | set(p.distill.guidance)
    for g in p.ablation.guidance_types:
        used |= {t.strip() for t in g.split("+") if t.strip()}
    return sorted(used)


def resolved(p: Params) -> dict:
    """The validated params as JSON, typed blocks expanded to their effective values."""
    d = p.model_dump(mode="json")
    d["caption"]["captioner"] = p.caption.captioner_config().model_dump(mode="json")
    d["distill"]["representation"] = p.distill.representation_config().model_dump(mode="json")
    d["distill"]["guidance"] = {t: p.distill.guidance_config(t).model_dump(mode="json") for t in _terms(p)}
    return d


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_every_effective_parameter_is_written_in_params_yaml():
    effective = _flat(resolved(load_params(REPO / "params.yaml", project_root=REPO)))
    written = _flat(_raw())
    missing = sorted(set(effective) - set(written))
    assert not missing, (f"{len(missing)} parameter(s) have a value only in code; add them to params.yaml "
                         f"with these values:\n  " + "\n  ".join(f"{k}: {effective[k]!r}" for k in missing))
    differ = sorted(k for k in effective if written[k] != effective[k])
    assert not differ, "params.yaml values that validation changes:\n  " + "\n  ".join(
        f"{k}: written {written[k]!r}, used {effective[k]!r}" for k in differ)


def test_code_defaults_equal_params_yaml():
    """A default in dreamline/config.py that differs from params.yaml is a second, silent
    source of truth (what a partial params file, a test or a notebook gets)."""
    written = _flat(resolved(load_params(REPO / "params.yaml", project_root=REPO)))
    defaults = _flat(resolved(Params()))
    differ = sorted(k for k in set(written) | set(defaults)
                    if written.get(k, "<absent>") != defaults.get(k, "<absent>"))
    assert not differ, "code defaults that differ from params.yaml:\n  " + "\n  ".join(
        f"{k}: code {defaults.get(k, '<absent>')!r}, params.yaml {written.get(k, '<absent>')!r}" for k in differ)


def test_a_missing_key_is_named():
    """The check above on a params file with one key and one guidance block taken out."""
    raw = _raw()
    del raw["train_caa"]["train"]["grad_clip"]
    del raw["distill"]["guidance"]["ism"]
    from dreamline.config import parse_params

    effective = _flat(resolved(parse_params(raw, "params.yaml", project_root=REPO)))
    missing = set(effective) - set(_flat(raw))
    assert "train_caa.train.grad_clip" in missing and "distill.guidance.ism.delta_t" in missing


# ----------------------------------------------------------------- 2. what stages read

def _model_fields(model: type[BaseModel]) -> dict[str, Any]:
    return {name: f.annotation for name, f in model.model_fields.items()}


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Union:
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def field_chain(attrs: list[str]) -> tuple[str, ...]:
    """The longest prefix of `attrs` that names fields of Params (methods end it)."""
    model: type[BaseModel] | None = Params
    out: list[str] = []
    for a in attrs:
        if model is None or a not in model.model_fields:
            break
        out.append(a)
        model = _as_model(model.model_fields[a].annotation)
    return tuple(out)


def model_at(chain: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Params
    for a in chain:
        if model is None or a not in model.model_fields:
            return None
        model = _as_model(model.model_fields[a].annotation)
    return model


def key_exists(chain: tuple[str, ...]) -> bool:
    model: type[BaseModel] | None = Params
    for a in chain:
        if model is None:
            return True          # inside a mapping-valued field (prompts.<slug>, guidance.<term>)
        if a not in model.model_fields:
            return False
        model = _as_model(model.model_fields[a].annotation)
    return True


class _Module:
    def __init__(self, name: str):
        self.name = name
        self.path = REPO / (name.replace(".", "/") + ".py")
        self.tree = ast.parse(self.path.read_text(), str(self.path))
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.imports: dict[str, tuple[str, str]] = {}
        self.constants: dict[str, tuple[str, ...]] = {}
        for n in ast.walk(self.tree):     # function-level imports too
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                for a in n.names:
                    self.imports[a.asname or a.name] = (n.module, a.name)
        for n in self.tree.body:
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                    and isinstance(n.value, (ast.Tuple, ast.List)) \
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in n.value.elts):
                self.constants[n.targets[0].id] = tuple(e.value for e in n.value.elts)


@lru_cache(maxsize=None)
def _module(name: str) -> _Module:
    return _Module(name)


def _in_scope(module: str) -> bool:
    return module.split(".")[0] in ("flows", "stages") and (REPO / (module.replace(".", "/") + ".py")).is_file()


def _resolve(module: str, name: str) -> tuple[str, ast.AST] | None:
    """(module, function node) of `name` as seen from `module`, if it is defined in flows/ or stages/."""
    m = _module(module)
    if name in m.functions:
        return module, m.functions[name]
    if name in m.imports:
        target, attr = m.imports[name]
        if _in_scope(target):
            return _resolve(target, attr)
    return None


def _root_param(fn: ast.AST) -> str | None:
    """The argument that receives the whole Params: annotated `Params`, or named `params`."""
    args = fn.args.posonlyargs + fn.args.args
    for a in args:
        if (isinstance(a.annotation, ast.Name) and a.annotation.id == "Params") or a.arg == "params":
            return a.arg
    return None


class _Reads(ast.NodeVisitor):
    """Attribute chains on the Params argument of one function, and the in-scope calls it makes."""

    def __init__(self, module: str, root: str | None, passed_on: set[int]):
        self.module, self.root = module, root
        self.passed_on = passed_on          # ids of `root` names handed to in-scope functions
        self.chains: set[tuple[str, ...]] = set()
        # Keys replaced in a copy of the whole params handed on as the run's params
        # (`s = params.<section>.model_copy(update={k: ...})`, then
        # `params.model_copy(update={"<section>": s})`): what reads the copy reads the
        # replacement, never the params value.
        self.replaced: set[tuple[str, ...]] = set()
        self._copies: dict[str, set[tuple[str, ...]]] = {}
        self._last_copy: set[tuple[str, ...]] | None = None
        self.calls: list[tuple[str, ast.AST]] = []
        self.unknown: list[str] = []
        self.loops: dict[str, str] = {}     # comprehension / for target -> iterated module constant

    def _where(self, node: ast.AST) -> str:
        return f"{self.module}:{node.lineno}"

    def _attrs(self, node: ast.AST) -> list[str] | None:
        attrs = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == self.root:
            return attrs[::-1]
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attrs = self._attrs(node)
        if attrs is None:
            self.generic_visit(node)
            return
        chain = field_chain(attrs)
        if chain:
            self.chains.add(chain)
        elif attrs != ["model_copy"]:
            self.unknown.append(f"{self._where(node)}: params.{'.'.join(attrs)} uses the whole params")
        # params.model_copy(update=...) (the ablation's run): the copy is handed to an in-scope
        # flow, analysed as a call; the update's values are visited as the call's arguments.

    def _track_loop(self, gens: list) -> None:
        for g in gens:
            if isinstance(g.target, ast.Name) and isinstance(g.iter, ast.Name) \
                    and g.iter.id in _module(self.module).constants:
                self.loops[g.target.id] = g.iter.id

    def visit_ListComp(self, node):  # noqa: N802
        self._track_loop(node.generators)
        self.generic_visit(node)

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp  # noqa: N815

    def visit_For(self, node: ast.For) -> None:  # noqa: N802
        self._track_loop([node])
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:  # noqa: N802
        self._last_copy = None
        self.generic_visit(node)
        if self._last_copy and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self._copies[node.targets[0].id] = self._last_copy

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "model_copy":
            chain = field_chain(self._attrs(f.value) or [])
            update = next((k.value for k in node.keywords if k.arg == "update"), None)
            if chain and isinstance(update, ast.Dict) \
                    and all(isinstance(k, ast.Constant) for k in update.keys):
                keys = {k.value for k in update.keys}
                self._last_copy = {chain + (k,) for k in keys}
                self.chains |= {chain + (name,) for name in model_at(chain).model_fields if name not in keys}
                for v in update.values:
                    self.visit(v)
                return
            if self._attrs(f.value) == [] and isinstance(update, ast.Dict):
                for v in update.values:
                    if isinstance(v, ast.Name) and v.id in self._copies:
                        self.replaced |= self._copies[v.id]
        if isinstance(f, ast.Name) and f.id == "getattr" and node.args \
                and isinstance(node.args[0], ast.Name) and node.args[0].id == self.root:
            what = node.args[1]
            if isinstance(what, ast.Constant):
                names: tuple[str, ...] = (what.value,)
            elif isinstance(what, ast.Name) and what.id in self.loops:
                names = _module(self.module).constants[self.loops[what.id]]
            else:
                self.unknown.append(f"{self._where(node)}: getattr on params with a computed name")
                names = ()
            for n in names:
                if field_chain([n]):
                    self.chains.add(field_chain([n]))
            for a in node.args[2:]:
                self.visit(a)
            return
        if isinstance(f, ast.Name):
            target = _resolve(self.module, f.id)
            if target is not None:
                self.calls.append(target)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:  # noqa: N802
        # The whole Params used other than through an attribute: fine when it goes to an
        # in-scope function (analysed), unknown otherwise.
        if node.id == self.root and id(node) not in self.passed_on:
            self.unknown.append(f"{self._where(node)}: the whole params used where this test cannot follow it")


def _bare_root_ok(module: str, fn: ast.AST, root: str) -> set[int]:
    """ids of Name nodes of `root` that are arguments of calls to in-scope functions."""
    ok = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and _resolve(module, node.func.id):
            for a in list(node.args) + [k.value for k in node.keywords]:
                if isinstance(a, ast.Name) and a.id == root:
                    ok.add(id(a))
    return ok


def reads_of(entries: list[tuple[str, ast.AST]]) -> tuple[set[tuple[str, ...]], list[str]]:
    """Params field chains read by these functions and every in-scope function they call."""
    seen: set[int] = set()
    chains: set[tuple[str, ...]] = set()
    replaced: set[tuple[str, ...]] = set()
    unknown: list[str] = []
    todo = list(entries)
    while todo:
        module, fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        root = _root_param(fn)
        visitor = _Reads(module, root, _bare_root_ok(module, fn, root) if root else set())
        body = fn.body if isinstance(fn.body, list) else [fn.body]
        for stmt in body:
            visitor.visit(stmt)
        chains |= visitor.chains
        replaced |= visitor.replaced
        unknown += visitor.unknown
        todo += visitor.calls
    return _without(chains, replaced), unknown


def _without(chains: set[tuple[str, ...]], replaced: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Chains less the replaced keys: a whole section that holds one is read field by field."""
    out = set()
    for c in chains:
        if any(_is_prefix(r, c) for r in replaced):
            continue
        if any(_is_prefix(c, r) for r in replaced) and model_at(c) is not None:
            out |= _without({c + (f,) for f in model_at(c).model_fields}, replaced)
        else:
            out.add(c)
    return out


def stage_entries(cmd: str) -> list[tuple[str, ast.AST]]:
    """The flow and `before=` hook that `python -m stages.<name>` hands to run_stage."""
    m = re.search(r"python -m (stages\.\w+)", cmd)
    assert m, f"not a stage entry point: {cmd!r}"
    module = m.group(1)
    calls = [n for n in ast.walk(_module(module).tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "run_stage"]
    assert len(calls) == 1, f"{module}: expected one run_stage(...) call"
    call = calls[0]
    flow_mod, flow_fn = call.args[1].value.split(":")
    target = _resolve(flow_mod, flow_fn)
    assert target, f"{module}: flow {call.args[1].value} not found"
    entries = [target]
    for kw in call.keywords:
        if kw.arg == "before":
            if isinstance(kw.value, ast.Lambda):
                entries.append((module, kw.value))
            else:
                assert isinstance(kw.value, ast.Name), f"{module}: before= must be a name or a lambda"
                found = _resolve(module, kw.value.id)
                assert found, f"{module}: before={kw.value.id} not found"
                entries.append(found)
    return entries


def dvc_stages() -> dict[str, tuple[str, list[str]]]:
    """stage -> (cmd, params entries); foreach stages have them under `do:`."""
    out = {}
    for name, st in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = st.get("do", st)
        params = body.get("params", [])
        assert all(isinstance(p, str) for p in params), f"{name}: params from another file than params.yaml"
        # A matrix axis (ablation.guidance_types) chooses which instances exist; an instance
        # reads its own item of it, so listing the whole list would rerun every instance.
        AXES[name] = {tuple(v[2:-1].split(".")) for v in (st.get("matrix") or {}).values()
                      if isinstance(v, str) and v.startswith("${")}
        out[name] = (body["cmd"], params)
    return out


AXES: dict[str, set[tuple[str, ...]]] = {}


def listed_chain(entry: str) -> tuple[str, ...]:
    """`distill.prompts.${key}` -> ('distill', 'prompts'): the instance's own entry of a mapping."""
    parts = entry.split(".")
    keep = []
    for p in parts:
        if "${" in p:
            break
        keep.append(p)
    return tuple(keep)


def _is_prefix(a: tuple, b: tuple) -> bool:
    return b[:len(a)] == a


def compare(reads: set[tuple[str, ...]], listed: set[tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """(missing, superfluous) dotted keys."""
    reads = {r for r in reads if r and r[0] not in NOT_DEPS and r not in NOT_DEP_KEYS}

    def uncovered(chain: tuple[str, ...]) -> list[tuple[str, ...]]:
        if any(_is_prefix(entry, chain) for entry in listed) or chain in RUN_ONLY:
            return []
        model = model_at(chain)
        if model is not None and any(_is_prefix(chain, entry) for entry in listed):
            # Listed by sub-key: every field must be listed (or be a run setting).
            return [c for f in model.model_fields for c in uncovered(chain + (f,))]
        return [chain]

    missing = sorted({".".join(c) for r in reads for c in uncovered(r)})
    superfluous = []
    for entry in sorted(listed):
        if not entry or entry[0] in NOT_DEPS or entry in NOT_DEP_KEYS or entry in RUN_ONLY \
                or not key_exists(entry):
            superfluous.append(".".join(entry) or "<empty>")
        elif not any(_is_prefix(r, entry) for r in reads):
            # The code reads none of it, or only parts: list those parts instead.
            superfluous.append(".".join(entry))
    return missing, superfluous


STAGES = dvc_stages()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_list_what_its_code_reads(stage):
    cmd, params = STAGES[stage]
    reads, unknown = reads_of(stage_entries(cmd))
    assert not unknown, f"{stage}: cannot tell what the code reads:\n  " + "\n  ".join(unknown)
    missing, superfluous = compare({r for r in reads if r not in AXES[stage]}, {listed_chain(p) for p in params})
    read_keys = sorted(".".join(r) for r in reads)
    assert not missing, f"{stage}: dvc.yaml params miss {missing} (the code reads {read_keys})"
    assert not superfluous, f"{stage}: dvc.yaml params list {superfluous}, which the code does not read " \
                            f"as a whole (it reads {read_keys}; execution and paths never change an output)"


def test_the_analysis_sees_known_reads():
    """The static reading on stages whose reads are known by hand."""
    def reads(stage):
        chains, unknown = reads_of(stage_entries(STAGES[stage][0]))
        assert not unknown
        return {".".join(c) for c in chains}

    compute = {"compute.device", "compute.precision"}
    assert reads("caption") == {"caption", "execution.task_runner"} | compute
    assert reads("evaluate") == {"evaluate", "evaluate.evaluator", "evaluate.image_quality.models",
                                 "evaluate.image_quality.inception_weights", "distill.camera.radius", "distill.prompts"} | compute
    distill_fields = {f"distill.{f}" for f in Params.model_fields["distill"].annotation.model_fields}
    assert reads("ablation") == {"ablation.guidance_types", "ablation.steps"} \
        | distill_fields - {"distill.guidance_type", "distill.steps"} | compute
    assert {"distill", "evaluate", "evaluator"} <= reads("report")
    assert {"ablation", "evaluate_studies", "texture"} <= reads("report_studies")
    assert reads("render") == {"render", "render.backend"}
    # The comparison: a missing key, a superfluous one, a sub-key list short of a field.
    assert compare({("texture",)}, set()) == (["texture"], [])
    assert compare({("texture",)}, {("texture",), ("mirror",), ("execution",)}) == ([], ["execution", "mirror"])
    assert compare({("distill", "camera", "radius")}, {("distill",)}) == ([], ["distill"])   # too broad
    fields = set(model_at(("distill",)).model_fields) - {"seed"}
    listed = {("distill", f) for f in fields} - {("distill", k) for _, k in RUN_ONLY}
    assert compare({("distill",)}, listed) == (["distill.seed"], [])
    assert compare({("distill",)}, listed | {("distill", "threads"), ("distill", "seed")}) == ([], ["distill.threads"])


def test_no_library_module_reads_params_behind_the_flows():
    """The analysis follows flows/ and stages/ only: tasks and the library must receive
    sections, never the whole Params, and must not load a params file themselves."""
    offenders = []
    for path in sorted([*(REPO / "tasks").rglob("*.py"), *(REPO / "dreamline").rglob("*.py")]):
        if path == REPO / "dreamline/config.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module == "dreamline.config":
                bad = {a.name for a in n.names} & {"Params", "load_params", "parse_params"}
                if bad:
                    offenders.append(f"{path.relative_to(REPO)}:{n.lineno} imports {sorted(bad)}")
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.endswith("params.yaml"):
                offenders.append(f"{path.relative_to(REPO)}:{n.lineno} names {n.value!r}")
    assert not offenders, "\n".join(offenders)


def test_run_settings_are_left_out_of_the_distill_key():
    """RUN_ONLY keys are not DVC params of the distill stage; the asset's own cache key must
    ignore them too (else the key and DVC disagree on what reruns)."""
    from dreamline.distill.loop import distill_key

    p = load_params(REPO / "params.yaml", project_root=REPO).distill
    base = distill_key(p, "a red chair", {})
    changed = {"checkpoint_every": p.checkpoint_every + 1, "log_every": p.log_every + 1, "threads": p.threads + 1}
    assert {k for _, k in RUN_ONLY} == set(changed)
    for k, v in changed.items():
        assert distill_key(p.model_copy(update={k: v}), "a red chair", {}) == base, k
    assert distill_key(p.model_copy(update={"seed": p.seed + 1}), "a red chair", {}) != base


def test_every_guidance_term_a_stage_can_use_is_registered():
    p = load_params(REPO / "params.yaml", project_root=REPO)
    assert set(_terms(p)) <= set(GUIDANCES.names())
