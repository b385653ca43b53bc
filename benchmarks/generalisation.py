"""Generalisation: `dreamline generate` on prompts outside the default set, scored by the evaluator.

    . scripts/env.sh
    python benchmarks/generalisation.py [--prompts-file FILE] [--out /tmp/dreamline-generalisation] \
        [--params params.yaml] [--steps N] [--guidance TYPE] [--seed S] [--set KEY=VALUE ...] \
        [--score-only] [--evaluator FOLDER] [--json benchmarks/results/generalisation.json]

Needs a reproduced pipeline up to the priors and the evaluator (`dvc repro train_mv train_agp
train_evaluator`, which brings data/renders and data/captions with them); run it from the
repository root. No network. With the default 13 prompts and params.yaml's distill block
(300 steps of mv-sds+agp) it takes about 2 minutes a prompt on 2 quiet cores, run alone.

1. Prompts (`default_prompts()`, or `--prompts-file`: one a line, `prompt` or
   `kind<TAB>prompt`, optionally `<TAB>category<TAB>colour`; `#` comments) of two kinds:
   *paraphrase*, words the training captions never use for a category and colour they do
   ("a scarlet seat" = a red chair), and *combination*, a category and a colour of the
   procedural corpus (dreamline/sources/procedural.py) that the training set did not show
   together ("a black chair"). Which pairs a corpus shows depends on it: the 7 built-in
   combinations are unseen in the default one (mirror seed 0, 14 objects a category), a
   larger mirror shows most pairs; the printed check says, for the corpus at hand.
2. The check (`seen_check()`): the train split of data/captions/captions.parquet says, for
   each prompt's (category, colour), how many training objects carry both, in their caption
   or original text (the texts the priors and the evaluator were trained on) and in their
   metadata (category, mesh colour), and which of the prompt's words no training text has.
   A combination is labelled unseen only when both counts are 0; the table is printed.
3. Each prompt is distilled by `python -m flows.cli generate PROMPT --out OUT/<slug>
   --params ...` (what `dreamline generate` runs: params.yaml's distill block with the
   prompt added, `--steps`/`--guidance`/`--seed`/`--set` passed through), one Prefect API
   shared by all of them. A folder already holding this asset (same distill key) is kept, so
   a second run only evaluates (`--score-only` distils nothing and scores the folders under
   `--out` whatever made them, e.g. with another `--evaluator`). The assets go under `--out`, never under data/ (generate's
   scratch checkpoints live in data/checkpoints/distill/<slug> while it runs, as always).
4. Every asset is scored by the evaluate stage's own code
   (dreamline.evaluation.evaluate.evaluate_assets / summarise_assets, the evaluator of
   `evaluate.evaluator`, `evaluate`'s azimuths, elevation and resolution) against the
   evaluate stage's caption set (the test-split captions of the mv renders, plus every
   `distill.prompts` value) plus all the benchmark's prompts: each asset's own prompt is the
   true caption, the other benchmark prompts are distractors too. Note that a paraphrase
   competes with its plain wording when that is a distill prompt ("a scarlet seat" with
   "a red chair"), which the best red chair loses; so each paraphrase is also ranked by its
   meaning: the plain wording of its category and colour ("a red chair") among the captions
   with the paraphrase taken out (rows "by meaning", summary "paraphrase:by meaning").

Printed: the check, then per prompt the colour median rank, colour R@1 and R@5 (the share of
the `evaluate.azimuths` views whose own prompt ranks first / in the top 5) and the same for the
textureless (geo) renders; then summarise_assets over all assets and per kind (R@1 / R@5 with
bootstrap intervals over assets) and the number of captions. Everything goes to `--json`
(written atomically) with the prompts, the check, the params file's sha256, the overrides, the
git commit and the command line; the only timing figure there is `seconds`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

KINDS = ("paraphrase", "combination")
STOPWORDS = frozenset({"a", "an", "the", "of", "with", "and", "in", "made"})


@dataclass(frozen=True)
class Prompt:
    text: str
    kind: str                 # paraphrase | combination
    category: str | None      # a procedural category (dreamline/sources/procedural.py)
    colour: str | None        # a PALETTE colour


def categories_and_colours() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The procedural corpus' categories and colour names."""
    from dreamline.config import DEFAULT_CATEGORIES
    from dreamline.sources.procedural import PALETTE

    return tuple(DEFAULT_CATEGORIES), tuple(PALETTE)


