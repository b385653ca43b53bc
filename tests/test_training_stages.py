"""train_base -> train_mv / train_agp -> dreambooth through their real entry points
(`python -m stages.<name>`) on a tiny project: model folders that load back, held-out
tables, DVCLive curves (read back by `dvc plots show` / `dvc exp show`) and sample grids; a
SIGKILLed training stage that resumes to the weights of an unbroken run; invalid params that
stop a stage before any work."""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, make_project

BASE_STEPS = 24
TINY = {
    "mirror": {"categories": ["chair", "car", "lamp", "mug"], "instances_per_category": 3,
               "packaged_meshes": 1, "junk_per_kind": 0},
    "caption": {"split": {"val_fraction": 0.2, "test_fraction": 0.2}},
    "render": {"resolution": 32, "mv_sets": 1, "agp_views": 2},
    "train_base": {
        "resolution": 16,
        "unet": {"block_out_channels": [8, 16], "attention": [False, True],
                 "norm_num_groups": 8, "attention_head_dim": 8},
        # Enough steps that the kill test (SIGKILL right after the step-4 checkpoint)
        # leaves most of the training to the resumed run.
        "train": {"steps": BASE_STEPS, "batch_size": 32, "checkpoint_every": 2, "log_every": 1,
                  "sample_steps": 2, "sample_captions": 2, "threads": 1},
    },
    "train_mv": {"eval_timesteps": 2,
                 "train": {"steps": 3, "batch_size": 2, "log_every": 1, "sample_steps": 2,
                           "sample_captions": 2, "threads": 1}},
    "train_mv_3d": {"eval_timesteps": 2, "high_t_fraction": 1.0,   # its 3D batches at t >= 950 only
                    "train": {"steps": 3, "batch_size": 2, "log_every": 1, "sample_steps": 2,
                              "sample_captions": 2, "threads": 1}},
    "train_agp": {"eval_timesteps": 2, "ablation": True,   # the camera-off run too (a study: off by default)
                  "train": {"steps": 3, "batch_size": 4, "log_every": 1, "sample_steps": 2,
                            "sample_captions": 2, "threads": 1}},
    "dreambooth": {"train": {"steps": 2, "batch_size": 2, "log_every": 1, "sample_steps": 2,
                             "threads": 1}},
    "train_depth": {"eval_timesteps": 2, "train": {"steps": 3, "batch_size": 4, "log_every": 1, "threads": 1}},
    "train_caa": {"eval_timesteps": 2, "train": {"steps": 3, "batch_size": 1, "log_every": 1, "sample_steps": 2,
                                                 "sample_captions": 1, "threads": 1}},
    "evaluator": {"render_resolution": 32, "image_size": 64, "dim": 32, "steps": 5, "batch_size": 8, "threads": 1},
    "texture": {"objects": 2, "views": 4, "resolution": 16, "steps": 2, "eval_azimuths": 2, "eval_resolution": 32,
                "bootstrap": 10, "threads": 1},
}
PIXELS = TINY["train_base"]["resolution"]
STAGE_MODEL = {"train_base": "base", "train_mv": "mv", "train_mv_3d": "mv_3d", "train_agp": "agp",
               "dreambooth": "dreambooth", "train_depth": "depth", "train_caa": "mvdiffusion",
               "train_evaluator": "evaluator"}
# Each model folder's DVCLive log: (model, DVCLive dir, logged columns besides step).
LIVE_LOGS = [(m, "dvclive", ("loss", "lr")) for m in ("base", "mv", "mv_3d", "agp", "dreambooth", "depth",
                                                     "mvdiffusion")]
