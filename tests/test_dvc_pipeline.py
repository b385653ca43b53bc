"""`dvc repro` of the data stages (mirror -> curate -> caption, render); a second repro is a no-op.

The training stages run through their entry points in tests/test_training_stages.py;
here the targets stop before them so the default training budgets do not run."""
import shutil
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO, make_project


def dvc(project, *args):
    return project.run(sys.executable, "-m", "dvc", *args)


DATA_STAGES = ("caption", "render")


def test_dvc_repro_then_noop(project):
    project.run("git", "init", "-q")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")
    out = dvc(project, "repro", *DATA_STAGES).stdout
    for stage in ("mirror", "curate", "caption"):
        assert f"Running stage '{stage}'" in out
    caps = pd.read_parquet(project.root / "data/captions/captions.parquet")
    assert len(caps) > 10
    assert (project.root / "dvc.lock").exists()
    again = dvc(project, "repro", *DATA_STAGES).stdout
    assert "Running stage" not in again and "up to date" in again
    assert "up to date" in dvc(project, "status", *DATA_STAGES).stdout

    # Changing a caption key reruns only the caption stage.
    project.set_params({"caption": {"captioner": {"variety": 3}}})
    out = dvc(project, "repro", *DATA_STAGES).stdout
    assert "Running stage 'caption'" in out and "Running stage 'curate'" not in out


def test_lineage_why_and_diff_answer_from_the_lock(reproduced, tmp_path):
    """`dreamline lineage`, `why` and `diff` on a real dvc.lock, checked against the lock and tables."""
    import hashlib
    import json

    project = _copy(reproduced, tmp_path / "p")
    cli = (sys.executable, "-m", "flows.cli")
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]

    out = json.loads(project.run(*cli, "lineage", "data/renders/index.parquet", "--json").stdout)
    names = [s["name"] for s in out["stages"]]
    assert names == ["render", "curate", "mirror"]                      # producer first, then upstream
    render = out["stages"][0]
    assert render["params"]["render"] == lock["render"]["params"]["params.yaml"]["render"]
    assert {o["path"]: o["md5"] for o in render["outputs"]} == {o["path"]: o["md5"] for o in lock["render"]["outs"]}
    meshes = next(i for i in render["inputs"] if i["path"] == "data/curated/meshes")
    locked = next(d for d in lock["render"]["deps"] if d["path"] == "data/curated/meshes")
    assert meshes["stage"] == "curate" and (meshes["md5"], meshes["nfiles"]) == (locked["md5"], locked["nfiles"])
    assert any(c["path"] == "dreamline/rendering/renderer.py" for c in render["code"])
    # Manifests: each data output's table, its md5 (the one in the lock's directory listing), its objects.
    objects = pd.read_parquet(project.root / "data/curated/objects.parquet")
    index = pd.read_parquet(project.root / "data/renders/index.parquet")
    manifests = {m["path"]: m for s in out["stages"] for m in s["manifests"]}
    assert set(manifests) == {"data/renders/index.parquet", "data/curated/objects.parquet"}
    assert manifests["data/renders/index.parquet"]["objects"] == index["uid"].nunique()
    assert manifests["data/renders/index.parquet"]["views"] == len(index)
    assert manifests["data/curated/objects.parquet"]["objects"] == int(objects["kept"].sum())
    assert manifests["data/curated/objects.parquet"]["candidates"] == len(objects)
    assert all(m["matches_lock"] is True for m in manifests.values())
    assert manifests["data/curated/objects.parquet"]["md5"] == hashlib.md5(
        (project.root / "data/curated/objects.parquet").read_bytes()).hexdigest()
    missing = project.run(*cli, "lineage", "data/nothing.json", check=False)
    assert missing.returncode == 2 and "not a path in dvc.lock" in missing.stderr

    kept = objects[objects["kept"]]["uid"].iloc[0]
    j = json.loads(project.run(*cli, "why", kept).stdout)
    caps = pd.read_parquet(project.root / "data/captions/captions.parquet").set_index("uid")
    assert j["kept"] and j["split"] == caps.loc[kept, "split"] and j["caption"] == caps.loc[kept, "caption"]
    assert sum(j["views"].values()) == int((index["uid"] == kept).sum())
    rejected = objects[~objects["kept"]].iloc[0]
    j = json.loads(project.run(*cli, "why", rejected["uid"]).stdout)
    assert not j["kept"] and j["reject_reason"] == rejected["reject_reason"]

    project.set_params({"caption": {"captioner": {"variety": 3}}})
    table = json.loads(project.run(*cli, "diff", "HEAD", "--json").stdout)
    assert {"kind": "params", "file": "params.yaml", "key": "caption.captioner.variety", "old": 6, "new": 3,
            "diff": -3} in table


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, prefect_api_url):
    """One project with the data stages reproduced and committed (git + DVC cache); tests copy it."""
    proj = make_project(tmp_path_factory.mktemp("reproduced"), prefect_api_url)
    proj.run("git", "init", "-q")
    dvc(proj, "init", "-q")
    shutil.copy2(REPO / ".dvc/config", proj.root / ".dvc/config")       # the default local remote
    dvc(proj, "repro", *DATA_STAGES)
    proj.run("git", "add", "-A")
    proj.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "data stages")
    return proj