def default_prompts() -> list[Prompt]:
    """Paraphrases (words no training caption uses) and category x colour combinations
    that the default corpus (mirror seed 0, 14 objects a category) never shows together."""
    return [
        Prompt("a scarlet seat", "paraphrase", "chair", "red"),
        Prompt("a crimson armchair", "paraphrase", "chair", "red"),
        Prompt("an azure coffee cup", "paraphrase", "mug", "blue"),
        Prompt("a violet spaceship", "paraphrase", "rocket", "purple"),
        Prompt("an ivory cottage", "paraphrase", "house", "white"),
        Prompt("an emerald pine tree", "paraphrase", "tree", "green"),
        Prompt("a black chair", "combination", "chair", "black"),
        Prompt("a red car", "combination", "car", "red"),
        Prompt("a yellow mug", "combination", "mug", "yellow"),
        Prompt("an orange tree", "combination", "tree", "orange"),
        Prompt("a white stool", "combination", "stool", "white"),
        Prompt("a green table", "combination", "table", "green"),
        Prompt("a blue airplane", "combination", "airplane", "blue"),
    ]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", str(text).lower())


def infer_prompt(text: str, kind: str | None = None, category: str | None = None,
                 colour: str | None = None) -> Prompt:
    """A Prompt from a line of a prompts file: category and colour are the corpus' words
    found in it unless given; without a kind it is a combination when both are found."""
    cats, cols = categories_and_colours()
    ws = words(text)
    category = category or next((w for w in ws if w in cats), None)
    colour = colour or next((w for w in ws if w in cols), None)
    if kind is None:
        kind = "combination" if category in ws and colour in ws else "paraphrase"
    kind = {"new combination": "combination", "new-combination": "combination"}.get(kind.strip().lower(),
                                                                                   kind.strip().lower())
    if kind not in KINDS:
        raise ValueError(f"{text!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if category is not None and category not in cats:
        raise ValueError(f"{text!r}: category {category!r} is not one of {', '.join(cats)}")
    if colour is not None and colour not in cols:
        raise ValueError(f"{text!r}: colour {colour!r} is not one of {', '.join(cols)}")
    return Prompt(text.strip(), kind, category, colour)


def read_prompts(path: Path) -> list[Prompt]:
    """`prompt`, `kind<TAB>prompt` or `kind<TAB>prompt<TAB>category<TAB>colour` per line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        try:
            if len(fields) == 1:
                out.append(infer_prompt(fields[0]))
            elif len(fields) == 2:
                out.append(infer_prompt(fields[1], fields[0]))
            elif len(fields) == 4:
                out.append(infer_prompt(fields[1], fields[0], fields[2] or None, fields[3] or None))
            else:
                raise ValueError("expected prompt, kind<TAB>prompt or kind<TAB>prompt<TAB>category<TAB>colour")
        except ValueError as err:
            raise ValueError(f"{path}:{n}: {err}") from None
    return out


def unique_by_slug(prompts: list[Prompt]) -> list[Prompt]:
    """Each prompt once; two different prompts with one asset folder name are refused."""
    from flows.cli import _slug

    seen: dict[str, Prompt] = {}
    for p in prompts:
        s = _slug(p.text)
        if s in seen and seen[s].text != p.text:
            raise ValueError(f"{seen[s].text!r} and {p.text!r} share the folder name {s!r}")
        seen.setdefault(s, p)
    return list(seen.values())


def seen_check(prompts: list[Prompt], captions: Path, split: str = "train") -> list[dict]:
    """Per prompt: training objects whose caption or original text names both its category
    and colour (`train_text`), those whose metadata has both (`train_metadata`: category noun,
    mesh colour), the prompt's words no training text has, and `unseen` (both counts 0;
    None without a category or colour)."""
    import pandas as pd

    from dreamline.captioning.base import category_noun

    table = pd.read_parquet(captions)
    rows = table[table["split"] == split]
    originals = rows["original_text"] if "original_text" in rows else rows["caption"]
    texts = [set(words(c)) | set(words(o)) for c, o in zip(rows["caption"], originals)]
    vocab = set().union(*texts) if texts else set()
    categories = rows["category"] if "category" in rows else [None] * len(rows)
    nouns = [set(words(category_noun(c) or "")) for c in categories]
    mesh = list(rows["mesh_colour"]) if "mesh_colour" in rows else [None] * len(rows)
    out = []
    for p in prompts:
        entry = {"prompt": p.text, "kind": p.kind, "category": p.category, "colour": p.colour,
                 "novel_words": [w for w in dict.fromkeys(words(p.text)) if w not in vocab and w not in STOPWORDS],
                 "prompt_in_train": bool(p.text in set(rows["caption"]))}
        if p.category and p.colour:
            entry["train_text"] = sum(1 for t in texts if p.category in t and p.colour in t)
            entry["train_metadata"] = sum(1 for n, c in zip(nouns, mesh) if p.category in n and c == p.colour)
            entry["unseen"] = entry["train_text"] == 0 and entry["train_metadata"] == 0
        else:
            entry.update(train_text=None, train_metadata=None, unseen=None)
        out.append(entry)
    return out


def effective_params(params: Path, steps: int | None = None, guidance: str | None = None,
                     seed: int | None = None, sets: list[str] = ()):
    """The params `generate` distils with (its merge of the command line into the distill
    block), less the prompt: the radius the evaluation renders at and the distill prompts."""
    from dreamline.config import load_params, parse_params
    from flows.cli import _parse_sets

    base = load_params(params).model_dump(mode="json")
    block = base["distill"]
    for key, value in (("guidance_type", guidance), ("steps", steps), ("seed", seed)):
        if value is not None:
            block[key] = value
    for key, value in _parse_sets(list(sets)).items():
        block[key] = ({**block.get(key, {}), **value} if isinstance(value, dict) and isinstance(block.get(key), dict)
                      else value)
    return parse_params(base, f"{params} + command line")


def caption_set(params, renders: Path, captions: Path, prompts: list[str]) -> tuple[list[str], dict]:
    """The evaluate stage's captions (test-split captions of the mv renders, every
    distill.prompts value) with `prompts` added; and the count of each part."""
    from dreamline.evaluation.train_evaluator import real_views

    p = params.evaluate
    rows, _ = real_views(renders, captions, p.resolution, "test", kinds=("mv",))
    rows = rows.loc[rows.groupby("uid").head(p.real_views_per_object).index]
    test = sorted(set(rows["caption"]))
    distill = sorted(set(params.distill.prompts.values()))
    texts = sorted(set(test) | set(distill) | set(prompts))
    return texts, {"n_captions": len(texts), "n_test_captions": len(test), "n_distill_prompts": len(distill),
                   "n_benchmark_prompts": len(set(prompts))}


def plain_wording(category: str, colour: str) -> str:
    """The corpus's own words for a category and colour: "a red chair", "an orange tree"."""
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {category}"


