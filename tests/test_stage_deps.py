"""dvc.yaml's code deps are what each stage's entry point imports, no more and no less
(scripts/stage_deps.py derives them; `--write` regenerates them)."""
from __future__ import annotations

import copy
import subprocess
import sys

import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import stage_deps  # noqa: E402


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_yaml_code_deps_are_the_derived_ones():
    proc = subprocess.run([sys.executable, "scripts/stage_deps.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_missing_and_a_superfluous_dep_are_both_reported():
    dvc = copy.deepcopy(dvc_yaml())
    deps = dvc["stages"]["train_base"]["deps"]
    deps.remove("dreamline/training/loop.py")
    deps.append("dreamline/training/dreambooth.py")
    diff = stage_deps.differences(dvc)
    assert diff == {"train_base": {"missing": ["dreamline/training/loop.py"],
                                   "superfluous": ["dreamline/training/dreambooth.py"]}}
    # A directory dep (the old hand-written style) is superfluous: it is not a module.
    dvc["stages"]["train_base"]["deps"] = deps + ["dreamline/training"]
    assert "dreamline/training" in stage_deps.differences(dvc)["train_base"]["superfluous"]


def stages_importing(path: str) -> set[str]:
    return {name for name, files in stage_deps.derived(dvc_yaml()).items() if path in files}


def test_each_stage_depends_on_what_it_runs_only():
    # One trainer per stage: editing DreamBooth's module reruns DreamBooth alone, and the
    # texturing stage's module does not rerun MVDiffusion's training stages.
    assert stages_importing("dreamline/training/dreambooth.py") == {"dreambooth"}
    assert stages_importing("dreamline/texturing/texture.py") == {"texture"}
    assert stages_importing("dreamline/training/base.py") == {"train_base"}
    assert "train_base" not in stages_importing("dreamline/texturing/caa.py")
    assert stages_importing("dreamline/config.py") == set(dvc_yaml()["stages"])


def test_function_level_imports_and_module_strings_count():
    # load_base_pipeline imports the weights check inside the function; the trainer of a
    # training flow is named as a "module:function" string that tasks/training.py imports.
    assert "train_mv" in stages_importing("dreamline/models/weights.py")
    assert "dreamline/training/multiview.py" in stage_deps.closure("stages.train_mv")
    # The render stage's worker runs in a child process named by a "module:factory" string.
    assert "dreamline/rendering/renderer.py" in stage_deps.closure("stages.render")


def _mini_repo(root, monkeypatch):
    from dreamline.lineage import code

    pkg = root / "dreamline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "import json\n"
        "from dreamline.c import helper\n"
        "def f():\n    from dreamline import b\n    return b.x + _g()\n"
        "def _g():\n    return 1\n"
        "def unused():\n    import dreamline.d\n"
        "WORKER = 'dreamline.e:make'\n")
    for name in "bcde":
        (pkg / f"{name}.py").write_text(f"x = 1\ndef helper():\n    return '{name}'\ndef make():\n    pass\n")
    monkeypatch.setattr(code, "ROOT", root)
    for fn in (code.closure, code.code_digest, code._units):
        fn.cache_clear()
    return code


def test_function_closure_and_code_digest_follow_what_the_function_can_run(tmp_path, monkeypatch):
    code = _mini_repo(tmp_path, monkeypatch)
    try:
        f = set(code.closure("dreamline.a:f"))
        # f's lazy import (b), the module's top level (c, the string naming e), not `unused`'s d.
        assert f == {"dreamline/__init__.py", "dreamline/a.py", "dreamline/b.py", "dreamline/c.py",
                     "dreamline/e.py"}
        assert "dreamline/d.py" in code.closure("dreamline.a")     # the whole module
        before = code.code_digest("dreamline.a:f")
        (tmp_path / "dreamline/d.py").write_text("x = 2\n")     # not reachable from f
        code.code_digest.cache_clear()
        assert code.code_digest("dreamline.a:f") == before
        (tmp_path / "dreamline/b.py").write_text("x = 2\n")     # reachable: the key changes
        code.code_digest.cache_clear()
        assert code.code_digest("dreamline.a:f") != before
    finally:
        for fn in (code.closure, code.code_digest, code._units):
            fn.cache_clear()
