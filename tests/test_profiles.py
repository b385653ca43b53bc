"""profiles/research.yaml: complete, validated by the same models as params.yaml, and one
command (scripts/use_profile.py) switches a checkout's params.yaml to it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dreamline.config import load_params

REPO = Path(__file__).resolve().parents[1]
# Typed blocks whose keys depend on the chosen type (captioner_type template vs image).
VARIANT_BLOCKS = {("caption", "captioner")}


def _keys(d, prefix=()) -> set[tuple[str, ...]]:
    out = set()
    for k, v in d.items():
        key = prefix + (k,)
        if key in VARIANT_BLOCKS:
            out.add(key)
        elif isinstance(v, dict) and v and not (len(prefix) == 2 and prefix[:2] == ("distill", "prompts")):
            out |= _keys(v, key)
        else:
            out.add(key)
    return out


def test_research_profile_validates_with_the_same_models():
    p = load_params(REPO / "profiles/research.yaml", project_root=REPO)
    assert p.compute.precision == "bf16" and p.curate.source == "objaverse" and p.curate.lvis_only
    assert p.render.resolution == 256 and p.render.mv_sets * p.render.mv_views_per_set == 32
    assert p.train_mv.base_model.endswith("stable-diffusion-2-1-base")
    assert p.evaluate.evaluator.endswith("clip-vit-large-patch14")
    mv = p.distill.guidance_config("mv-sds")
    assert (mv.guidance_scale, mv.guidance_rescale, p.distill.steps) == (50.0, 0.5, 10000)


def test_research_profile_has_every_key_of_params_yaml():
    """Completeness: a key added to params.yaml must be given a research value too."""
    default = _keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    research = _keys(yaml.safe_load((REPO / "profiles/research.yaml").read_text()))
    assert not default - research, f"missing in profiles/research.yaml: {sorted(default - research)}"
    assert not research - default, f"not in params.yaml: {sorted(research - default)}"


@pytest.fixture
def checkout(tmp_path):
    for item in ("dreamline", "scripts", "profiles"):
        shutil.copytree(REPO / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _use(checkout, *args):
    return subprocess.run([sys.executable, "scripts/use_profile.py", *args], cwd=checkout,
                          capture_output=True, text=True, timeout=120)


def test_one_command_switches_params_yaml_with_overrides(checkout):
    (checkout / "small.yaml").write_text(yaml.safe_dump({"render": {"resolution": 32},
                                                         "distill": {"steps": 3}}))
    out = _use(checkout, "research", "--override", "small.yaml")
    assert out.returncode == 0, out.stderr
    text = (checkout / "params.yaml").read_text()
    assert "profiles/research.yaml + small.yaml" in text.splitlines()[0]
    assert "Objaverse-LVIS" in text
    p = load_params(checkout / "params.yaml", project_root=checkout)
    assert (p.render.resolution, p.distill.steps, p.curate.source) == (32, 3, "objaverse")


def test_a_bad_override_names_the_key_and_writes_nothing(checkout):
    before = (checkout / "params.yaml").read_bytes()
    (checkout / "bad.yaml").write_text(yaml.safe_dump({"render": {"resolutoin": 32}}))
    out = _use(checkout, "research", "--override", "bad.yaml")
    assert out.returncode == 2 and "render.resolutoin" in out.stderr and "Traceback" not in out.stderr
    out = _use(checkout, "resarch")
    assert out.returncode == 2 and "research" in out.stderr
    assert (checkout / "params.yaml").read_bytes() == before


def test_an_override_that_changes_a_type_replaces_its_block(checkout):
    (checkout / "t.yaml").write_text(yaml.safe_dump({"caption": {"captioner_type": "template",
                                                                 "captioner": {"variety": 3}}}))
    out = _use(checkout, "research", "--override", "t.yaml")
    assert out.returncode == 0, out.stderr
    p = load_params(checkout / "params.yaml", project_root=checkout)
    assert p.caption.captioner_type == "template" and p.caption.captioner == {"variety": 3}
