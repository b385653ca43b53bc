"""train_evaluator -> distill / ablation -> evaluate -> report through their real entry
points on a tiny project, and the report opened from disk in headless Chromium."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import make_project
from tiny_models import save_tiny_priors

GUIDANCE = {name: {"model": f"data/models/{m}"} for name, m in
            (("sds", "base"), ("ism", "base"), ("mv-sds", "mv"), ("agp", "agp"))}
TINY = {
    "mirror": {"categories": ["chair", "mug", "lamp", "car"], "instances_per_category": 3,
               "packaged_meshes": 1, "junk_per_kind": 0},
    "caption": {"split": {"val_fraction": 0.25, "test_fraction": 0.25}},
    "render": {"resolution": 32, "mv_sets": 1, "agp_views": 1},
    "distill": {"prompts": {"red-chair": "a red chair", "blue-mug": "a blue mug"}, "guidance": GUIDANCE,
                "representation": {"resolution": 8, "samples_per_ray": 8}, "steps": 2, "resolution": 8,
                "threads": 1, "export": {"mesh_resolution": 12, "view_resolution": 16, "turntable_frames": 3}},
    "ablation": {"guidance_types": ["sds", "ism"], "prompts": ["red-chair"], "steps": 2},
    "evaluator": {"render_resolution": 32, "image_size": 64, "dim": 32, "steps": 20, "batch_size": 8, "threads": 1},
    "evaluate": {"resolution": 32, "azimuths": 4, "real_views_per_object": 2, "bootstrap": 50, "threads": 1,
                 "image_quality": {"captions": 2, "steps": 2}},
}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def require_chromium() -> str:
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/setup.sh installs it)")
        pytest.skip("chromium not installed")
    return browser


def page_counts(browser: str, page: Path) -> dict[str, int]:
    """The data-* counts the report's inline scripts set on <body>, the page opened from disk.
    Virtual time lets the videos decode their first frame before the DOM is dumped."""
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body)}


@pytest.mark.slow
def test_evaluation_stages_and_report_in_a_browser(tmp_path, prefect_api_url):
    project = make_project(tmp_path, prefect_api_url, TINY)
    # set_params merges mappings; the model list must be replaced (no mv_3d in this project).
    raw = yaml.safe_load((project.root / "params.yaml").read_text())
    raw["evaluate"]["image_quality"]["models"] = {"base": "data/models/base", "mv": "data/models/mv"}
    raw["evaluate_studies"] = {"image_quality": {"models": {"mv": "data/models/mv"}, "captions": 2, "steps": 2}}
    raw["distill"]["prompts"] = TINY["distill"]["prompts"]           # two prompts, not the default eight
    raw["ablation"]["prompts"] = TINY["ablation"]["prompts"]
    (project.root / "params.yaml").write_text(yaml.safe_dump(raw))
    for name in ("mirror", "curate", "caption", "render"):
        project.stage(name)
    save_tiny_priors(project.root / "data/models")
    project.stage("train_evaluator")
    ev = json.loads((project.root / "data/models/evaluator/summary.json").read_text())
    assert ev["retrieval"]["val"]["n_captions"] >= 2 and "lit-minilm-effnetlite0" in ev["evaluator"]
    # Trained on textureless views too, and checked on the held-out ones.
    geo_val = ev["retrieval"]["val"]["textureless"]
    assert geo_val["n_captions"] == ev["retrieval"]["val"]["n_captions"] and 0.0 <= geo_val["R@1"] <= 1.0
    # Its curve through DVCLive (train/loss, train/temperature per step), no curve.csv.
    live = project.root / "data/models/evaluator/dvclive"
    assert not (live.parent / "curve.csv").exists()
    loss = (live / "plots/metrics/train/loss.tsv").read_text().splitlines()
    assert loss[0] == "step\tloss" and len(loss) == 1 + TINY["evaluator"]["steps"]
    assert json.loads((live / "metrics.json").read_text())["step"] == TINY["evaluator"]["steps"]

    project.stage("distill")
    for g in ("sds", "ism"):
        project.run(sys.executable, "-m", "stages.ablation", "--guidance", g, "--prompt", "red-chair")
    project.stage("evaluate")
    m = json.loads((project.root / "data/eval/metrics.json").read_text())
    assert m["evaluator"] == ev["evaluator"] and "efficientnet-lite0" in m["feature_net"]
    real = m["r_precision"]["real_test"]
    assert real["n_captions"] >= 3 and 0.0 <= real["R@1"] <= 1.0
    # The geo ceiling: the same real views, textureless.
    geo = m["r_precision"]["real_test_geo"]
    assert (geo["n_images"], geo["n_units"], geo["n_captions"]) == (real["n_images"], real["n_units"], real["n_captions"])
    assert set(m["assets"]) == {"distill:mv-sds+agp"}
    assert m["assets"]["distill:mv-sds+agp"]["n_assets"] == 2
    # Quarter-turn silhouette IoU of the assets, and of the real test objects beside them.
    assert 0.0 <= m["real_test_turn_iou"] <= 1.0
    turn = m["assets"]["distill:mv-sds+agp"]["turn_iou"]
    assert turn is None or 0.0 <= turn <= 1.0
    # The priors sample below the renders' resolution: the real views at theirs are a second ceiling.
    res = m["image_quality"]["mv"]["resolution"]
    assert res < TINY["evaluate"]["resolution"] and m["image_quality"]["base"]["resolution"] == res
    assert set(m["image_quality"]) == {"real", "base", "mv", f"real_{res}px"} and m["image_quality"]["mv"]["FID"] >= 0
    small = m["image_quality"][f"real_{res}px"]["r_precision"]
    assert (small["n_images"], small["n_captions"]) == (real["n_images"], real["n_captions"])
    # Samples ranked against every caption (test captions + prompts), the real renders beside.
    rp = m["image_quality"]["mv"]["r_precision"]
    assert rp["n_captions"] == real["n_captions"] and rp["n_units"] == 2 and 0.0 <= rp["R@1"] <= rp["R@5"] <= 1.0
    assert m["image_quality"]["real"]["r_precision"] == real
    assert (project.root / "data/eval/plots/assets.csv").read_text().count("\n") == 3

    # The studies: the ablation's assets, ranked against the same captions.
    project.stage("evaluate_studies")
    ms = json.loads((project.root / "data/eval_studies/metrics.json").read_text())
    assert set(ms["assets"]) == {"ablation:sds", "ablation:ism"} and set(ms["image_quality"]) == {"real", "mv", f"real_{res}px"}
    assert ms["r_precision"]["real_test"] == real
    assert ms["image_quality"]["mv"] == m["image_quality"]["mv"]         # same settings, same samples

    project.stage("report")
    report = project.root / "data/report/index.html"
    text = report.read_text()
    assert "http://" not in text and "https://" not in text          # nothing to fetch
    assert "Guidance ablation" not in text and m["evaluator"] in text   # the studies have their own page
    assert f"real renders at {res} px" in text
    # The training-loss chart, read from the DVCLive logs: the evaluator's curve is drawn.
    chart = re.search(r'<svg class="plot"[^>]*><title>training loss</title>.*?</svg>', text).group(0)
    assert ">evaluator</text>" in chart and chart.count("<polyline") >= 1
    # Two turntables (the two distilled prompts), each an MP4 that plays, before the tables.
    assert text.count("<video ") == 2 and text.index("<section class='card'>") < text.index("CLIP R-precision")
    attrs = page_counts(require_chromium(), report)
    assert attrs["images-total"] >= 3 and attrs["images-loaded"] == attrs["images-total"], attrs
    assert attrs["plots-total"] >= 3 and attrs["plots-drawn"] == attrs["plots-total"], attrs
    assert attrs["videos-total"] == 2 and attrs.get("videos-loaded") == 2, attrs

    project.stage("report_studies")
    studies = (project.root / "data/report_studies/index.html").read_text()
    assert "Guidance ablation" in studies and "dreamline studies" in studies
    assert studies.count("<video ") == 2 and "Distilled assets" not in studies
    attrs = page_counts(require_chromium(), project.root / "data/report_studies/index.html")
    assert attrs["videos-total"] == 2 and attrs.get("videos-loaded") == 2, attrs


# --------------------------------------------------------------------------- the report alone


def fake_eval(root: Path) -> dict:
    """What distill, ablation and evaluate leave for the report, made by hand: two distilled
    assets (turntable.gif + turntable.mp4), one ablation asset (GIF only, as before the MP4),
    their grids, assets.json with per-view ranks and metrics.json with sample R-precision."""
    from dreamline.representations.export import write_turntable

    data = root / "data"
    frames = [np.full((16, 16, 3), 60 * i, np.uint8) for i in range(3)]
    folders = {"data/distill/red-chair": "a red chair", "data/distill/blue-mug": "a blue mug",
               "data/ablation/sds/red-chair": "a red chair"}
    rows = []
    for k, (folder, prompt) in enumerate(folders.items()):
        write_turntable(frames, root / folder / "turntable.gif", fps=4)
        if "distill" in folder:
            write_turntable(frames, root / folder / "turntable.mp4", fps=4)
        (root / folder / "curve.csv").write_text("step,loss\n0,1.0\n1,0.5\n")
        grid = data / "eval/grids" / f"{k}.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 16, 3), 40 * k, np.uint8)).save(grid)
        rows.append({"asset": folder, "prompt": prompt, "guidance_type": "sds", "representation_type": "voxel",
                     "grid": str(grid.relative_to(root)), "ranks_colour": [1, 1, 3, 7][k:] + [2] * k,
                     "ranks_geo": [4, 6, 9, 12]})
    (data / "eval/assets.json").write_text(json.dumps(rows))
    real = {"n_images": 8, "n_units": 4, "n_captions": 12, "R@1": 0.875, "R@1_ci95": [0.5, 1.0],
            "R@5": 1.0, "R@5_ci95": [1.0, 1.0]}
    sample = {"n_images": 8, "n_units": 2, "n_captions": 12, "R@1": 0.3125, "R@1_ci95": [0.125, 0.5],
              "R@5": 0.6875, "R@5_ci95": [0.5, 0.875]}
    metrics = {"evaluator": "e", "feature_net": "f", "r_precision": {"real_test": real},
               "assets": {}, "image_quality": {"real": {"n": 8, "IS": 1.5, "r_precision": real},
                                               "mv": {"n": 8, "FID": 12.5, "IS": 1.25, "clip_score": 0.25,
                                                      "clip_score_ci95": [0.2, 0.3], "r_precision": sample}}}
    (data / "eval/metrics.json").write_text(json.dumps(metrics))
    return metrics


def build(root: Path) -> str:
    from dreamline.evaluation.report import build_report

    data = root / "data"
    return build_report(data / "eval/metrics.json", data / "eval/assets.json", data / "distill", data / "models",
                        None, root / "dvc.lock", data / "report/index.html").read_text()


def test_report_lineage_lists_its_own_inputs_only(tmp_path, monkeypatch):
    """The hashes on the page are those of what the report reads: a study's output or the
    report's own previous hash in dvc.lock would make the page change with nothing it reads."""
    monkeypatch.chdir(tmp_path)
    fake_eval(tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "report": {"cmd": "python -m stages.report", "deps": ["dreamline/evaluation/report.py",
                                                              "data/eval/metrics.json", "data/distill"]}}}))

    def lock(report_md5: str, study_md5: str) -> None:
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
            "evaluate": {"outs": [{"path": "data/eval/metrics.json", "md5": "aa11"}]},
            "distill@red-chair": {"outs": [{"path": "data/distill/red-chair", "md5": "bb22.dir"}]},
            "distill_other": {"outs": [{"path": "data/distill-other", "md5": "ee55.dir"}]},
            "train_depth": {"outs": [{"path": "data/models/depth", "md5": study_md5}]},
            "report": {"outs": [{"path": "data/report", "md5": report_md5}]}}}))

    lock("cc33.dir", "dd44.dir")
    text = build(tmp_path)
    assert "<td>evaluate</td><td>data/eval/metrics.json</td><td>aa11</td>" in text
    assert "<td>distill@red-chair</td><td>data/distill/red-chair</td><td>bb22.dir</td>" in text
    assert not any(h in text for h in ("cc33", "dd44", "ee55"))
    lock("ff66.dir", "0077.dir")                                      # a rerun, a study retrained
    assert build(tmp_path) == text