def _copy(proj, dest):
    shutil.copytree(proj.root, dest, symlinks=True)
    return type(proj)(dest, proj.api_url)


def _md5s(folder):
    """Every file DVC tracks under `folder`: run.json (how a run went) is .dvcignore'd."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.json"}


def test_push_pull_round_trip_through_the_default_remote(reproduced, tmp_path):
    proj = _copy(reproduced, tmp_path / "p")
    assert dvc(proj, "remote", "default").stdout.strip() == "local"
    before = _md5s(proj.root / "data")
    dvc(proj, "push")
    assert (proj.root / "dvc-remote/files/md5").is_dir()
    for out in ("mirror", "curated", "captions", "renders"):
        shutil.rmtree(proj.root / "data" / out)
    shutil.rmtree(proj.root / ".dvc/cache")
    dvc(proj, "pull", "--with-deps", *DATA_STAGES)      # the later stages have not run here
    assert _md5s(proj.root / "data") == before
    assert "up to date" in dvc(proj, "status", *DATA_STAGES).stdout


def test_repro_one_stage_downstream_and_exp_run_touch_only_dependents(reproduced, tmp_path):
    proj = _copy(reproduced, tmp_path / "p")
    # A render key: `dvc repro caption` has nothing to do (caption does not read it) ...
    proj.set_params({"render": {"agp_views": 2}})
    out = dvc(proj, "repro", "caption").stdout
    assert "Running stage" not in out
    out = dvc(proj, "repro", "render").stdout
    assert "Running stage 'render'" in out and "Running stage 'curate'" not in out
    assert (pd.read_parquet(proj.root / "data/renders/index.parquet")["kind"] == "agp").sum() == 2 * len(
        pd.read_parquet(proj.root / "data/renders/index.parquet")["uid"].unique())
    proj.run("git", "checkout", "--", "params.yaml", "dvc.lock")
    dvc(proj, "checkout", "--with-deps", *DATA_STAGES)
    assert "up to date" in dvc(proj, "status", *DATA_STAGES).stdout

    # `--downstream X`: X and what reads its outputs, never what X reads. (The stages after
    # render are cut from this copy's dvc.yaml: their default training budgets are minutes.)
    stages = yaml.safe_load((proj.root / "dvc.yaml").read_text())
    stages["stages"] = {k: v for k, v in stages["stages"].items() if k in ("mirror", "curate", "caption", "render")}
    (proj.root / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    proj.set_params({"caption": {"captioner": {"variety": 2}}, "render": {"agp_views": 2}})
    out = dvc(proj, "repro", "--downstream", "caption").stdout
    assert "Running stage 'caption'" in out and "Running stage 'render'" not in out   # render is stale, not downstream
    out = dvc(proj, "repro", "--downstream", "curate").stdout
    assert "Running stage 'render'" in out and "Running stage 'mirror'" not in out
    assert "Running stage 'curate'" not in out and "Running stage 'caption'" not in out  # up to date: skipped
    proj.run("git", "checkout", "--", "dvc.yaml", "params.yaml", "dvc.lock")
    dvc(proj, "checkout", "--with-deps", *DATA_STAGES)

    # `dvc exp run -S key=value`: only the stage whose params hold the key reruns.
    out = dvc(proj, "exp", "run", "-S", "caption.captioner.variety=2", *DATA_STAGES).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"caption"}, out
    table = dvc(proj, "exp", "show", "--json").stdout
    assert '"variety": 2' in table.replace(" ", "").replace('"variety":2', '"variety": 2')


def test_lineage_of_the_embedded_default_metrics_matches_dvc(tmp_path):
    """`dreamline lineage data/eval/metrics.json` on this repository's own dvc.lock: every stage
    DVC's graph puts upstream of evaluate, each with the params, deps and outs the lock holds."""
    import json

    import networkx as nx
    from dvc.repo import Repo

    from conftest import Project

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    cli = (sys.executable, "-m", "flows.cli", "lineage")
    out = json.loads(Project(REPO, None).run(*cli, "data/eval/metrics.json", "--json").stdout)
    with Repo(str(REPO)) as repo:
        graph = repo.index.graph
        evaluate = next(s for s in graph.nodes if s.name == "evaluate")
        upstream = {s.name for s in nx.descendants(graph, evaluate)}
    records = {s["name"]: s for s in out["stages"]}
    assert out["stages"][0]["name"] == "evaluate"
    assert set(records) == upstream | {"evaluate"}
    assert {"mirror", "curate", "caption", "render", "train_base", "train_mv", "train_agp",
            "train_evaluator", "distill@red-chair"} <= set(records)
    # The studies (ablation, the 3D-only model) are evaluated apart: not behind the main metrics.
    assert not {"train_mv_3d", "ablation@ism-blue-mug", "train_depth"} & set(records)
    for name, rec in records.items():
        body = lock[name]
        assert rec["params"] == {k: v for f in body.get("params", {}).values() for k, v in f.items()}, name
        assert {o["path"]: o["md5"] for o in rec["outputs"]} == {o["path"]: o["md5"] for o in body["outs"]}, name
        deps = {d["path"]: d["md5"] for d in body["deps"]}
        assert {d["path"]: d["md5"] for d in rec["code"] + rec["inputs"]} == deps, name
        for dep in rec["inputs"]:
            producers = dep["stage"] if isinstance(dep["stage"], list) else [dep["stage"]]
            for p in filter(None, producers):                 # each named producer writes into that path
                assert any(o["path"].startswith(dep["path"]) or dep["path"].startswith(o["path"])
                           for o in lock[p]["outs"]), (name, dep)
    assert out["git_commit"]

    # The same chain from a metric key, with the value read from the metrics file when present.
    key = "r_precision.real_test.R@1"
    if (REPO / "data/eval_studies/metrics.json").is_file():   # after the studies both files hold it
        key = "data/eval/metrics.json:" + key
    by_metric = Project(REPO, None).run(*cli, key, "--json", check=False)
    if (REPO / "data/eval/metrics.json").is_file():
        j = json.loads(by_metric.stdout)
        assert j["metric"]["file"] == "data/eval/metrics.json"
        assert [s["name"] for s in j["stages"]] == [s["name"] for s in out["stages"]]
    else:                                  # a fresh clone: the metric file is not pulled
        assert by_metric.returncode == 2 and "not a path in dvc.lock nor a metric" in by_metric.stderr
