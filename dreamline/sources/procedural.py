"""Procedural part-based objects in named categories.

Each builder assembles trimesh primitives into one object, canonically oriented the way
Objaverse assets are assumed to be (glTF: +Y up, front facing +Z), with random proportions
drawn from a seeded generator. Parts carry per-vertex colours so the colour survives
concatenation and GLB export. The attributes a builder reports ("tall", "four-legged")
come from the proportions it drew, so captions built from them are true of the shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import trimesh

# Named colours with sRGB values; names are what captions use.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "orange": (235, 120, 30),
    "purple": (130, 50, 170),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
}
SECONDARY: dict[str, tuple[int, int, int]] = {
    "dark": (45, 45, 50),
    "brown": (110, 70, 35),
    "grey": (140, 140, 140),
    "glass": (170, 210, 230),
}
MATERIALS = ("wooden", "metal", "plastic", "ceramic", "glossy", "matte")


@dataclass
class Part:
    mesh: trimesh.Trimesh
    role: str = "primary"  # "primary" takes the object's colour, else a SECONDARY name


@dataclass
class ProceduralObject:
    category: str
    colour: str
    material: str
    attributes: list[str]
    mesh: trimesh.Trimesh
    parts: int = field(default=0)


def _y_up(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """trimesh builds cylinders/cones along +Z; the canonical up axis is +Y."""
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    return mesh


def _box(ext, at) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=ext)
    m.apply_translation(at)
    return m


def _cyl(r, h, at, sections=20) -> trimesh.Trimesh:
    m = _y_up(trimesh.creation.cylinder(radius=r, height=h, sections=sections))
    m.apply_translation(at)
    return m


def _cone(r, h, at, sections=20) -> trimesh.Trimesh:
    # trimesh's cone has its base at z=0; after _y_up the base is at y=0, apex at +h.
    m = _y_up(trimesh.creation.cone(radius=r, height=h, sections=sections))
    m.apply_translation(at)
    return m


def _sphere(r, at, subdiv=2) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=r)
    m.apply_translation(at)
    return m


def _legs(rng, n, top_w, top_d, h, thick) -> list[Part]:
    xs, zs = top_w / 2 - thick, top_d / 2 - thick
    if n == 3:
        angles = np.deg2rad([90, 210, 330])
        spots = [(np.cos(a) * xs, np.sin(a) * zs) for a in angles]
    else:
        spots = [(sx * xs, sz * zs) for sx in (-1, 1) for sz in (-1, 1)]
    return [Part(_box((thick, h, thick), (x, h / 2, z))) for x, z in spots]


def chair(rng):
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    seat_h, back_h, t = rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.6), 0.05
    parts = _legs(rng, 4, w, d, seat_h, t)
    parts.append(Part(_box((w, t, d), (0, seat_h, 0))))
    parts.append(Part(_box((w, back_h, t), (0, seat_h + back_h / 2, -d / 2 + t / 2))))
    attrs = ["four-legged", "high-backed" if back_h > 0.5 else "low-backed"]
    return parts, attrs


def table(rng):
    w, d, h, t = rng.uniform(0.8, 1.4), rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.8), 0.06
    round_top = rng.random() < 0.4
    if round_top:
        top = Part(_cyl(w / 2, t, (0, h, 0), sections=32))
        parts = [top, Part(_cyl(0.05, h, (0, h / 2, 0)))]
        parts.append(Part(_cyl(w / 4, 0.04, (0, 0.02, 0))))
        attrs = ["round", "pedestal"]
    else:
        parts = _legs(rng, 4, w, d, h, t) + [Part(_box((w, t, d), (0, h, 0)))]
        attrs = ["rectangular", "four-legged"]
    return parts, attrs


def stool(rng):
    r, h, t = rng.uniform(0.15, 0.25), rng.uniform(0.4, 0.75), 0.04
    n = int(rng.choice([3, 4]))
    parts = _legs(rng, n, 1.6 * r, 1.6 * r, h, t)
    parts.append(Part(_cyl(r, t, (0, h, 0))))
    return parts, [f"{'three' if n == 3 else 'four'}-legged", "tall" if h > 0.6 else "short"]


def mug(rng):
    r, h = rng.uniform(0.3, 0.45), rng.uniform(0.6, 1.0)
    body = _cyl(r, h, (0, h / 2, 0), sections=32)
    handle = trimesh.creation.torus(major_radius=h * 0.25, minor_radius=0.05,
                                    major_sections=24, minor_sections=8)
    # Torus lies in XY around Z; a mug handle stands in the XY plane on the +X side.
    handle.apply_translation((r + h * 0.15, h / 2, 0))
    return [Part(body), Part(handle)], ["tall" if h / r > 2.6 else "squat", "handled"]


def bottle(rng):
    r, h = rng.uniform(0.18, 0.3), rng.uniform(0.6, 1.0)
    neck_r, neck_h = r * rng.uniform(0.3, 0.45), rng.uniform(0.2, 0.35)
    parts = [Part(_cyl(r, h, (0, h / 2, 0), sections=32))]
    parts.append(Part(_cone(r, 0.15, (0, h - 0.001, 0), sections=32)))
    parts.append(Part(_cyl(neck_r, neck_h, (0, h + 0.1 + neck_h / 2, 0))))
    parts.append(Part(_cyl(neck_r * 1.2, 0.05, (0, h + 0.1 + neck_h, 0)), "dark"))
    return parts, ["slender" if h / r > 3.5 else "wide", "capped"]


def lamp(rng):
    base_r, pole_h = rng.uniform(0.15, 0.25), rng.uniform(0.6, 1.4)
    shade_r = rng.uniform(0.2, 0.35)
    parts = [Part(_cyl(base_r, 0.04, (0, 0.02, 0)), "dark")]
    parts.append(Part(_cyl(0.025, pole_h, (0, pole_h / 2, 0)), "dark"))
    parts.append(Part(_cone(shade_r, shade_r * 1.2, (0, pole_h - 0.1, 0), sections=24)))
    return parts, ["floor" if pole_h > 1.0 else "desk", "cone-shaded"]


def car(rng):
    length, w, h = rng.uniform(1.4, 2.0), rng.uniform(0.6, 0.8), rng.uniform(0.3, 0.45)
    wr = rng.uniform(0.13, 0.18)
    # Front faces +Z: the long axis is Z, the cabin sits toward the back.
    parts = [Part(_box((w, h, length), (0, wr + h / 2, 0)))]
    cab_l = length * rng.uniform(0.4, 0.55)
    parts.append(Part(_box((w * 0.85, h * 0.8, cab_l), (0, wr + h + h * 0.4, -length * 0.1)),
                      "glass"))
    for x in (-w / 2, w / 2):
        for z in (-length * 0.32, length * 0.32):
            wheel = trimesh.creation.cylinder(radius=wr, height=0.1, sections=20)
            wheel.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
            wheel.apply_translation((x, wr, z))
            parts.append(Part(wheel, "dark"))
    return parts, ["four-wheeled", "long" if length > 1.75 else "compact"]


def airplane(rng):
    length, r = rng.uniform(1.6, 2.2), rng.uniform(0.1, 0.15)
    span = rng.uniform(1.4, 2.2)
    body = trimesh.creation.capsule(height=length, radius=r, count=[16, 16])  # along Z
    parts = [Part(body)]
    parts.append(Part(_box((span, 0.04, 0.35), (0, 0, 0.1))))
    parts.append(Part(_box((span * 0.35, 0.03, 0.18), (0, 0, -length / 2 + 0.1))))
    parts.append(Part(_box((0.03, 0.3, 0.2), (0, 0.15, -length / 2 + 0.1))))
    return parts, ["wide-winged" if span > 1.9 else "short-winged", "single-engine"]


def rocket(rng):
    r, h = rng.uniform(0.15, 0.22), rng.uniform(1.0, 1.6)
    parts = [Part(_cyl(r, h, (0, h / 2 + 0.1, 0), sections=24))]
    parts.append(Part(_cone(r, r * 2.5, (0, h + 0.1 - 0.001, 0), sections=24), "grey"))
    n_fins = int(rng.choice([3, 4]))
    for k in range(n_fins):
        a = 2 * np.pi * k / n_fins
        fin = _box((0.03, 0.35, 0.25), (0, 0.2, 0))
        fin.apply_translation((0, 0, r + 0.1))
        fin.apply_transform(trimesh.transformations.rotation_matrix(a, [0, 1, 0]))
        parts.append(Part(fin, "dark"))
    return parts, [f"{'three' if n_fins == 3 else 'four'}-finned", "tall" if h > 1.3 else "stubby"]


def house(rng):
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.5, 0.8)
    roof_h = rng.uniform(0.3, 0.6)
    parts = [Part(_box((w, h, d), (0, h / 2, 0)).subdivide())]
    roof = trimesh.creation.cone(radius=max(w, d) * 0.75, height=roof_h, sections=4)
    roof.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 4, [0, 0, 1]))
    _y_up(roof)
    roof.apply_translation((0, h - 0.001, 0))
    parts.append(Part(roof, "brown"))
    parts.append(Part(_box((0.2, 0.35, 0.04), (0, 0.175, d / 2 + 0.01)), "dark"))
    return parts, ["pyramid-roofed", "tall" if h > 0.7 else "low"]


def tree(rng):
    trunk_h, trunk_r = rng.uniform(0.3, 0.6), rng.uniform(0.06, 0.1)
    tiers = int(rng.choice([1, 2, 3]))
    parts = [Part(_cyl(trunk_r, trunk_h, (0, trunk_h / 2, 0)), "brown")]
    y, r = trunk_h - 0.05, rng.uniform(0.4, 0.6)
    for _ in range(tiers):
        parts.append(Part(_cone(r, r * 1.3, (0, y, 0), sections=20)))
        y += r * 0.7
        r *= 0.75
    return parts, [f"{['one', 'two', 'three'][tiers - 1]}-tiered", "conifer"]


def snowman(rng):
    r1 = rng.uniform(0.35, 0.45)
    r2, r3 = r1 * rng.uniform(0.65, 0.8), r1 * rng.uniform(0.4, 0.55)
    y1, y2 = r1, 2 * r1 + r2 * 0.8
    y3 = y2 + r2 + r3 * 0.8
    parts = [Part(_sphere(r1, (0, y1, 0))), Part(_sphere(r2, (0, y2, 0))),
             Part(_sphere(r3, (0, y3, 0)))]
    nose = _cone(0.04, 0.18, (0, 0, 0), sections=12)
    nose.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    nose.apply_translation((0, y3, r3 * 0.9))
    parts.append(Part(nose, "brown"))
    return parts, ["three-ball", "carrot-nosed"]


CATEGORY_BUILDERS: dict[str, Callable] = {
    "chair": chair, "table": table, "stool": stool, "mug": mug, "bottle": bottle,
    "lamp": lamp, "car": car, "airplane": airplane, "rocket": rocket, "house": house,
    "tree": tree, "snowman": snowman,
}


def colour_rgba(name: str) -> np.ndarray:
    rgb = PALETTE.get(name) or SECONDARY[name]
    return np.array([*rgb, 255], dtype=np.uint8)


def paint(mesh: trimesh.Trimesh, rgba: np.ndarray) -> trimesh.Trimesh:
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


def build_object(category: str, rng: np.random.Generator) -> ProceduralObject:
    if category not in CATEGORY_BUILDERS:
        raise KeyError(f"unknown category {category!r}; known: {sorted(CATEGORY_BUILDERS)}")
    colour = str(rng.choice(list(PALETTE)))
    material = str(rng.choice(MATERIALS))
    parts, attrs = CATEGORY_BUILDERS[category](rng)
    painted = []
    for p in parts:
        rgba = colour_rgba(colour if p.role == "primary" else p.role)
        painted.append(paint(p.mesh, rgba))
    mesh = trimesh.util.concatenate(painted)
    return ProceduralObject(category, colour, material, attrs, mesh, parts=len(parts))
