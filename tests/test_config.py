import re

import pytest

from dreamline.config import ParamsError, load_params, parse_params


def test_committed_params_are_valid():
    p = load_params("params.yaml")
    assert p.mirror.instances_per_category * len(p.mirror.categories) >= 12 * 10


@pytest.mark.parametrize("raw, key, why", [
    ({"curate": {"shard_sise": 3}}, "curate.shard_sise", "unknown key"),
    ({"curate": {"metadata": {"max_faces": "lots"}}}, "curate.metadata.max_faces", "integer"),
    ({"curate": {"geometry": {"min_thickness_ratio": 2.0}}}, "curate.geometry.min_thickness_ratio", "less than 1"),
    ({"mirror": {"instances_per_category": 0}}, "mirror.instances_per_category", "greater than or equal to 1"),
    ({"mirror": {"categories": ["chair", "spaceship"]}}, "mirror", "spaceship"),
    ({"caption": {"split": {"val_fraction": 0.6, "test_fraction": 0.5}}}, "caption.split", "train split"),
    ({"caption": {"captioner_type": "blip2"}}, "caption", "blip2"),
    ({"caption": {"captioner": {"varety": 3}}}, "caption", "captioner.varety: unknown key"),
    ({"curate": {"metadata": {"min_faces": 10, "max_faces": 5}}}, "curate.metadata", "min_faces"),
])
def test_invalid_params_name_the_key(raw, key, why):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    msg = str(err.value)
    assert key in msg and why in msg, msg


def test_bad_files(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "p.yaml").write_text("curate: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(tmp_path / "q.yaml")


# --- pluggable parts: one name table per part, config models beside the implementations ---

PARTS = [("dreamline.guidance.configs", "GUIDANCES", ("dreamline.guidance.terms",)),
         ("dreamline.representations.configs", "REPRESENTATIONS", ("dreamline.representations.build",)),
         ("dreamline.captioning.configs", "CAPTIONERS", ("dreamline.captioning.captions",))]


@pytest.mark.parametrize("configs, registry, implementations", PARTS)
def test_every_declared_part_has_one_implementation(configs, registry, implementations):
    import importlib

    reg = getattr(importlib.import_module(configs), registry)
    for module in implementations:
        importlib.import_module(module)
    assert reg.names()
    for name in reg.names():
        impl, model = reg.get(name), reg.config_model(name)
        assert model.registered_name == name
        # The implementation sits in the part's package, beside its config module.
        assert impl.__module__.rsplit(".", 1)[0] == configs.rsplit(".", 1)[0]


def test_validating_params_imports_no_implementation():
    import subprocess
    import sys

    code = ("import sys; from dreamline.config import load_params; load_params('params.yaml'); "
            "bad = [m for m in ('torch', 'diffusers', 'dreamline.guidance.terms', "
            "'dreamline.representations.voxel', 'dreamline.captioning.template') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_registry_refuses_undeclared_and_twice_declared_parts():
    from dreamline.registry import Registry
    from dreamline.typed import Strict

    reg = Registry("widget")

    @reg.config("a")
    class AParams(Strict):
        size: int = 1

    class Loose(Strict):
        pass

    with pytest.raises(ValueError, match="not a declared widget config"):
        reg.implements(Loose)
    with pytest.raises(KeyError, match="not imported"):
        reg.get("a")

    @reg.implements(AParams)
    class A:
        pass

    assert reg.get("a") is A
    with pytest.raises(ValueError, match="registered twice"):
        reg.implements(AParams)(A)
    with pytest.raises(ValueError, match="declared twice"):
        reg.config("a")(Loose)
    with pytest.raises(ValueError, match=r"where\.sise: unknown key \(typo\?\)"):
        reg.validate("a", {"sise": 2}, "where")
    with pytest.raises(ValueError, match="kind_type 'b' is not registered"):
        reg.validate("b", {}, "where", "kind_type")


@pytest.mark.parametrize("raw, key", [
    ({"distill": {"representation_type": "voxel", "representation": {"resolutoin": 8}}}, "representation.resolutoin"),
    ({"distill": {"guidance": {"mv-sds": {"guidance_scal": 3}}}}, "guidance.mv-sds.guidance_scal"),
    ({"caption": {"captioner": {"varety": 3}}}, "captioner.varety"),
    ({"distill": {"guidance_type": "mv-sds+sdss"}}, "sdss"),
])
def test_typo_in_a_pluggable_block_names_the_key(raw, key):
    with pytest.raises(ParamsError, match=re.escape(key)):
        parse_params(raw)
