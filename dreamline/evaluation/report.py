"""The offline HTML report: one self-contained file (images and turntable videos as data
URIs, charts as inline SVG drawn here, no network, no CDN). It leads with one card per
distilled asset (prompt, turntable, views, how the evaluator ranks its prompt), then the
metric tables. A small inline script records on load how many images decoded, how many
charts have a drawn extent and how many turntable videos loaded, so a headless browser can
check all three."""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import statistics
from pathlib import Path

import yaml

from dreamline.paths import confine

PALETTE = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00"]
CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var plots = Array.from(document.querySelectorAll('svg.plot'));
  var drawn = plots.filter(function (s) {
    var marks = s.querySelectorAll('.mark');
    return marks.length > 0 && Array.from(marks).some(function (m) {
      var b = m.getBBox(); return b.width > 0 || b.height > 0; });
  }).length;
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-plots-total', plots.length);
  document.body.setAttribute('data-plots-drawn', drawn);
  document.body.setAttribute('data-videos-total', document.querySelectorAll('video').length);
});
</script>"""
# Each turntable <video> counts itself on the body once its first frame decoded; one whose
# MP4 cannot be played is replaced by the GIF it holds as fallback content.
VIDEO_SCRIPT = """
<script>
function turntableLoaded() {
  var b = document.body; b.setAttribute('data-videos-loaded', +(b.getAttribute('data-videos-loaded') || 0) + 1);
}
function turntableFallback(source) {
  var video = source.parentNode, gif = video.querySelector('img');
  if (gif) { video.replaceWith(gif); }
}
</script>"""
STYLE = """<style>
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img.pix,video.pix{image-rendering:pixelated}.note{color:#666;font-size:90%}figure{display:inline-block;margin:4px}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:85%}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:0 0 18px}
.card .prompt{font-size:1.7em;font-weight:bold;margin:0 0 8px}.card .media{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.card table{margin:4px 0}
</style>"""


def data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}[path.suffix.lower()]
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def img(path: Path, width: int | None = None, alt: str = "") -> str:
    w = f' width="{width}"' if width else ""
    return f'<img class="pix" src="{data_uri(path)}"{w} alt="{html.escape(alt)}">'


def turntable(folder: Path, what: str, width: int = 256) -> str:
    """An asset's turntable: turntable.mp4 as a looping, muted, autoplaying <video> holding
    turntable.gif as fallback (shown where the MP4 cannot play, or alone where there is no
    MP4: an asset exported before it existed); "" when neither exists. Both files are
    confined to the asset folder."""
    gif = confine("turntable.gif", folder, f"{what}: turntable.gif")
    mp4 = confine("turntable.mp4", folder, f"{what}: turntable.mp4")
    fallback = img(gif, width, "turntable") if gif.exists() else ""
    if not mp4.exists():
        return fallback
    return (f'<video class="pix turntable" width="{width}" autoplay loop muted playsinline '
            f'onloadeddata="turntableLoaded()"><source src="{data_uri(mp4)}" type="video/mp4" '
            f'onerror="turntableFallback(this)">{fallback}</video>')


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (float, int, type(None))) for x in v):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return html.escape(str(v))


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">nothing to show</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(values: dict[str, float], title: str, vmax: float | None = None, width: int = 520) -> str:
    """Horizontal bars, one per label, as inline SVG."""
    items = [(k, v) for k, v in values.items() if v is not None]
    if not items:
        return ""
    vmax = vmax or max(v for _, v in items) or 1.0
    row_h, left = 22, 190
    height = row_h * len(items) + 30
    parts = [f'<svg class="plot" width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text x="4" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, v) in enumerate(items):
        y = 22 + i * row_h
        w = max(1.0, (width - left - 60) * v / vmax)
        parts.append(f'<text x="4" y="{y + 14}" font-size="11">{html.escape(label)}</text>')
        parts.append(f'<rect class="mark" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="11">{v:.3g}</text>')
    return "".join(parts) + "</svg>"


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, width: int = 520, height: int = 220) -> str:
    """Loss curves as inline SVG polylines (log-free, min-max scaled)."""
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return ""
    xs = [x for s in series.values() for x, _ in s]
    ys = [y for s in series.values() for _, y in s]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: 40 + (width - 50) * (x - x0) / ((x1 - x0) or 1)          # noqa: E731
    sy = lambda y: height - 25 - (height - 50) * (y - y0) / ((y1 - y0) or 1)  # noqa: E731
    parts = [f'<svg class="plot" width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text x="4" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>',
             f'<text x="4" y="{height - 8}" font-size="10">{y0:.3g}..{y1:.3g} over {x0:.0f}..{x1:.0f}</text>']
    for i, (name, pts) in enumerate(series.items()):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<polyline class="mark" fill="none" stroke="{colour}" stroke-width="1.2" points="{path}"/>')
        parts.append(f'<text x="{width - 150}" y="{30 + 13 * i}" font-size="10" fill="{colour}">{html.escape(name)}</text>')
    return "".join(parts) + "</svg>"


TRAIN_LOSS = "dvclive/plots/metrics/train/loss.tsv"   # under a model folder


def read_curve(path: Path, y: str = "loss", every: int = 1) -> list[tuple[float, float]]:
    """(step, y) of a loss curve: a distill asset's curve.csv, or a DVCLive metric history
    (`<model>/dvclive/plots/metrics/train/loss.tsv`: tab-separated `step`, `loss`)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    pts = [(float(r["step"]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
    # Smooth noisy SDS curves with a running mean so trends are visible.
    k = max(1, len(pts) // 60)
    return [(pts[i][0], sum(p[1] for p in pts[max(0, i - k + 1): i + 1]) / len(pts[max(0, i - k + 1): i + 1]))
            for i in range(0, len(pts), every)]


def texture_section(path: Path) -> list[str]:
    """MVDiffusion texturing (stage `texture`): consistency, image quality, R-precision, views."""
    t = json.loads(path.read_text())
    s = ["<h2>Texturing (MVDiffusion)</h2><p class='note'>Test objects textured from their depth maps: "
         f"{t['views']} views generated together with correspondence-aware attention (CAA) and, from the same "
         "noise, each view alone. Overlap PSNR: each view against its neighbour warped through depth, over "
         f"the pixels both see (dB; interval: bootstrap over {t['objects']} objects). Image quality against "
         "real test renders. R-precision of renders of the baked GLB, the same shape untextured, and with its "
         "own colours (ceiling).</p>"]
    c = t["consistency"]
    s.append(table([{"variant": k, "PSNR": v["psnr"], "ci95": v.get("psnr_ci95") or v.get("ci95"),
                     "objects": v.get("n_objects")} for k, v in c.items()], ["variant", "PSNR", "ci95", "objects"]))
    s.append(table([{"variant": k, **v} for k, v in t["image_quality"].items()],
                   ["variant", "n", "FID", "KID", "IS", "clip_score", "clip_score_ci95"]))
    rp_cols = ["renders", "n_images", "n_units", "n_captions", "R@1", "R@1_ci95", "R@5", "R@5_ci95"]
    s.append(table([{"renders": k, **v} for k, v in t["r_precision"].items()], rp_cols))
    d = t.get("distilled") or {}
    if d.get("consistency"):
        s.append("<h3>Distilled shapes, textured</h3><p class='note'>Each distilled asset's mesh textured with "
                 "its prompt; R-precision of the MVDiffusion texture vs the colours distillation gave it vs the "
                 f"grey shape, among {d['n_captions']} captions (test captions + prompts).</p>")
        s.append(table([{"variant": k, "PSNR": v["psnr"], "ci95": v.get("psnr_ci95") or v.get("ci95"),
                         "objects": v.get("n_objects", v.get("n"))} for k, v in d["consistency"].items()],
                       ["variant", "PSNR", "ci95", "objects"]))
        s.append(table([{"renders": k, **v} for k, v in d["r_precision"].items()], rp_cols))
    for row in t.get("objects_table", [])[:4]:
        # Paths in metrics.json are as the texture stage wrote them (relative to the project);
        # only files inside its output folder are embedded.
        glb = confine(row["glb"], path.parent, f"{path}: objects_table glb", relative_to=".")
        grid = confine(glb.parent / "views.png", path.parent, f"{path}: views of {row['glb']}")
        if grid.exists():
            s.append(f"<figure>{img(grid, 256, 'views')}<figcaption>{html.escape(row['prompt'])}: with CAA "
                     f"(top), alone (bottom); PSNR {row['psnr_caa']} / {row['psnr_independent']}</figcaption></figure>")
    return s


def retrieval(a: dict) -> list[dict]:
    """How the evaluator ranks the asset's own prompt among every caption, per kind of render:
    the median rank over its views and the share of views ranking it first / in the top 5."""
    rows = []
    for kind, label in (("colour", "colour"), ("geo", "geo (textureless)")):
        ranks = a.get(f"ranks_{kind}") or []
        if ranks:
            rows.append({"renders": label, "median rank": statistics.median(ranks),
                         "rank 1": round(sum(r == 1 for r in ranks) / len(ranks), 4),
                         "rank ≤ 5": round(sum(r <= 5 for r in ranks) / len(ranks), 4), "views": len(ranks)})
    return rows


def asset_card(a: dict, folder: Path, grid: Path, n_captions: int | None, what: str,
               elevation: float = 30.0) -> str:
    """One distilled asset: its prompt, turntable, colour / geo views and retrieval result."""
    s = [f"<section class='card'><p class='prompt'>{html.escape(a['prompt'])}</p><div class='media'>"]
    video = turntable(folder, what)
    if video:
        s.append(f"<figure>{video}<figcaption>turntable</figcaption></figure>")
    if grid.exists():
        s.append(f"<figure>{img(grid, 512, 'views')}<figcaption>colour (top) / textureless (bottom) "
                 f"at {elevation:g}° elevation</figcaption></figure>")
    s.append("</div>")
    rows = retrieval(a)
    if rows:
        ranks = " · ".join(f"{r['renders'].split()[0]} <b>{fmt(r['median rank'])}</b>" for r in rows)
        s.append(f"<p>Rank of its prompt among {fmt(n_captions)} captions (median over views): {ranks}</p>")
        s.append(table(rows, ["renders", "median rank", "rank 1", "rank ≤ 5", "views"]))
    s.append(f"<p class='note'>{html.escape(str(a.get('guidance_type')))}, "
             f"{html.escape(str(a.get('representation_type')))}, {html.escape(str(a['asset']))}</p></section>")
    return "".join(s)


MAIN_CURVES = ("base", "mv", "agp", "evaluator")
STUDIES_CURVES = ("mv", "mv_3d", "dreambooth", "depth", "mvdiffusion")


def lineage_rows(lock_path: Path, stage: str) -> list[dict]:
    """The hashes dvc.lock records for the data `stage` reads (its deps in dvc.yaml beside the
    lock), by the stage that wrote each. Only these: the rest of the lock (the studies' outputs,
    this report's own previous hash) can change without this stage's inputs changing, and the
    page would then differ from run to run."""
    pipeline_path = lock_path.with_name("dvc.yaml")
    if not (lock_path.exists() and pipeline_path.exists()):
        return []
    reads = set(((yaml.safe_load(pipeline_path.read_text()) or {}).get("stages") or {}).get(stage, {}).get("deps", []))
    lock = yaml.safe_load(lock_path.read_text()) or {}
    return [{"stage": st, "output": o["path"], "md5": o.get("md5", "")}
            for st, body in (lock.get("stages") or {}).items() for o in body.get("outs", [])
            if any(o["path"] == d or o["path"].startswith(d.rstrip("/") + "/") for d in reads)]


def build_report(metrics_path: Path, assets_path: Path, distill_root: Path, models_root: Path,
                 params: dict | None, lock_path: Path, out: Path, texture_path: Path | None = None,
                 title: str = "dreamline report", curves: tuple[str, ...] = MAIN_CURVES,
                 stage: str = "report") -> Path:
    """`params`: the validated parameter sections to show (what the stage ran with, defaults
    filled in), not a file read here. `curves`: the models (folders under `models_root`)
    whose training loss is drawn. `stage`: the DVC stage writing it (its inputs' hashes are shown)."""
    m = json.loads(metrics_path.read_text())
    assets = json.loads(assets_path.read_text()) if assets_path.exists() else []
    s = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>", STYLE,
         "</head><body>", f"<h1>{html.escape(title)}</h1>",
         f"<p>Image-text evaluator: <b>{html.escape(m['evaluator'])}</b>; FID/IS feature network: "
         f"<b>{html.escape(m['feature_net'])}</b>. Values of the embedded default are not comparable "
         f"to the papers' (different models and feature networks).</p>", VIDEO_SCRIPT]

    real = m["r_precision"]["real_test"]
    # The asset grids' elevation: the evaluate parameters the report is shown with (their default otherwise).
    elevation = float(((params or {}).get("evaluate") or {}).get("elevation_deg", 30.0))
    located = []
    for a in assets:
        # Written by the evaluate stage: an asset under data/ (distill or ablation), a grid
        # under the eval folder; an entry naming anything else is refused, not embedded.
        folder = confine(a["asset"], distill_root.parent, f"{assets_path}: asset", relative_to=".")
        grid = confine(a["grid"], metrics_path.parent, f"{assets_path}: grid of {a['asset']}",
                       relative_to=".")
        located.append((a, folder, grid))
    # The distill stage's assets (under distill_root) lead; the rest (the ablation's) come further down.
    root = Path(os.path.realpath(distill_root))
    distilled = [x for x in located if x[1].is_relative_to(root)]
    ablated = [x for x in located if not x[1].is_relative_to(root)]
    if distilled:
        s.append(f"<h2>Distilled assets</h2><p class='note'>One per prompt (stage <code>distill</code>). "
                 f"Rank: where the evaluator puts the asset's own prompt among all {fmt(real.get('n_captions'))} "
                 f"captions (test captions and distilled prompts) for each rendered view, median over "
                 f"the views; rank 1 / rank ≤ 5: the share of views that rank it first / in the top 5.</p>")
        for a, folder, grid in distilled:
            s.append(asset_card(a, folder, grid, real.get("n_captions"), f"{assets_path}: {a['asset']}", elevation))

    s.append("<h2>CLIP R-precision</h2><p class='note'>Renders at "
             "fixed azimuths; the true prompt ranked against every test caption and every distilled "
             "prompt (distractors). Real renders of test objects are the ceiling row (geo: the same views "
             "shaded textureless, as the assets' geo renders are). Quarter-turn IoU: the silhouette's "
             "IoU with itself a quarter turn further round (1: the same from every side, as a solid of "
             "revolution; the real row: the test objects). Intervals: "
             "bootstrap over objects / assets.</p>")
    real_geo = m["r_precision"].get("real_test_geo", {})
    rows = [{"row": "real test renders (ceiling)", "n": real["n_units"], "captions": real["n_captions"],
             "R@1 colour": real["R@1"], "R@1 ci95": real["R@1_ci95"], "R@5 colour": real["R@5"],
             "R@1 geo": real_geo.get("R@1"), "R@5 geo": real_geo.get("R@5"),
             "quarter-turn IoU": m.get("real_test_turn_iou")}]
    for name, a in m.get("assets", {}).items():
        rows.append({"row": name, "n": a["n_assets"], "captions": real["n_captions"],
                     "R@1 colour": a["colour_R@1"], "R@1 ci95": a["colour_R@1_ci95"], "R@5 colour": a["colour_R@5"],
                     "R@1 geo": a["geo_R@1"], "R@5 geo": a["geo_R@5"], "PSNR": a["psnr"],
                     "consistency rate": a["consistency_rate"], "quarter-turn IoU": a.get("turn_iou")})
    s.append(table(rows, ["row", "n", "captions", "R@1 colour", "R@1 ci95", "R@5 colour", "R@1 geo",
                          "R@5 geo", "PSNR", "consistency rate", "quarter-turn IoU"]))
    s.append(bar_chart({r["row"]: r["R@1 colour"] for r in rows}, "R@1 (colour renders)", vmax=1.0))
    ablation = {k.split(":", 1)[1]: v for k, v in m.get("assets", {}).items() if k.startswith("ablation:")}
    if ablation:
        s.append("<h2>Guidance ablation</h2><p class='note'>The same prompts distilled with each guidance "
                 "type (stage <code>ablation</code>). PSNR: overlap PSNR of neighbouring views warped "
                 "through depth (dB); consistency rate: share of assets the Janus proxy does not flag.</p>")
        s.append(table([{"guidance": g, **{k: a.get(k) for k in ("n_assets", "colour_R@1", "colour_R@5", "geo_R@1",
                                                                 "psnr", "consistency_rate")}}
                        for g, a in ablation.items()]))
        s.append(bar_chart({g: a["psnr"] for g, a in ablation.items()}, "overlap PSNR (dB) by guidance"))

    q = m.get("image_quality", {})
    if q:
        s.append("<h2>Multi-view image quality</h2><p class='note'>Samples for test captions vs held-out "
                 "real renders (MVDream Table 1). R@1 / R@5: sample R-precision, each sample's own caption "
                 "ranked among all captions (test captions and distilled prompts; interval: bootstrap over "
                 "captions); the real renders' row is the ceiling, and the same renders area-averaged to a "
                 "prior's sampling resolution the ceiling at that size.</p>")
        rows = []
        for k, v in q.items():
            rp = v.get("r_precision") or {}
            label = {"real": "real renders (ceiling)"}.get(k, f"real renders at {v.get('resolution')} px"
                                                         if k.startswith("real_") else k)
            rows.append({"model": label, **v, "R@1": rp.get("R@1"),
                         "R@1 ci95": rp.get("R@1_ci95"), "R@5": rp.get("R@5"), "captions": rp.get("n_captions")})
        s.append(table(rows, ["model", "n", "FID", "IS", "clip_score", "clip_score_ci95", "R@1", "R@1 ci95",
                              "R@5", "captions"]))
        for name in q:
            grid = confine(f"grids/samples_{name}.png", metrics_path.parent, f"{metrics_path}: image_quality.{name}")
            if grid.exists():
                s.append(f"<figure>{img(grid, 256, name)}<figcaption>{html.escape(name)}</figcaption></figure>")

    if texture_path is not None and texture_path.exists():
        s += texture_section(texture_path)

    if distilled:
        s.append("<h2>Loss curves of the distilled assets</h2>")
        s.append("".join(line_chart({"loss": read_curve(confine("curve.csv", folder, f"{assets_path}: loss curve "
                                                                 f"of {a['asset']}"))}, f"loss: {a['prompt']}")
                         for a, folder, _ in distilled))
    if ablated:
        s.append("<h2>Ablation assets</h2>")
    for a, folder, grid in ablated:
        s.append(f"<h3>{html.escape(a['prompt'])} <span class='note'>({html.escape(str(a.get('guidance_type')))}, "
                 f"{html.escape(str(a['asset']))})</span></h3>")
        video = turntable(folder, f"{assets_path}: {a['asset']}", 128)
        if video:
            s.append(f"<figure>{video}<figcaption>turntable</figcaption></figure>")
        if grid.exists():
            s.append(f"<figure>{img(grid, 512, 'views')}<figcaption>colour / textureless at "
                     f"{elevation:g}° elevation</figcaption></figure>")
        curve = confine("curve.csv", folder, f"{assets_path}: loss curve of {a['asset']}")
        s.append(line_chart({"loss": read_curve(curve)}, f"loss: {a['prompt']}"))

    s.append("<h2>Training curves</h2>")
    # Each training stage's loss as DVCLive logged it (dreamline.training.common.write_dvclive).
    s.append(line_chart({name: read_curve(models_root / name / TRAIN_LOSS) for name in curves}, "training loss"))

    s.append("<h2>Where this came from</h2><p class='note'>The parameters and the data version "
             "this report was built from: dvc.lock's hash of each output it reads, by the stage that "
             "wrote it (<code>dreamline lineage</code> traces any of them further back).</p>")
    if params:
        s.append(f"<pre>{html.escape(yaml.safe_dump(params, sort_keys=False))}</pre>")
    outs = lineage_rows(lock_path, stage)
    if outs:
        s.append(table(outs))
    s.append(CHECK_SCRIPT)
    s.append("</body></html>")
    from dreamline.atomic import write_bytes_atomic

    return write_bytes_atomic(out, "\n".join(x for x in s if x).encode())
