"""`dvc repro` of the data stages (mirror -> curate -> caption, render); a second repro is a no-op.

The training stages run through their entry points in tests/test_training_stages.py;
here the targets stop before them so the default training budgets do not run."""
import sys

import pandas as pd


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


def test_lineage_why_and_diff_answer_from_the_lock(project):
    """`dreamline lineage`, `why` and `diff` on a real dvc.lock, checked against the lock and tables."""
    import json

    import yaml

    project.run("git", "init", "-q")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")
    dvc(project, "repro", *DATA_STAGES)
    cli = (sys.executable, "-m", "dreamline.cli")
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
    assert any(c["path"] == "dreamline/rendering" for c in render["code"])
    missing = project.run(*cli, "lineage", "data/nothing.json", check=False)
    assert missing.returncode == 2 and "no stage" in missing.stderr

    objects = pd.read_parquet(project.root / "data/curated/objects.parquet")
    index = pd.read_parquet(project.root / "data/renders/index.parquet")
    kept = objects[objects["kept"]]["uid"].iloc[0]
    j = json.loads(project.run(*cli, "why", kept).stdout)
    caps = pd.read_parquet(project.root / "data/captions/captions.parquet").set_index("uid")
    assert j["kept"] and j["split"] == caps.loc[kept, "split"] and j["caption"] == caps.loc[kept, "caption"]
    assert sum(j["views"].values()) == int((index["uid"] == kept).sum())
    rejected = objects[~objects["kept"]].iloc[0]
    j = json.loads(project.run(*cli, "why", rejected["uid"]).stdout)
    assert not j["kept"] and j["reject_reason"] == rejected["reject_reason"]

    project.run("git", "add", "-A")
    project.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base")
    project.set_params({"caption": {"captioner": {"variety": 3}}})
    table = json.loads(project.run(*cli, "diff", "HEAD", "--json").stdout)
    assert {"kind": "params", "file": "params.yaml", "key": "caption.captioner.variety", "old": 6, "new": 3,
            "diff": -3} in table