def meaning_ranks(rows: list[dict], texts: list[str], evaluator, meanings: dict[str, str]) -> None:
    """For an asset whose prompt has a plain wording other than itself (a paraphrase: "a scarlet
    seat" means "a red chair"), the ranks of that wording among the captions with the prompt
    taken out ("meaning_ranks_colour" / "_geo"): whether the evaluator names the asset by what
    the prompt means. The prompt's own ranks set the paraphrase against its plain wording when
    that is a caption too, which the best red chair loses; this asks the generator's question
    apart from the evaluator's grasp of rare words. Drops the rows' embeddings."""
    from dreamline.evaluation.metrics import retrieval_ranks

    for row in rows:
        embeddings = row.pop("embeddings", None)
        plain = meanings.get(row["prompt"])
        if embeddings is None or not plain or plain == row["prompt"]:
            continue
        others = sorted((set(texts) - {row["prompt"]}) | {plain})
        text_emb = evaluator.embed_texts(others)
        for kind, emb in embeddings.items():
            row[f"meaning_ranks_{kind}"] = retrieval_ranks(emb, text_emb, [others.index(plain)] * len(emb)).tolist()
        row["meaning"] = plain


def per_asset(row: dict) -> dict:
    """Median rank and R@1 / R@5 (shares of views) of one asset's colour and geo renders."""
    import numpy as np

    out = {}
    for kind in ("colour", "geo"):
        ranks = np.asarray(row[f"ranks_{kind}"])
        out[f"{kind}_median_rank"] = float(np.median(ranks))
        out[f"{kind}_R@1"] = round(float((ranks <= 1).mean()), 4)
        out[f"{kind}_R@5"] = round(float((ranks <= 5).mean()), 4)
        if f"meaning_ranks_{kind}" in row:
            ranks = np.asarray(row[f"meaning_ranks_{kind}"])
            out[f"meaning_{kind}_median_rank"] = float(np.median(ranks))
            out[f"meaning_{kind}_R@1"] = round(float((ranks <= 1).mean()), 4)
            out[f"meaning_{kind}_R@5"] = round(float((ranks <= 5).mean()), 4)
    return out


