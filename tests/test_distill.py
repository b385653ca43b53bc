"""Distillation end to end on tiny priors: every registered guidance x representation for
two steps (nerfstudio-style smoke test), exports that load back, exact resumption, and the
`distill` stage and `generate` CLI through their real entry points."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import make_project
from dreamline.config import DistillParams
from dreamline.distill.loop import PriorCache, distill
from dreamline.distill.run import distill_prompt
from dreamline.guidance import GUIDANCES
import dreamline.representations.gaussians  # noqa: F401 - registers
import dreamline.representations.voxel  # noqa: F401 - registers
from dreamline.representations import REPRESENTATIONS
from tiny_models import save_tiny_priors, tiny_distill_project

GUIDANCE_TYPES = sorted(GUIDANCES.names()) + ["mv-sds+agp", "sds+agp"]


def tiny_params(models, **extra) -> DistillParams:
    raw = {
        "prompts": {"red-chair": "a red chair"},
        "guidance": {name: {"model": str(models / m)} for name, m in
                     (("sds", "base"), ("ism", "base"), ("mv-sds", "mv"), ("agp", "agp"))},
        "representation": {"resolution": 8, "samples_per_ray": 8},
        "steps": 2, "resolution": 8, "views_per_step": 4, "threads": 1, "checkpoint_every": 1,
        "export": {"mesh_resolution": 12, "view_resolution": 16, "turntable_frames": 3},
    }
    if extra.get("representation_type") == "gaussians":
        raw["representation"] = {"num_points": 64}
    for k, v in extra.items():
        raw[k] = v
    return DistillParams.model_validate(raw)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    save_tiny_priors(root)
    return root


@pytest.fixture(scope="module")
def priors():
    return PriorCache()


@pytest.mark.parametrize("representation", REPRESENTATIONS.names())
@pytest.mark.parametrize("guidance", GUIDANCE_TYPES)
def test_every_guidance_and_representation_runs_two_steps(models, priors, tmp_path, guidance, representation):
    p = tiny_params(models, guidance_type=guidance, representation_type=representation)
    out = tmp_path / "asset"
    summary = distill_prompt(p, "red-chair", "a red chair", out, tmp_path / "work", priors=priors)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    curve = (out / "curve.csv").read_text().splitlines()
    assert len(curve) == 3 and all(f"loss_{t}" in curve[0] for t in p.guidance_terms)
    for k in range(4):
        assert Image.open(out / "views" / f"view_{k}.png").size == (16, 16)
    assert Image.open(out / "turntable.gif").n_frames >= 2
    assert (out / "turntable.mp4").read_bytes()[4:8] == b"ftyp"
    assert summary["assets"]["turntable_mp4"]["width"] % 2 == 0
    assert (out / "state.safetensors").is_file() and not (tmp_path / "work").exists()
    if representation == "gaussians":
        from plyfile import PlyData

        ply = PlyData.read(str(out / "point_cloud.ply"))
        xyz = np.stack([ply["vertex"][k] for k in "xyz"], 1)
        assert xyz.shape == (64, 3) and np.abs(xyz).max() <= p.representation_config().bound + 1e-5


def test_exported_mesh_loads_back_with_sensible_bounds(models, priors, tmp_path):
    # The initial density blob (radius 0.35) is a shape whose mesh we can predict.
    p = tiny_params(models, guidance_type="sds", steps=1,
                    representation={"resolution": 16, "samples_per_ray": 8},
                    export={"mesh_resolution": 32, "view_resolution": 16, "turntable_frames": 2})
    summary = distill_prompt(p, "red-chair", "a red chair", tmp_path / "a", tmp_path / "w", priors=priors)
    mesh = trimesh.load(tmp_path / "a" / "mesh.glb", force="mesh")
    assert summary["assets"]["mesh"]["watertight"]
    # After one step the field is still the blob: sigma = softplus(b (1 - r / R) + bias), so
    # the isosurface sigma = threshold is the sphere r* below, to within a grid cell.
    v = p.representation_config()
    threshold = v.mesh_threshold
    r_star = v.blob_radius * (1 - (np.log(np.expm1(threshold)) - v.density_bias) / v.blob_density)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    cell = 2 * v.bound / 32
    assert abs(radius.mean() - r_star) < cell and radius.std() < cell, (radius.mean(), r_star)
    assert mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)


def test_killed_run_resumes_to_the_same_asset(models, priors, tmp_path):
    """A distillation SIGKILLed in the middle of writing its step-6 checkpoint (steps 5 and 6
    done, their checkpoint under its temporary name only) resumes from step 4 to the asset
    of an unbroken run. tests/kill_after_write.py places the kill on that write, not on a
    clock, so a fast or a slow machine kills it at the same point."""
    import signal
    import subprocess
    from pathlib import Path

    p = tiny_params(models, guidance_type="mv-sds+agp", steps=6, checkpoint_every=2)
    whole = distill(p, "a red chair", priors, tmp_path / "one", key="k")
    (tmp_path / "params.json").write_text(p.model_dump_json())
    tests = Path(__file__).parent
    killed = subprocess.run([sys.executable, str(tests / "kill_after_write.py"),
                             r"(^|/)two/checkpoint\.(pt|safetensors)$", "3", "--before",
                             str(tests / "distill_process.py"), str(tmp_path / "params.json"), "a red chair",
                             str(tmp_path / "two"), "k"], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout[-2000:], killed.stderr[-3000:])
    assert len(list((tmp_path / "two").glob(".checkpoint.*.tmp"))) == 1      # the write it died in
    resumed = distill(p, "a red chair", priors, tmp_path / "two", key="k")
    assert resumed.resumed_from == 4
    for (name, a), b in zip(whole.representation.state_dict().items(), resumed.representation.state_dict().values()):
        assert torch.equal(a, b), name
    again = distill(p, "a red chair", priors, tmp_path / "three", key="k")
    assert torch.equal(again.representation.density, whole.representation.density)   # same seed, same asset
    other = distill(p.model_copy(update={"seed": 1}), "a red chair", priors, tmp_path / "four", key="k1")
    assert not torch.equal(other.representation.density, whole.representation.density)


def test_up_to_date_prompt_is_skipped_and_changed_params_rerun(models, priors, tmp_path):
    p = tiny_params(models, guidance_type="sds")
    first = distill_prompt(p, "red-chair", "a red chair", tmp_path / "a", tmp_path / "w", priors=priors)
    stamp = (tmp_path / "a" / "state.safetensors").stat().st_mtime_ns
    first_curve = (tmp_path / "a" / "curve.csv").read_text()
    assert distill_prompt(p, "red-chair", "a red chair", tmp_path / "a", tmp_path / "w", priors=priors) == first
    assert (tmp_path / "a" / "state.safetensors").stat().st_mtime_ns == stamp
    reexport = p.model_copy(update={"export": p.export.model_copy(update={"turntable_frames": 5})})
    again = distill_prompt(reexport, "red-chair", "a red chair", tmp_path / "a", tmp_path / "w", priors=priors)
    assert again["key"] == first["key"] and again["assets"]["turntable_frames"] == 5
    assert Image.open(tmp_path / "a" / "turntable.gif").n_frames == 5
    # A folder without the MP4 (written before it existed) is exported again, to the same bytes.
    mp4 = tmp_path / "a" / "turntable.mp4"
    before = mp4.read_bytes()
    mp4.unlink()
    assert distill_prompt(reexport, "red-chair", "a red chair", tmp_path / "a", tmp_path / "w", priors=priors) == again
    assert mp4.read_bytes() == before
    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == 5
    assert (tmp_path / "a" / "curve.csv").read_text() == first_curve
    changed = p.model_copy(update={"lambda_orientation": 0.5})
    second = distill_prompt(changed, "red-chair", "a red chair", tmp_path / "a", tmp_path / "w", priors=priors)
    assert second["key"] != first["key"]


def test_voxel_total_variation_prior():
    from dreamline.representations.configs import VoxelParams
    from dreamline.representations.voxel import VoxelField, total_variation

    grid = torch.zeros(1, 2, 5, 5, 5)
    assert float(total_variation(grid + 3.0)) == 0.0
    grid[0, 1, 2, 2, 2] = 2.0          # one interior spike: six neighbours, each (2 - 0)^2
    assert float(total_variation(grid)) == 24.0
    off = VoxelField(VoxelParams(resolution=6, tv_density=0.0), torch.Generator().manual_seed(0))
    assert float(off.regulariser()) == 0.0
    on = VoxelField(VoxelParams(resolution=6, tv_density=0.5, tv_albedo=0.25), torch.Generator().manual_seed(0))
    with torch.no_grad():
        on.density.copy_(torch.randn(on.density.shape, generator=torch.Generator().manual_seed(1)))
    reg = on.regulariser()
    expected = 0.5 * total_variation(on.density) + 0.25 * total_variation(on.albedo)
    torch.testing.assert_close(reg, expected)
    reg.backward()
    before = float(total_variation(on.density.detach()))
    with torch.no_grad():
        on.density -= 0.05 * on.density.grad          # a small step down the prior smooths the grid
    assert float(total_variation(on.density.detach())) < before


def test_smoothness_and_opacity_priors_enter_the_loss(models, priors, tmp_path):
    """tv_* and lambda_opaque each change the optimised asset; the regulariser is logged per step."""
    plain = tiny_params(models, guidance_type="sds",
                        representation={"resolution": 8, "samples_per_ray": 8, "tv_density": 0.0})
    tv = tiny_params(models, guidance_type="sds", lambda_opaque=50.0,
                     representation={"resolution": 8, "samples_per_ray": 8, "tv_density": 1.0, "tv_albedo": 1.0})
    opaque = tiny_params(models, guidance_type="sds", lambda_opaque=50.0,
                         representation={"resolution": 8, "samples_per_ray": 8, "tv_density": 0.0})
    runs = {}
    for name, p in (("plain", plain), ("priors", tv), ("opaque", opaque)):
        result = distill(p, "a red chair", priors, tmp_path / name, key=name)
        runs[name] = result
    # lambda_opaque alone: the same first render, a larger first loss, no representation prior.
    assert runs["opaque"].curve[0]["opacity"] == runs["plain"].curve[0]["opacity"]
    assert runs["opaque"].curve[0]["loss"] > runs["plain"].curve[0]["loss"]
    assert all(r["regulariser"] == 0.0 for r in runs["opaque"].curve)
    assert all(r["regulariser"] == 0.0 for r in runs["plain"].curve)
    assert all(r["regulariser"] > 0.0 for r in runs["priors"].curve)
    assert runs["priors"].curve[0]["loss"] > runs["plain"].curve[0]["loss"]
    assert not torch.equal(runs["plain"].representation.density, runs["priors"].representation.density)


def test_render_resolution_schedule(models, priors, tmp_path):
    """MVDream-threestudio's schedule as a parameter: 8 px, then 16 px from step 2."""
    p = tiny_params(models, guidance_type="mv-sds+agp", steps=4, resolution_schedule=[[2, 16]])
    result = distill(p, "a red chair", priors, tmp_path / "w", key="schedule")
    assert [r["resolution"] for r in result.curve] == [8, 8, 16, 16]
    assert all(np.isfinite(r["loss"]) for r in result.curve)
    assert p.model_copy(update={"resolution_schedule": []}).resolution_at(3) == 8
    for bad in ([[2, 16], [2, 32]], [[0, 16]], [[3, 16], [2, 32]], [[2, 4]]):
        with pytest.raises(ValueError, match="resolution_schedule"):
            tiny_params(models, resolution_schedule=bad)


