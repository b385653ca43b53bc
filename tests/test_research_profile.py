"""The research profile end to end: profiles/research.yaml with its model folders replaced by
tiny stand-ins in the real formats (tests/research_standins.py) and its sizes shrunk by an
override file, switched to with scripts/use_profile.py, runs every stage through `dvc repro`
(real Objaverse read through the objaverse package's cache under a temporary HOME; bf16
autocast on the CPU)."""
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, make_project
from research_standins import objaverse_home, save_clip, save_inception, save_sd21

T1 = {"log_every": 1, "threads": 1, "sample_steps": 2, "sample_captions": 1, "checkpoint_every": 2}
SMALL = {
    "execution": {"task_runner": "thread", "workers": 1},
    "compute": {"processes": 1},
    "mirror": {"instances_per_category": 1},
    "curate": {"shard_size": 8, "load_workers": 1},
    # A random BLIP writes one caption for every object, and R-precision needs distinct
    # captions: the template captioner here (tests/test_image_captioner.py covers BLIP).
    "caption": {"captioner_type": "template", "captioner": {"variety": 6, "suffix": ""},
                "split": {"val_fraction": 0.25, "test_fraction": 0.25}},
    "render": {"resolution": 32, "mv_sets": 1, "agp_views": 1, "backend": "osmesa", "shard_size": 8},
    "train_base": {"resolution": 16, "unet": {"block_out_channels": [8, 16], "attention": [False, True],
                                              "norm_num_groups": 8, "attention_head_dim": 8},
                   "train": {"steps": 2, "batch_size": 4, **T1}},
    "train_mv": {"eval_timesteps": 2, "train": {"steps": 2, "batch_size": 2, **T1}},
    "train_mv_3d": {"eval_timesteps": 2, "train": {"steps": 2, "batch_size": 2, **T1}},
    "train_agp": {"eval_timesteps": 2, "train": {"steps": 2, "batch_size": 2, **T1}},
    "dreambooth": {"train": {"steps": 2, "batch_size": 2, **T1}},
    "train_depth": {"eval_timesteps": 2, "train": {"steps": 2, "batch_size": 2, **T1}},
    "train_caa": {"eval_timesteps": 2, "train": {"steps": 2, "batch_size": 1, **T1}},
    "texture": {"objects": 1, "views": 4, "resolution": 16, "steps": 2, "eval_azimuths": 2,
                "eval_resolution": 32, "bootstrap": 10, "threads": 1},
    "distill": {"prompts": {"red-chair": "a red chair"}, "steps": 2, "resolution": 16, "threads": 1,
                "representation": {"resolution": 8, "samples_per_ray": 8},
                "checkpoint_every": 1, "log_every": 1,
                "export": {"mesh_resolution": 12, "view_resolution": 16, "turntable_frames": 3}},
    "ablation": {"guidance_types": ["sds", "ism"], "prompts": ["red-chair"], "steps": 2},
    "evaluator": {"render_resolution": 32, "image_size": 64, "dim": 32, "steps": 2, "batch_size": 8,
                  "threads": 1},
    "evaluate": {"resolution": 32, "azimuths": 4, "real_views_per_object": 1, "bootstrap": 20, "threads": 1,
                 "image_quality": {"captions": 2, "steps": 2}},
}


@pytest.mark.slow
@pytest.mark.timeout(2400)   # every stage of the research profile in subprocesses: over 15 min on the slowest 2-core host seen
def test_research_profile_runs_every_stage_through_dvc_repro(tmp_path, prefect_api_url):
    proj = tmp_path / "proj"
    proj.mkdir()
    project = make_project(proj, prefect_api_url)
    for item in ("profiles", "scripts"):
        shutil.copytree(REPO / item, proj / item, ignore=shutil.ignore_patterns("__pycache__"))
    # Two of the profile's prompts: each one is a distill stage, and the point here is every
    # kind of stage, not every prompt (the override below merges into the profile's map).
    profile = yaml.safe_load((proj / "profiles/research.yaml").read_text())
    profile["distill"]["prompts"] = {k: profile["distill"]["prompts"][k] for k in ("red-chair", "blue-mug")}
    (proj / "profiles/research.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    # "Real Objaverse": the embedded mirror generator's output as the objaverse package's cache.
    project.stage("mirror")
    home = objaverse_home(proj / "data/mirror", tmp_path / "home")
    shutil.rmtree(proj / "data/mirror")
    save_sd21(proj / "models/stable-diffusion-2-1-base")
    save_clip(proj / "models/clip-vit-large-patch14")
    save_inception(proj / "models/inception-v3-fid.safetensors")
    (proj / "small.yaml").write_text(yaml.safe_dump(SMALL))
    project.run(sys.executable, "scripts/use_profile.py", "research", "--override", "small.yaml")

    env = {**project.env(), "HOME": str(home)}

    def run(*args, timeout=1800):
        out = subprocess.run(list(args), cwd=proj, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{args}:\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
        return out

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    out = run(sys.executable, "-m", "dvc", "repro").stdout
    stages = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    expected = {"mirror", "curate", "caption", "render", "train_base", "train_mv", "train_mv_3d", "train_agp",
                "dreambooth", "train_depth", "train_caa", "distill@red-chair", "ablation@sds-red-chair",
                "ablation@ism-red-chair", "train_evaluator", "evaluate", "texture", "report"}
    assert expected <= set(stages), sorted(expected - set(stages))
    assert "up to date" in run(sys.executable, "-m", "dvc", "status").stdout

    objects = __import__("pandas").read_parquet(proj / "data/curated/objects.parquet")
    assert set(objects["source"]) == {"objaverse"} and objects["lvis_category"].notna().all()
    caps = __import__("pandas").read_parquet(proj / "data/captions/captions.parquet")
    assert set(caps["captioner"]) == {"template"}
    index = json.loads((proj / "data/models/mv/model_index.json").read_text())
    assert index["vae"][1] == "AutoencoderKL"                   # latent space: SD 2.1's VAE
    agp = json.loads((proj / "data/models/agp/model_index.json").read_text())
    assert agp["vae"][1] == "CCMLatentCodec"                    # SweetDreamer: the CCM is the latent
    metrics = json.loads((proj / "data/eval/metrics.json").read_text())
    assert metrics["evaluator"].startswith("clip:")
    assert metrics["feature_net"].startswith("inception-v3 (FID")          # the papers' FID features
    assert json.loads((proj / "data/texture/metrics.json").read_text())["feature_net"] == metrics["feature_net"]
    run_info = json.loads((proj / "data/models/mv/run.json").read_text())
    assert "bf16" in json.dumps(run_info)
    assert "Running stage" in out