LIVE_LOGS += [("agp", "dvclive_ablation", ("loss", "lr")), ("evaluator", "dvclive", ("loss", "temperature"))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, prefect_api_url):
    """A tiny project with mirrored, curated, captioned and rendered objects."""
    project = make_project(tmp_path_factory.mktemp("training"), prefect_api_url, TINY)
    for name in ("mirror", "curate", "caption", "render"):
        project.stage(name)
    caps = pd.read_parquet(project.root / "data/captions/captions.parquet")
    counts = caps["split"].value_counts()
    assert counts.get("val", 0) >= 1 and counts.get("test", 0) >= 1, counts.to_dict()
    return project


def ensure_models(project, *stages: str) -> None:
    """Run the training stages whose model folder is missing (a test run on its own)."""
    for stage in stages:
        if not (project.root / "data/models" / STAGE_MODEL[stage]).exists():
            project.stage(stage)


def summary(project, name: str) -> dict:
    return json.loads((project.root / "data/models" / name / "summary.json").read_text())


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((folder / "unet").glob("*.safetensors"))
    assert files, f"no unet weights in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def curve_steps(folder: Path, live: str = "dvclive", columns: tuple[str, ...] = ("loss", "lr")) -> list[int]:
    """Steps of the loss curve DVCLive logged into folder/<live>: one `step<TAB>value` history
    per column (plots/metrics/train/<column>.tsv), the last row of each in metrics.json."""
    assert not (folder / "curve.csv").exists(), "the curve lives in the DVCLive folder only"
    metrics = json.loads((folder / live / "metrics.json").read_text())
    steps = None
    for column in columns:
        lines = (folder / live / "plots/metrics/train" / f"{column}.tsv").read_text().splitlines()
        assert lines[0] == f"step\t{column}", lines[:2]
        rows = [line.split("\t") for line in lines[1:]]
        assert rows and all(len(r) == 2 and math.isfinite(float(r[1])) for r in rows), lines
        assert metrics["train"][column] == float(rows[-1][1]), (column, metrics, rows[-1])
        assert steps is None or [int(r[0]) for r in rows] == steps
        steps = [int(r[0]) for r in rows]
    assert metrics["step"] == steps[-1] and set(metrics) == {"train", "step"}, metrics
    assert sorted(p.name for p in (folder / live / "plots/metrics/train").iterdir()) == sorted(
        f"{c}.tsv" for c in columns)
    return steps


