from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.config import RenderParams
from dreamline.rendering.renderer import ViewRenderer
from dreamline.rendering.views import render_one


@task(name="render-shard", cache_policy=NO_CACHE)
def render_shard(objects: list[tuple[str, str, str]], p: RenderParams, out_root: Path) -> list[dict]:
    """Render (uid, mesh path, mesh sha256) triples; a failing object is recorded, not raised."""
    results = []
    with ViewRenderer(p.resolution, allow_multisample=p.backend != "osmesa") as renderer:
        for uid, path, sha in objects:
            try:
                results.append(render_one(uid, Path(path), sha, p, out_root, renderer))
            except Exception as err:  # one bad mesh costs only itself
                results.append({"uid": uid, "error": f"{type(err).__name__}: {err}"[:300],
                                "rows": [], "processed": False})
    return results