def evaluate_folders(params, folders: list[Path], texts: list[str], grids: Path,
                     meanings: dict[str, str] | None = None) -> dict:
    """The evaluate stage's asset rows for `folders` against `texts` (each asset's prompt
    must be one), with the evaluator of params.evaluate.evaluator on params.compute's
    device: {"evaluator", "rows" (evaluate_assets + per_asset), "summary" (summarise_assets)}."""
    from dreamline.evaluation.evaluate import evaluate_assets, summarise_assets
    from dreamline.evaluation.evaluator import load_evaluator
    from tasks.common import compute_target

    p = params.evaluate
    device, precision = compute_target(params.compute.device, params.compute.precision)
    evaluator = load_evaluator(p.evaluator, device, precision)
    text_emb = evaluator.embed_texts(list(texts))
    rows = evaluate_assets(p, evaluator, list(folders), list(texts), text_emb, Path(grids),
                           params.distill.camera.radius, device, keep_embeddings=True)
    meaning_ranks(rows, list(texts), evaluator, meanings or {})
    for row, folder in zip(rows, folders):
        summary = Path(folder) / "summary.json"
        row["distill_key"] = json.loads(summary.read_text()).get("key") if summary.is_file() else None
        row.update(per_asset(row))
    return {"evaluator": evaluator.name, "device": str(device), "precision": precision, "rows": rows,
            "summary": summarise_assets(rows, p) if rows else None}


@contextlib.contextmanager
def prefect_api():
    """One Prefect API for every generate process: the configured one, else a temporary
    server (each process would otherwise start its own)."""
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=90)
    try:
        yield server.api_url
    finally:
        server.stop()


def generate_command(prompt: str, folder: Path, params: Path, steps: int | None = None,
                     guidance: str | None = None, seed: int | None = None, sets: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "flows.cli", "generate", prompt, "--out", str(folder), "--params", str(params)]
    for flag, value in (("--steps", steps), ("--guidance", guidance), ("--seed", seed)):
        if value is not None:
            cmd += [flag, str(value)]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def generate(prompts: list[Prompt], out: Path, params: Path, api_url: str, steps=None, guidance=None,
             seed=None, sets: list[str] = (), log=print) -> list[Path]:
    """Each prompt through `dreamline generate` into out/<slug>; stops at the first failure."""
    from flows.cli import _slug

    env = dict(os.environ, PREFECT_API_URL=api_url,
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    folders = []
    for i, p in enumerate(prompts, 1):
        folder = out / _slug(p.text)
        cmd = generate_command(p.text, folder, params, steps, guidance, seed, sets)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                               f"{proc.stderr[-4000:]}")
        log(f"[{i}/{len(prompts)}] {p.text!r} -> {folder} ({time.perf_counter() - t0:.0f} s)")
        folders.append(folder)
    return folders