def test_missing_prior_is_named(tmp_path):
    p = tiny_params(tmp_path / "nowhere", guidance_type="ism")
    with pytest.raises(FileNotFoundError, match="distill.guidance.ism.model"):
        distill_prompt(p, "x", "a red chair", tmp_path / "a", tmp_path / "w")


@pytest.mark.slow
def test_distill_stage_and_generate_cli(tmp_path, prefect_api_url):
    project = make_project(tmp_path, prefect_api_url)
    small = tiny_distill_project(project)
    project.set_params({"distill": {**small, "prompts": {"red-chair": "a red chair", "blue-mug": "a blue mug"}}})
    project.stage("distill")            # no --prompt: every prompt
    for slug in ("red-chair", "blue-mug"):
        s = json.loads((project.root / "data/distill" / slug / "summary.json").read_text())
        assert s["steps"] == 3 and s["guidance_type"] == "mv-sds+agp"
    stamps = {slug: (project.root / "data/distill" / slug / "state.safetensors").stat().st_mtime_ns
              for slug in ("red-chair", "blue-mug")}
    project.set_params({"distill": {**small, "steps": 4,
                                    "prompts": {"red-chair": "a red chair", "blue-mug": "a blue mug"}}})
    project.run(sys.executable, "-m", "stages.distill", "--prompt", "red-chair")   # only this one reruns
    assert json.loads((project.root / "data/distill/red-chair/summary.json").read_text())["steps"] == 4
    assert (project.root / "data/distill/blue-mug/state.safetensors").stat().st_mtime_ns == stamps["blue-mug"]
    bad = project.run(sys.executable, "-m", "stages.distill", "--prompt", "green-tree", check=False)
    assert bad.returncode != 0 and "green-tree" in bad.stderr + bad.stdout

    cli = project.run(sys.executable, "-m", "flows.cli", "generate", "a blue mug", "--guidance", "ism",
                      "--representation", "gaussians", "--steps", "2", "--set", "representation.num_points=32",
                      "--out", "out/mug")
    assert (project.root / "out/mug/point_cloud.ply").is_file(), cli.stdout
    s = json.loads((project.root / "out/mug/summary.json").read_text())
    assert s["guidance_type"] == "ism" and s["representation_type"] == "gaussians"
    typo = project.run(sys.executable, "-m", "flows.cli", "generate", "a mug", "--guidance", "sdss",
                       check=False)
    assert typo.returncode != 0 and "sdss" in typo.stderr + typo.stdout