def grid_size(n: int, nrow: int, px: int = PIXELS, padding: int = 2) -> tuple[int, int]:
    """(width, height) of dreamline.models.grid.grid_image for n tiles of px x px."""
    cols = min(nrow, n)
    rows = -(-n // cols)
    return cols * (px + padding) + padding, rows * (px + padding) + padding


def check_samples(folder: Path, size: tuple[int, int]) -> None:
    path = folder / "samples.png"
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size


def check_table(heldout: dict, rows: tuple[str, ...], items: int) -> None:
    for row in rows:
        assert row in heldout, (row, list(heldout))
        assert math.isfinite(heldout[row]["loss"]) and heldout[row]["loss"] > 0, heldout[row]
        assert heldout[row]["items"] == items, (row, heldout[row]["items"], items)


def check_training(project, name: str, steps: int) -> dict:
    """Summary of a finished, fresh stage run; its checkpoints are gone."""
    folder = project.root / "data/models" / name
    s = summary(project, name)
    t = s["training"]
    assert t["steps"] == steps and math.isfinite(t["final_loss"]), t
    assert curve_steps(folder) == list(range(1, steps + 1))
    live = json.loads((folder / "dvclive/metrics.json").read_text())
    assert live["train"]["loss"] == pytest.approx(t["final_loss"], rel=1e-12), (live, t)
    assert not (project.root / "data/checkpoints" / name).exists(), "checkpoints are scratch"
    assert not (project.root / "data/models" / f"{name}.partial").exists()
    return s


# -- kill and resume ------------------------------------------------------------------------

def test_killed_train_base_resumes_to_unbroken_weights(tiny):
    """SIGKILLed right after its step-4 checkpoint lands (tests/kill_after_write.py: the
    stage dies in that rename, wherever the clock is), train_base resumes from step 4 to
    the weights of a run never killed."""
    root = tiny.root
    ckpts = root / "data/checkpoints/base/checkpoints"
    kill_at = 4
    with (root / "killed-train-base.log").open("w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("kill_after_write.py")),
                               rf"(^|/)checkpoints/step-{kill_at}\.(pt|safetensors)$", "1",
                               "-m", "stages.train_base"],
                              cwd=root, env=tiny.env(), stdout=log, stderr=subprocess.STDOUT, timeout=900)
    output = (root / "killed-train-base.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"not killed at the step-{kill_at} checkpoint ({proc.returncode}):\n{output}"
    steps = sorted(int(p.name.split("-")[1].split(".")[0]) for p in ckpts.glob("step-*"))
    assert steps and max(steps) == kill_at < BASE_STEPS, steps
    assert not (root / "data/models/base").exists()

    def resumed_from() -> int | None:
        # A run fact, not a result: in the model folder's untracked run.json (dreamline.runinfo).
        return json.loads((root / "data/models/base/run.json").read_text())["training"]["resumed_from"]

    tiny.stage("train_base")
    resumed = check_training(tiny, "base", BASE_STEPS)
    assert resumed_from() == kill_at and "resumed_from" not in resumed["training"]
    aside = root / "resumed-base"
    shutil.move(root / "data/models/base", aside)

    shutil.rmtree(root / "data/checkpoints/base", ignore_errors=True)
    tiny.stage("train_base")
    unbroken = check_training(tiny, "base", BASE_STEPS)
    assert resumed_from() is None

    a, b = unet_weights(aside), unet_weights(root / "data/models/base")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert resumed["heldout"] == unbroken["heldout"]
    # The whole output is a pure function of the inputs: byte-equal folders (what DVC hashes),
    # run.json (timings, resumed_from) aside.
    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
                if p.is_file() and p.name != "run.json"}

    got, want = files(aside), files(root / "data/models/base")
    assert got.keys() == want.keys() and "dvclive/metrics.json" in got
    assert [k for k in got if got[k] != want[k]] == []


# -- end to end -----------------------------------------------------------------------------