def test_report_leads_with_a_card_per_distilled_asset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_eval(tmp_path)
    text = build(tmp_path)
    assert build(tmp_path) == text                                   # deterministic
    cards = re.findall(r"<section class='card'>.*?</section>", text, flags=re.S)
    assert len(cards) == 2                                           # distilled only, not the ablation's
    first, rp = text.index("<section class='card'>"), text.index("<h2>CLIP R-precision</h2>")
    assert text.index("<h1>") < first < rp and text.rindex("<section class='card'>") < rp
    red = cards[0]
    assert "<p class='prompt'>a red chair</p>" in red and "<p class='prompt'>a blue mug</p>" in cards[1]
    # The turntable: the MP4 itself as a data URI in an autoplaying <video>, the GIF inside as fallback.
    video = re.search(r"<video [^>]*>.*?</video>", red, flags=re.S).group(0)
    for attr in ("autoplay", "loop", "muted", "playsinline"):
        assert f" {attr}" in video.split(">")[0]
    mp4 = re.search(r'<source src="data:video/mp4;base64,([^"]+)" type="video/mp4"', video).group(1)
    assert base64.b64decode(mp4) == (tmp_path / "data/distill/red-chair/turntable.mp4").read_bytes()
    assert '<img class="pix" src="data:image/gif;base64,' in video
    assert red.count("data:image/png;base64,") == 1                  # the colour / geo grid
    # Its retrieval: medians over views (colour 1, 1, 3, 7 -> 2; geo -> 7.5) of 12 captions, shares.
    assert "among 12 captions" in red and "colour <b>2</b>" in red and "geo <b>7.5</b>" in red
    assert "<td>colour</td><td>2</td><td>0.5</td><td>0.75</td><td>4</td>" in red
    assert "<td>geo (textureless)</td><td>7.5</td><td>0</td><td>0.25</td><td>4</td>" in red
    # The ablation asset, further down, has no MP4: its GIF alone.
    ablation = text[text.index("<h2>Ablation assets</h2>"):]
    assert "<video" not in ablation and "data:image/gif;base64," in ablation
    # Sample R-precision beside FID / IS, the real renders as the ceiling row.
    quality = text[text.index("<h2>Multi-view image quality</h2>"):]
    quality = quality[:quality.index("</table>")]
    assert "<th>R@1</th><th>R@1 ci95</th><th>R@5</th>" in quality
    assert "<td>real renders (ceiling)</td><td>8</td><td>–</td><td>1.5</td><td>–</td><td>–</td><td>0.875</td>" \
        "<td>[0.5, 1]</td><td>1</td>" in quality
    assert "<td>mv</td>" in quality and "<td>0.3125</td><td>[0.125, 0.5]</td><td>0.6875</td>" in quality

    # An asset without its MP4 (exported before it existed) shows the GIF alone.
    (tmp_path / "data/distill/red-chair/turntable.mp4").unlink()
    red = re.findall(r"<section class='card'>.*?</section>", build(tmp_path), flags=re.S)[0]
    assert "<video" not in red and "<p class='prompt'>a red chair</p>" in red
    assert re.search(r'<figure><img class="pix" src="data:image/gif;base64,[^"]+" width="256" alt="turntable">', red)


def test_report_turntables_play_in_a_browser_or_fall_back_to_the_gif(tmp_path, monkeypatch):
    browser = require_chromium()
    monkeypatch.chdir(tmp_path)
    fake_eval(tmp_path)
    build(tmp_path)
    page = tmp_path / "data/report/index.html"
    attrs = page_counts(browser, page)
    assert attrs["videos-total"] == 2 and attrs.get("videos-loaded") == 2, attrs
    assert attrs["images-loaded"] == attrs["images-total"] == 6, attrs      # 3 grids, 3 GIFs
    # An MP4 the browser cannot play: its <video> gives way to the GIF it holds.
    (tmp_path / "data/distill/red-chair/turntable.mp4").write_bytes(b"\0\0\0\x08junk" * 100)
    build(tmp_path)
    attrs = page_counts(browser, page)
    assert attrs["videos-total"] == 1 and attrs.get("videos-loaded") == 1, attrs
    assert attrs["images-loaded"] == attrs["images-total"] == 6, attrs