def _fmt(x, digits=3) -> str:
    return "-" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def print_check(check: list[dict], captions: Path, log=print) -> None:
    log(f"\ncategory x colour in the train split of {captions} (objects with both: text / metadata)")
    log(f"{'prompt':28} {'kind':12} {'category':9} {'colour':7} {'text':>5} {'meta':>5}  unseen  novel words")
    for c in check:
        log(f"{c['prompt'][:28]:28} {c['kind']:12} {_fmt(c['category']):9} {_fmt(c['colour']):7} "
            f"{_fmt(c['train_text']):>5} {_fmt(c['train_metadata']):>5}  {_fmt(c['unseen']):6}  "
            f"{', '.join(c['novel_words']) or '-'}")
    bad = [c["prompt"] for c in check if c["kind"] == "combination" and c["unseen"] is False]
    if bad:
        log(f"note: seen in training, so not a new combination: {', '.join(bad)}")


def print_results(rows: list[dict], summaries: dict, counts: dict, log=print) -> None:
    log(f"\n{'prompt':28} {'kind':12} {'unseen':6} {'col med':>7} {'col R@1':>7} {'col R@5':>7} "
        f"{'geo R@1':>7} {'geo R@5':>7} {'turn IoU':>8}")
    for r in rows:
        log(f"{r['prompt'][:28]:28} {r['kind']:12} {_fmt(r['unseen']):6} {r['colour_median_rank']:7.1f} "
            f"{r['colour_R@1']:7.3f} {r['colour_R@5']:7.3f} {r['geo_R@1']:7.3f} {r['geo_R@5']:7.3f} "
            f"{_fmt(r.get('turn_iou')):>8}")
        if "meaning" in r:
            log(f"{'  as ' + r['meaning']:28} {'by meaning':12} {'':6} {r['meaning_colour_median_rank']:7.1f} "
                f"{r['meaning_colour_R@1']:7.3f} {r['meaning_colour_R@5']:7.3f} {r['meaning_geo_R@1']:7.3f} "
                f"{r['meaning_geo_R@5']:7.3f}")
    log(f"\n{counts['n_captions']} captions: {counts['n_test_captions']} test captions, "
        f"{counts['n_distill_prompts']} distill prompts, {counts['n_benchmark_prompts']} benchmark prompts")
    for name, s in summaries.items():
        log(f"{name:22} n={s['n_assets']:<3} " + "  ".join(
            f"{kind} R@{k} {s[f'{kind}_R@{k}']:.3f} [{_fmt(s[f'{kind}_R@{k}_ci95'][0])}, "
            f"{_fmt(s[f'{kind}_R@{k}_ci95'][1])}]" for kind in ("colour", "geo") for k in (1, 5))
            + f"  turn IoU {_fmt(s.get('turn_iou'))}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts-file", type=Path, default=None,
                    help="one prompt a line (kind<TAB>prompt[<TAB>category<TAB>colour]); default: the built-in list")
    ap.add_argument("--out", type=Path, default=Path("/tmp/dreamline-generalisation"),
                    help="asset folders (out/<slug>) and evaluation grids; never under data/")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="generate --steps")
    ap.add_argument("--guidance", default=None, help="generate --guidance (guidance_type)")
    ap.add_argument("--seed", type=int, default=None, help="generate --seed")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="generate --set (any distill key; repeatable)")
    ap.add_argument("--score-only", action="store_true",
                    help="distil nothing: score the asset folders already under --out (out/<slug>, whatever "
                         "settings made them), e.g. with another --evaluator")
    ap.add_argument("--evaluator", type=Path, default=None, help="evaluator folder (default: evaluate.evaluator)")
    ap.add_argument("--renders", type=Path, default=Path("data/renders"))
    ap.add_argument("--captions", type=Path, default=Path("data/captions/captions.parquet"))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/generalisation.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    out = args.out.resolve()
    data = Path("data").resolve()
    if out == data or data in out.parents:
        ap.error(f"--out {args.out} lies under data/: the benchmark's assets stay out of the pipeline's outputs")
    import click

    from dreamline.config import ParamsError

    try:
        params = effective_params(args.params, args.steps, args.guidance, args.seed, args.sets)
    except (ParamsError, ValueError, click.ClickException) as err:
        print(err, file=sys.stderr)
        return 2
    if args.evaluator is not None:
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(
            update={"evaluator": str(args.evaluator)})})
    prompts = unique_by_slug(read_prompts(args.prompts_file) if args.prompts_file else default_prompts())
    if not prompts:
        ap.error("no prompts")
    for path, what in ((args.captions, "captions (dvc repro caption)"), (args.renders / "index.parquet",
                                                                        "renders (dvc repro render)")):
        if not path.is_file():
            print(f"{path}: no {what}", file=sys.stderr)
            return 2
    ev = Path(params.evaluate.evaluator)
    if not ((ev / "evaluator.json").is_file() or (ev / "config.json").is_file()):
        print(f"evaluate.evaluator: {ev} is not an evaluator folder (dvc repro train_evaluator)", file=sys.stderr)
        return 2

    check = seen_check(prompts, args.captions)
    print_check(check, args.captions)
    texts, counts = caption_set(params, args.renders, args.captions, [p.text for p in prompts])
    if args.score_only:
        from flows.cli import _slug

        folders = [out / _slug(p.text) for p in prompts]
        missing = [str(f) for f in folders if not (f / "summary.json").is_file()]
        if missing:
            print(f"--score-only: no asset in {', '.join(missing)}", file=sys.stderr)
            return 2
        print(f"\n{len(prompts)} prompts, {counts['n_captions']} captions; scoring the assets under {out}")
    else:
        print(f"\n{len(prompts)} prompts, {counts['n_captions']} captions; distilling "
              f"{params.distill.guidance_type} x {params.distill.representation_type}, {params.distill.steps} steps")
        with prefect_api() as url:
            folders = generate(prompts, out, args.params, url, args.steps, args.guidance, args.seed, args.sets)

    from stages._common import configure_process

    configure_process("evaluate", params)          # the evaluate stage's threads
    meanings = {p.text: plain_wording(p.category, p.colour) for p in prompts if p.category and p.colour}
    result = evaluate_folders(params, folders, texts, out / "grids", meanings)
    by_prompt = {c["prompt"]: c for c in check}
    rows = []
    for r in result["rows"]:
        c = by_prompt[r["prompt"]]
        rows.append({**{k: c[k] for k in ("kind", "category", "colour", "unseen")}, **r})
    from dreamline.evaluation.evaluate import summarise_assets

    groups = {"all": rows}
    for kind in KINDS:
        groups[kind] = [r for r in rows if r["kind"] == kind]
    groups["combination:unseen"] = [r for r in rows if r["kind"] == "combination" and r["unseen"]]
    summaries = {name: summarise_assets(g, params.evaluate) for name, g in groups.items() if g}
    by_meaning = [{**r, "ranks_colour": r["meaning_ranks_colour"], "ranks_geo": r["meaning_ranks_geo"]}
                  for r in rows if "meaning_ranks_colour" in r]
    if by_meaning:
        summaries["paraphrase:by meaning"] = summarise_assets(by_meaning, params.evaluate)
    print_results(rows, summaries, counts)

    from dreamline.lineage.trace import git_commit

    report = {
        "benchmark": "generalisation",
        "command": shlex.join(["python", "benchmarks/generalisation.py", *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(ROOT),
        "params": str(args.params), "params_sha256": hashlib.sha256(args.params.read_bytes()).hexdigest(),
        "overrides": {"steps": args.steps, "guidance": args.guidance, "seed": args.seed, "set": args.sets},
        "score_only": args.score_only,
        # With --score-only the assets were made elsewhere: the params file does not say how.
        "distill": None if args.score_only else {k: getattr(params.distill, k)
                                                 for k in ("guidance_type", "representation_type", "steps", "seed")},
        "evaluate": params.evaluate.model_dump(mode="json", exclude={"image_quality"}),
        "evaluator": result["evaluator"], "device": result["device"], "precision": result["precision"],
        "out": str(out), "captions": counts, "caption_texts": texts,
        "prompts": [asdict(p) for p in prompts], "seen_check": check,
        "assets": rows, "summary": summaries,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from dreamline.atomic import write_json_atomic

    write_json_atomic(args.json, report)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