def test_training_stages_end_to_end(tiny):
    from dreamline.models.pipelines import CCMPipeline, MultiViewDiffusionPipeline
    from dreamline.training.common import orbit_cameras

    root = tiny.root
    models = root / "data/models"
    ensure_models(tiny, "train_base")  # the kill test's unbroken run, unless run alone
    for name in ("train_mv", "train_mv_3d", "train_agp", "dreambooth"):
        tiny.stage(name)

    caps = pd.read_parquet(root / "data/captions/captions.parquet")
    val_captions = caps.loc[caps["split"] == "val", "caption"].nunique()

    # base: caption held-out table, EMA UNet in a text-to-image pipeline.
    base = check_training(tiny, "base", BASE_STEPS)
    check_table(base["heldout"], ("right_caption", "empty_caption", "wrong_caption"),
                base["heldout"]["right_caption"]["items"])
    assert base["heldout"]["right_caption"]["items"] % base["heldout_views"] == 0
    check_samples(models / "base", grid_size(min(2, val_captions), min(2, val_captions)))
    pipe = MultiViewDiffusionPipeline.from_pretrained(models / "base")
    assert pipe.unet.config.class_embed_type is None

    # mv: multi-view attention and camera embedding on, in the saved config too.
    mv = check_training(tiny, "mv", 3)
    sets = mv["heldout"]["_sets"]
    assert sets >= 1
    check_table(mv["heldout"], ("multiview", "multiview_attention_off", "multiview_cameras_turned", "base"),
                sets * 4 * 2)
    k = min(2, val_captions)
    check_samples(models / "mv", grid_size(4 * k, 4))
    config = json.loads((models / "mv/unet/config.json").read_text())
    assert config["multiview_attention"] is True
    assert config["class_embed_type"] == "projection"
    pipe = MultiViewDiffusionPipeline.from_pretrained(models / "mv")
    assert pipe.unet.config.class_embed_type == "projection"
    # mv_3d: the same stage code with no joint 2D batches, its own folder and summary.
    mv3d = check_training(tiny, "mv_3d", 3)
    assert mv3d["heldout"]["_sets"] == sets
    assert json.loads((models / "mv_3d/unet/config.json").read_text())["multiview_attention"] is True
    out = pipe("a red chair", cameras=orbit_cameras(4), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (4, PIXELS, PIXELS, 3)
    assert np.isfinite(out.images).all()

    # agp: CCMs from caption + camera, and the camera-off ablation in the same table.
    agp = check_training(tiny, "agp", 3)
    check_table(agp["heldout"], ("agp", "agp_camera_off"), agp["heldout_views"] * 2)
    assert agp["ablation_training"]["steps"] == 3
    assert curve_steps(models / "agp", "dvclive_ablation") == [1, 2, 3]
    k = min(2, agp["heldout_views"])
    check_samples(models / "agp", grid_size(2 * k, k))
    samples = agp["samples"]
    assert samples["samples"] == k and len(samples["real_foreground_fraction"]) == k
    assert 0.0 <= samples["raw_outside_range_fraction"] <= 1.0
    assert all(0.0 < f < 1.0 for f in samples["real_foreground_fraction"])
    ccm = CCMPipeline.from_pretrained(models / "agp")
    out = ccm("a chair", cameras=orbit_cameras(2), num_inference_steps=2,
              generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, PIXELS, PIXELS, 3) and out.masks.shape == (2, PIXELS, PIXELS)
    assert out.images.min() >= 0.0 and out.images.max() <= 1.0
    assert (out.images[~out.masks] == 0).all()

    # dreambooth: the multi-view model fine-tuned on a test object's 4 renders.
    db = check_training(tiny, "dreambooth", 2)
    assert db["identity_images"] == 4 and db["identity_uid"] in set(caps.loc[caps["split"] == "test", "uid"])
    assert math.isfinite(db["mean_abs_param_change"])
    check_samples(models / "dreambooth", grid_size(4 + 4, 4))
    pipe = MultiViewDiffusionPipeline.from_pretrained(models / "dreambooth")
    assert pipe.unet.config.class_embed_type == "projection"


def test_agp_from_an_sd_layout_base_takes_the_ccm_as_its_latent(tiny, tmp_path):
    """SweetDreamer on a latent model: the CCM is the UNet's latent (area-averaged to the
    latent grid, no VAE encode); the saved AGP model carries no VAE and samples CCMs at the
    base's pixel size."""
    from dreamline.config import load_params
    from dreamline.guidance.prior import DiffusionPrior
    from dreamline.models.codec import CCMLatentCodec
    from dreamline.models.pipelines import CCMPipeline
    from dreamline.training.agp import train_agp
    from dreamline.training.common import orbit_cameras
    from research_standins import save_sd21

    sd = save_sd21(tmp_path / "sd21")                           # 16 px images, 8 px latents
    p = load_params(tiny.root / "params.yaml").train_agp
    p = p.model_copy(update={"base_model": str(sd), "ablation": False})
    summary = train_agp(p, tiny.root / "data/renders", tiny.root / "data/captions/captions.parquet",
                        tmp_path / "agp", tmp_path / "work", max_tokens=16)
    assert summary["training"]["steps"] == 3 and math.isfinite(summary["heldout"]["agp"]["loss"])
    index = json.loads((tmp_path / "agp/model_index.json").read_text())
    assert index["vae"] == ["dreamline.models.codec", "CCMLatentCodec"]
    assert sorted(f.name for f in (tmp_path / "agp/vae").iterdir()) == ["config.json"]

    pipe = CCMPipeline.from_pretrained(tmp_path / "agp")
    assert isinstance(pipe.vae, CCMLatentCodec) and (pipe.vae.config.factor, pipe.vae.config.latent_channels) == (2, 4)
    out = pipe("a chair", cameras=orbit_cameras(2), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 16, 16, 3) and (out.images[~out.masks] == 0).all()
    # Distillation reads the same model: a rendered CCM goes to the UNet's space the same way.
    prior = DiffusionPrior.load(str(tmp_path / "agp"))
    z = prior.encode(torch.rand(1, 3, 16, 16))
    assert z.shape == (1, 4, 8, 8) and torch.equal(z[:, 3], torch.zeros(1, 8, 8))


def test_mvdiffusion_stages_end_to_end(tiny):
    """train_depth -> train_caa -> texture through their entry points: held-out tables, a
    pipeline that loads with its CAA model, textured GLBs and the texture metrics."""
    import trimesh

    from dreamline.texturing.pipeline import MVDiffusionPipeline

    root = tiny.root
    ensure_models(tiny, "train_base")
    tiny.stage("train_depth")
    depth = check_training(tiny, "depth", 3)
    check_table(depth["heldout"], ("own_depth", "other_object_depth", "no_depth"), depth["heldout_views"] * 2)
    pipe = MVDiffusionPipeline.from_pretrained(root / "data/models/depth")
    assert pipe.caa is None and pipe.unet.config.in_channels == pipe.unet.config.out_channels + 4

    tiny.stage("train_caa")
    caa = check_training(tiny, "mvdiffusion", 3)
    sets = caa["heldout"]["_sets"]
    check_table(caa["heldout"], ("caa", "caa_off"), sets * 4 * 2)
    check_samples(root / "data/models/mvdiffusion", grid_size(2 * 4, 4))
    pipe = MVDiffusionPipeline.from_pretrained(root / "data/models/mvdiffusion")
    assert pipe.caa is not None and len(pipe.caa.blocks) == 2 * 2 + 1

    tiny.stage("train_evaluator")
    assert curve_steps(root / "data/models/evaluator", columns=("loss", "temperature")) == list(
        range(1, TINY["evaluator"]["steps"] + 1))
    # A distilled asset as the distill stage writes it: a vertex-coloured mesh.glb + summary.json.
    asset = root / "data/distill/a-box"
    asset.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box((0.6, 0.4, 0.5))
    box.visual.vertex_colors = [200, 40, 40, 255]
    box.export(asset / "mesh.glb")
    (asset / "summary.json").write_text(json.dumps({"prompt": "a red box"}))
    tiny.stage("texture")
    m = json.loads((root / "data/texture/metrics.json").read_text())
    d = m["distilled"]
    assert [a["asset"] for a in d["assets"]] == ["a-box"] and d["n_captions"] >= 2
    assert set(d["r_precision"]) == {"textured", "distilled_colours", "untextured"}
    assert trimesh.load(root / d["assets"][0]["glb"], force="mesh").visual.kind == "vertex"
    assert all(math.isfinite(v["KID"]) for k, v in m["image_quality"].items() if k != "real")
    assert m["objects"] == 2 and set(m["consistency"]) == {"caa", "independent", "caa_minus_independent"}
    assert set(m["image_quality"]) == {"real", "caa", "independent"}
    assert set(m["r_precision"]) == {"textured", "untextured", "own_colours"}
    assert all(r["n_images"] == 2 * 2 for r in m["r_precision"].values())
    for row in m["objects_table"]:
        glb = trimesh.load(root / row["glb"], force="mesh")
        assert glb.visual.kind == "vertex" and len(glb.vertices) > 0
        assert 0.0 < row["coverage"] <= 1.0 and row["psnr_pairs"] >= 1
        assert (root / row["glb"]).with_name("views.png").exists()


def test_dvc_reads_every_training_curve_and_final_loss(tiny):
    """The project's dvc.yaml (top-level `metrics:` / `plots:`) names every training stage's
    DVCLive files: `dvc plots show` draws each curve, `dvc metrics show` and `dvc exp show`
    carry each final loss. Reads the models the tests above trained (trains any missing)."""
    root = tiny.root
    ensure_models(tiny, *STAGE_MODEL)
    if not (root / ".dvc").exists():
        tiny.run("git", "init", "-q")
        tiny.run(sys.executable, "-m", "dvc", "init", "-q")
        tiny.run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
        # `dvc exp show` needs a baseline commit; the models stay untracked workspace files.
        tiny.run("git", "add", "dvc.yaml", "params.yaml", ".dvc")
        tiny.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny")

    def dvc_json(*args: str):
        proc = tiny.run(sys.executable, "-m", "dvc", *args, "--json", check=False)
        # Stages this module never runs (evaluate, texture's plots) are reported missing: rc 0 or 1.
        assert proc.returncode in (0, 1) and proc.stdout.strip(), (args, proc.returncode, proc.stderr[-3000:])
        return json.loads(proc.stdout)

    plots = dvc_json("plots", "show")["data"]
    for model, live, columns in LIVE_LOGS:
        for column in columns:
            path = f"data/models/{model}/{live}/plots/metrics/train/{column}.tsv"
            assert path in plots, (path, sorted(plots))
            values = plots[path][0]["content"]["data"]["values"]
            want = (root / path).read_text().splitlines()[1:]
            assert [(int(v["step"]), float(v[column])) for v in values] == [
                (int(a), float(b)) for a, b in (line.split("\t") for line in want)], path
            assert plots[path][0]["content"]["encoding"]["x"]["field"] == "step"

    def final_losses(metrics: dict) -> dict:
        return {path: m["data"]["train"]["loss"] for path, m in metrics.items()
                if path.endswith("/metrics.json") and "data" in m and "train" in m["data"]}

    want = {f"data/models/{m}/{live}/metrics.json":
            json.loads((root / "data/models" / m / live / "metrics.json").read_text())["train"]["loss"]
            for m, live, _ in LIVE_LOGS}
    assert final_losses(dvc_json("metrics", "show")[""]["data"]) == want
    workspace = dvc_json("exp", "show")[0]
    assert workspace["rev"] == "workspace"
    assert final_losses(workspace["data"]["metrics"]) == want
    assert all(math.isfinite(v) for v in want.values())
    base = workspace["data"]["metrics"]["data/models/base/dvclive/metrics.json"]["data"]
    assert base["step"] == BASE_STEPS and base["train"]["loss"] == summary(tiny, "base")["training"]["final_loss"]


def test_sample_cli_writes_png(tiny):
    ensure_models(tiny, "train_base", "train_mv")
    proc = tiny.run(sys.executable, "-m", "flows.cli", "sample", "a red chair",
                    "--model", "data/models/mv", "--out", "x.png", "--steps", "2", check=False)
    assert proc.returncode == 0, f"`dreamline sample` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    with Image.open(tiny.root / "x.png") as im:
        assert im.format == "PNG" and im.size == grid_size(4, 4)


# -- the fine-tuning template ---------------------------------------------------------------

def test_every_training_stage_runs_the_fine_tuning_template(monkeypatch):
    """Each trainer a training flow names is a thin wrapper over the run() of a FineTuning
    subclass in its own module, whose code (the template's included) is in its run key."""
    import importlib
    import re

    from dreamline.lineage.code import closure
    from dreamline.training.template import FineTuning

    refs = sorted(set(re.findall(r'"(dreamline\.[\w.]+:\w+)"', (REPO / "flows/training.py").read_text())))
    assert len(refs) == 6, refs   # train_mv serves train_mv and train_mv_3d
    ran = []
    monkeypatch.setattr(FineTuning, "run", lambda self: ran.append(self) or {"stage": type(self).__name__})
    for ref in refs:
        module, _, func = ref.partition(":")
        summary = getattr(importlib.import_module(module), func)("p", "renders", "captions.parquet", "out", "work")
        stage = ran[-1]
        assert isinstance(stage, FineTuning) and type(stage).__module__ == module, ref
        assert summary == {"stage": type(stage).__name__}
        assert (stage.p, stage.out_dir, stage.work_dir) == ("p", Path("out"), Path("work"))
        code = closure(f"{module}:{type(stage).__qualname__}")
        assert {"dreamline/training/template.py", module.replace(".", "/") + ".py"} <= set(code), (ref, code)
    assert len(ran) == len(refs)


def test_second_training_run_has_its_own_checkpoints_key_and_dvclive_folder():
    from dreamline.training.template import TrainingRun

    main = TrainingRun(torch.nn.Linear(1, 1), lambda step: None, lambda m, b, g: None, 4, work="agp")
    ablation = TrainingRun(torch.nn.Linear(1, 1), lambda step: None, lambda m, b, g: None, 4, name="ablation")
    assert (main.work_subdir, main.key_suffix, main.live_dir, main.summary_key) == ("agp", "", "dvclive", "training")
    assert (ablation.work_subdir, ablation.key_suffix, ablation.live_dir, ablation.summary_key) == (
        "ablation", "-ablation", "dvclive_ablation", "ablation_training")


# -- invalid params -------------------------------------------------------------------------

def _stage_with(project, name: str, extra: dict) -> subprocess.CompletedProcess:
    """Run stage `name` with the project's params plus `extra`, from a separate params file."""
    from conftest import deep_update

    raw = deep_update(yaml.safe_load((project.root / "params.yaml").read_text()), extra)
    (project.root / "bad-params.yaml").write_text(yaml.safe_dump(raw))
    return project.run(sys.executable, "-m", f"stages.{name}", "--params", "bad-params.yaml",
                       check=False, timeout=120)


def test_unet_levels_mismatch_fails_fast_naming_the_key(project):
    project.set_params(TINY)
    start = time.time()
    proc = _stage_with(project, "train_base", {"train_base": {"unet": {"attention": [False]}}})
    assert proc.returncode == 2, proc.stderr
    assert "train_base.unet" in proc.stderr and "attention" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 60
    assert not (project.root / "data").exists(), "no work before validation"


def test_missing_base_model_names_model_index(project):
    project.set_params(TINY)
    proc = _stage_with(project, "train_mv", {"train_mv": {"base_model": "data/models/missing"}})
    assert proc.returncode == 2, proc.stderr
    assert "train_mv.base_model" in proc.stderr and "data/models/missing" in proc.stderr
    assert "model_index.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project.root / "data/models/mv").exists()


def test_forced_training_rerun_writes_identical_outputs_and_nothing_downstream_reruns(tiny):
    """`dvc repro -f` of a training stage writes the same model folder bytes (same md5 in
    dvc.lock), so a stage that reads it (dreambooth reads the mv model) stays up to date."""
    root = tiny.root
    if not (root / ".dvc").exists():
        tiny.run("git", "init", "-q")
        tiny.run(sys.executable, "-m", "dvc", "init", "-q")
        tiny.run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")

    def dvc(*args: str) -> str:
        return tiny.run(sys.executable, "-m", "dvc", *args, timeout=900).stdout

    def locked(stage: str) -> dict[str, str]:
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]
        return {o["path"]: o["md5"] for o in lock["outs"]}

    ensure_models(tiny, "train_base")
    # Upstream stages ran by hand in this module: --single-item runs just the one named.
    dvc("repro", "--single-item", "train_mv")
    dvc("repro", "--single-item", "dreambooth")
    first = locked("train_mv")
    out = dvc("repro", "-f", "--single-item", "train_mv")
    assert "Running stage 'train_mv'" in out
    assert locked("train_mv") == first
    assert "up to date" in dvc("status", "dreambooth")
