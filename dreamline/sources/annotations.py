"""Annotation records in the structure of Objaverse 1.0 (Sketchfab API records).

The fields curation reads (uid, name, tags, categories, license, faceCount, vertexCount,
animationCount, isAgeRestricted, archives) are filled truthfully from the object; the
rest (users, thumbnails, counts) are plausible filler so readers see the real weight of a
record.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

SKETCHFAB = "https://api.sketchfab.com/v3"

# Sketchfab's top-level categories, which Objaverse records carry.
CATEGORY_OF = {
    "chair": "furniture-home", "table": "furniture-home", "stool": "furniture-home",
    "mug": "food-drink", "bottle": "food-drink", "lamp": "furniture-home",
    "car": "cars-vehicles", "airplane": "cars-vehicles", "rocket": "science-technology",
    "house": "architecture", "tree": "nature-plants", "snowman": "characters-creatures",
    "animal": "animals-pets", "mechanical": "science-technology", "shape": "art-abstract",
}
CATEGORY_NAMES = {
    "furniture-home": "Furniture & Home", "food-drink": "Food & Drink",
    "cars-vehicles": "Cars & Vehicles", "science-technology": "Science & Technology",
    "architecture": "Architecture", "nature-plants": "Nature & Plants",
    "characters-creatures": "Characters & Creatures", "animals-pets": "Animals & Pets",
    "art-abstract": "Art & Abstract", "places-travel": "Places & Travel",
}
# LVIS-style category names used in lvis-annotations.json.gz.
LVIS_NAME = {
    "chair": "chair", "table": "dining_table", "stool": "stool", "mug": "mug",
    "bottle": "bottle", "lamp": "lamp", "car": "car_(automobile)", "airplane": "airplane",
    "rocket": "rocket", "house": "house", "tree": "tree", "snowman": "snowman",
}


def make_uid(*key: object) -> str:
    """A 32-hex uid, stable for the same key (Objaverse uids are 32 lowercase hex)."""
    return hashlib.md5("/".join(map(str, key)).encode()).hexdigest()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _tag(name: str) -> dict[str, str]:
    slug = slugify(name) or name
    return {"name": name, "slug": slug, "uri": f"{SKETCHFAB}/tags/{slug}"}


def _category(slug: str) -> dict[str, str]:
    return {
        "name": CATEGORY_NAMES.get(slug, slug.replace("-", " ").title()),
        "slug": slug,
        "uri": f"{SKETCHFAB}/categories/{slug}",
    }


def make_record(
    uid: str,
    name: str,
    *,
    tags: list[str],
    categories: list[str],
    face_count: int,
    vertex_count: int,
    description: str = "",
    license: str = "by",
    animation_count: int = 0,
    age_restricted: bool = False,
    file_size: int = 0,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    rng = rng or np.random.default_rng(int(uid[:8], 16))
    user = f"user{int(rng.integers(1, 99999))}"
    day = int(rng.integers(1, 28))
    return {
        "uri": f"{SKETCHFAB}/models/{uid}",
        "uid": uid,
        "name": name,
        "staffpickedAt": None,
        "viewCount": int(rng.integers(0, 5000)),
        "likeCount": int(rng.integers(0, 200)),
        "animationCount": int(animation_count),
        "viewerUrl": f"https://sketchfab.com/3d-models/{uid}",
        "embedUrl": f"https://sketchfab.com/models/{uid}/embed",
        "commentCount": int(rng.integers(0, 20)),
        "isDownloadable": True,
        "publishedAt": f"2021-03-{day:02d}T10:00:00.000000",
        "tags": [_tag(t) for t in tags],
        "categories": [_category(c) for c in categories],
        "thumbnails": {
            "images": [
                {
                    "uid": make_uid(uid, "thumb", w),
                    "size": int(w * w / 8),
                    "width": w,
                    "height": w,
                    "url": f"https://media.sketchfab.com/models/{uid}/thumbnails/{w}.jpeg",
                }
                for w in (1024, 720, 256, 64)
            ]
        },
        "user": {
            "uid": make_uid(user),
            "username": user,
            "displayName": user.title(),
            "profileUrl": f"https://sketchfab.com/{user}",
            "account": "basic",
            "uri": f"{SKETCHFAB}/users/{make_uid(user)}",
        },
        "description": description,
        "faceCount": int(face_count),
        "createdAt": f"2021-03-{day:02d}T09:00:00.000000",
        "vertexCount": int(vertex_count),
        "isAgeRestricted": bool(age_restricted),
        "archives": {
            "glb": {
                "textureCount": 0,
                "size": int(file_size),
                "type": "glb",
                "textureMaxResolution": 0,
                "faceCount": int(face_count),
                "vertexCount": int(vertex_count),
            }
        },
        "license": license,
    }
