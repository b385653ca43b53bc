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
