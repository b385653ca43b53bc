"""Template captions from what is known of an object: noun, colour, material, attributes.

The noun comes from the LVIS category when annotated, else from the cleaned name; the colour
from the tags when the uploader named one, else from the mesh's measured dominant colour.
Each object gets one of `variety` phrasings, chosen by a hash of (seed, uid) so the choice
is stable when other objects are added.
"""
from __future__ import annotations

import hashlib

from dreamline.captioning.base import (
    CAPTIONERS, CaptionInput, Captioner, category_noun, clean_name,
)
from dreamline.captioning.configs import TemplateCaptionerParams
from dreamline.sources.procedural import MATERIALS, PALETTE

_COLOURS = set(PALETTE) | {"grey", "gray", "brown", "pink", "silver", "gold"}
_NOISE = {"3d", "model", "asset", "free", "lowpoly", "game", "pbr", "cc0", "prop", "object"}
_ADJECTIVES = {"tall", "short", "wide", "slender", "squat", "round", "rectangular", "compact",
               "long", "stubby", "low", "handled", "capped", "small", "large", "curved"}
_MATERIAL_NOUN = {"wooden": "wood", "metal": "metal", "plastic": "plastic",
                  "ceramic": "ceramic", "glossy": "glossy paint", "matte": "matte paint"}

# {a} is the article for the word that follows it, filled in after formatting.
TEMPLATES = (
    "{a} {colour} {material} {noun}",
    "{a} {attr} {colour} {noun}",
    "{a} {colour} {noun}, {attr}",
    "a 3d model of {a} {colour} {noun} made of {material_noun}",
    "{a} {material} {noun} painted {colour}, {attr}",
    "{colour} {noun} with {a} {material} finish",
    "{a} {noun} in {colour}, {attr} and {material}",
    "{a} {attr} {noun}, {colour} {material}",
)


def _article(word: str) -> str:
    w = word.lower()
    return "an" if w[:1] in "aeiou" and not w.startswith(("one", "uni", "use")) else "a"


def describe(item: CaptionInput) -> dict[str, str | None]:
    tags = [t.lower() for t in item.tags]
    noun = category_noun(item.category) or clean_name(item.name) or "object"
    colour = next((t for t in tags if t in _COLOURS), None) or item.colour
    material = next((t for t in tags if t in MATERIALS), None)
    # Attributes are adjectives: hyphenated compounds ("four-legged") or known shape words;
    # other tags are usually nouns ("animal", "farm") that read badly before the noun.
    attrs = [t for t in tags if t not in _NOISE and ("-" in t or t in _ADJECTIVES)]
    return {"noun": noun, "colour": colour, "material": material,
            "attr": attrs[0] if attrs else None}


def _fill(template: str, parts: dict[str, str | None]) -> str | None:
    needed = {k for k in ("colour", "material", "attr") if "{" + k in template}
    needed |= {"material"} if "{material_noun}" in template else set()
    if any(parts.get(k) is None for k in needed):
        return None
    text = template.format(a="{a}", noun=parts["noun"], colour=parts.get("colour"),
                           material=parts.get("material"), attr=parts.get("attr"),
                           material_noun=_MATERIAL_NOUN.get(parts.get("material") or "", ""))
    while "{a}" in text:  # article agrees with the word after it
        i = text.index("{a}")
        nxt = text[i + 4:].split(" ", 1)[0]
        text = text[:i] + _article(nxt) + text[i + 3:]
    return text


@CAPTIONERS.implements(TemplateCaptionerParams)
class TemplateCaptioner(Captioner):
    name = "template"
    config: TemplateCaptionerParams

    def caption_one(self, item: CaptionInput) -> str:
        parts = describe(item)
        pick = int(hashlib.sha256(f"{self.seed}/{item.uid}".encode()).hexdigest(), 16)
        n = self.config.variety
        for k in range(len(TEMPLATES)):  # first usable phrasing at or after the pick
            text = _fill(TEMPLATES[(pick + k) % n if k < n else k], parts)
            if text:
                return text + self.config.suffix
        colour = f"{parts['colour']} " if parts["colour"] else ""
        return f"{_article(colour or parts['noun'])} {colour}{parts['noun']}" + self.config.suffix

    def caption(self, items: list[CaptionInput]) -> list[str]:
        return [self.caption_one(i) for i in items]
