"""curate.source: objaverse reads real Objaverse through the objaverse package's default
cache (~/.objaverse); lvis_only keeps the Objaverse-LVIS subset. Tested on a stand-in cache
in the package's layout under a temporary HOME, complete so that nothing is downloaded."""
import gzip
import json
import shutil
import sys

import pandas as pd

from conftest import make_project


def test_curate_from_the_objaverse_package_cache_keeps_lvis_objects(tmp_path, prefect_api_url):
    proj_dir = tmp_path / "proj"
    proj_dir.mkdir()
    project = make_project(proj_dir, prefect_api_url)
    project.stage("mirror")
    home = tmp_path / "home"
    shutil.copytree(proj_dir / "data/mirror", home / ".objaverse")
    lvis_file = home / ".objaverse/hf-objaverse-v1/lvis-annotations.json.gz"
    lvis = json.loads(gzip.decompress(lvis_file.read_bytes()))
    lvis_uids = {u for members in lvis.values() for u in members}
    paths = json.loads(gzip.decompress((home / ".objaverse/hf-objaverse-v1/object-paths.json.gz").read_bytes()))
    assert lvis_uids and set(paths) - lvis_uids, "the stand-in needs objects inside and outside LVIS"
    shutil.rmtree(proj_dir / "data/mirror")   # the stage must not read the mirror

    project.set_params({"curate": {"source": "objaverse", "lvis_only": True}})
    env = {**project.env(), "HOME": str(home)}
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "stages.curate"], cwd=proj_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    objects = pd.read_parquet(proj_dir / "data/curated/objects.parquet")
    assert set(objects["uid"]) == lvis_uids & set(paths)
    assert set(objects["source"]) == {"objaverse"}
    assert objects["kept"].any()
