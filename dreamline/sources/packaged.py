"""Real meshes shipped in Debian's libcgal-demo data (fetched by scripts/fetch_meshes.sh).

The files are OFF/PLY/STL in arbitrary frames; each entry says which name and category the
mirror gives it. Files missing from the folder are skipped with a warning, so a partial
download still yields a usable mirror.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trimesh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedMesh:
    file: str
    name: str
    category: str  # Sketchfab-style category slug key of annotations.CATEGORY_OF
    lvis: str
    tags: tuple[str, ...]


# Ordered: the mirror takes the first `packaged_meshes` entries that exist.
CATALOGUE: tuple[PackagedMesh, ...] = (
    PackagedMesh("bunny00.off", "Stanford Bunny", "animal", "rabbit", ("bunny", "rabbit", "animal")),
    PackagedMesh("elephant.off", "Elephant", "animal", "elephant", ("elephant", "animal")),
    PackagedMesh("camel.off", "Camel", "animal", "camel", ("camel", "animal", "desert")),
    PackagedMesh("cow.off", "Cow", "animal", "cow", ("cow", "animal", "farm")),
    PackagedMesh("armadillo.off", "Armadillo", "animal", "armadillo", ("armadillo", "creature")),
    PackagedMesh("bull.off", "Bull", "animal", "bull", ("bull", "animal", "farm")),
    PackagedMesh("dino.off", "Dinosaur", "animal", "dinosaur", ("dinosaur", "reptile")),
    PackagedMesh("pig.off", "Pig", "animal", "pig", ("pig", "animal", "farm")),
    PackagedMesh("triceratops.off", "Triceratops", "animal", "dinosaur", ("triceratops", "dinosaur")),
    PackagedMesh("elk.off", "Elk", "animal", "elk", ("elk", "deer", "animal")),
    PackagedMesh("lion.off", "Lion", "animal", "lion", ("lion", "animal", "cat")),
    PackagedMesh("bear.off", "Bear", "animal", "bear", ("bear", "animal")),
    PackagedMesh("fandisk.off", "Fandisk Part", "mechanical", "machine_part", ("cad", "mechanical", "part")),
    PackagedMesh("rotor.off", "Rotor", "mechanical", "machine_part", ("rotor", "mechanical")),
    PackagedMesh("anchor.off", "Anchor", "mechanical", "anchor", ("anchor", "nautical")),
    PackagedMesh("mushroom.off", "Mushroom", "shape", "mushroom", ("mushroom", "fungus")),
    PackagedMesh("cactus.off", "Cactus", "shape", "cactus", ("cactus", "plant")),
    PackagedMesh("helmet.off", "Helmet", "shape", "helmet", ("helmet", "armor")),
)


def available(folder: str | Path, limit: int) -> list[tuple[PackagedMesh, Path]]:
    folder = Path(folder)
    found = []
    for entry in CATALOGUE:
        path = folder / entry.file
        if path.exists():
            found.append((entry, path))
        if len(found) >= limit:
            break
    if len(found) < limit:
        log.warning(
            "only %d of %d packaged meshes found in %s (run scripts/fetch_meshes.sh)",
            len(found), limit, folder,
        )
    return found


def load_packaged(path: Path) -> trimesh.Trimesh:
    mesh = trimesh.load(str(path), force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{path}: not a triangle mesh")
    return mesh
