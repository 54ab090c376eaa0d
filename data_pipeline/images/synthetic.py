"""The embedded, download-free image-caption corpus: coloured shapes on a 3x3 grid, from a seed.

A scene holds 1 to 3 objects, each a (colour, shape) pair in its own cell of a 3x3 grid (so objects
never overlap), and, when it has fewer than 3 objects, optionally a short black text (1 or 2
characters) in another free cell. The caption is a deterministic English sentence that names every
object with its exact cell, grouping equal (colour, shape) pairs with a count (at most 19 words,
about 13 SentencePiece pieces on average):

    two red squares at top left and center and a blue circle at right, with the text "A7".

Held-out split of unseen combinations: with colours and shapes numbered in the order of `COLOURS`
and `SHAPES`, the pair (colour c, shape s) is held out iff `(s - 2 * c) % 5 == 0`: red circle,
green triangle, blue diamond, yellow square, purple cross (5 of the 25 pairs, each colour and each
shape exactly once, so every colour and every shape is still seen in training with 4 partners).
The `train` subset never contains a held-out pair; every `heldout` scene contains at least one
(its first-drawn object; the others are drawn from all 25 pairs).

Determinism: scene `index` of (`seed`, `subset`) is drawn by a `random.Random` seeded from the
sha256 of `f"{VERSION}:{seed}:{subset}:{index}"`, never from the global RNG or `hash()`. The scene
does not depend on the image size; shapes are integer pixel masks (no antialiasing, no Pillow
rasteriser) and the text uses Pillow's embedded bitmap font scaled by nearest neighbour, so the same
(seed, subset, index, size) gives the same pixels in every process.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from data_pipeline.errors import ConfigError

VERSION = "synthetic-shapes-v1"
"""Name of this generator's scene distribution; changing scenes or rendering changes it."""
SUBSETS = ("train", "heldout")
"""The subsets: `train` never shows a held-out pair, every `heldout` scene shows one."""
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 40, 180),
}
"""Object colours by name (RGB), well separated from each other, the background and the text."""
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
"""Object shapes, in the order the held-out rule numbers them."""
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "cross": "crosses", "diamond": "diamonds"}  # fmt: skip
"""The plural of each shape name, for counts above one."""
CELLS = ("top left", "top", "top right", "left", "center", "right",
         "bottom left", "bottom", "bottom right")  # fmt: skip
"""Names of the 3x3 grid cells in row-major order (cell i is row i // 3, column i % 3)."""
COUNTS = {1: "a", 2: "two", 3: "three"}
"""Count words."""
BACKGROUND = (235, 235, 235)
"""The fixed light-grey background (RGB)."""
TEXT_COLOUR = (0, 0, 0)
"""The colour of the rendered text (RGB)."""
TEXT_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"
"""Characters the text is drawn from (capitals and digits, without look-alikes I, O, Q, 0, 1)."""
MAX_OBJECTS = 3
"""The most objects a scene holds."""
TEXT_PROBABILITY = 0.4
"""Chance that a scene of fewer than MAX_OBJECTS objects carries a text (full scenes carry none,
to keep captions short)."""
REPEAT_PROBABILITY = 0.35
"""Chance that an object after the first repeats the (colour, shape) of an earlier one."""
MIN_SIZE = 24
"""The smallest image size the shapes can be told apart at (shapes 7 pixels wide)."""

ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
"""Every (colour, shape) pair."""
HELDOUT_PAIRS = frozenset(
    (c, s) for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES) if (si - 2 * ci) % 5 == 0
)
"""The (colour, shape) pairs that never occur in `train` (see the module docstring)."""
TRAIN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
"""The pairs `train` scenes are drawn from."""


@dataclass(frozen=True)
class SyntheticImage:
    """One generated sample."""

    key: str
    """A stable id, `synthetic:<subset>:<index>`, for error messages and manifests."""
    image: Image.Image
    """The RGB image, size x size."""
    caption: str
    """The caption that describes the image exactly."""


@dataclass(frozen=True)
class Shape:
    """One object of a scene."""

    colour: str
    """A key of `COLOURS`."""
    shape: str
    """One of `SHAPES`."""
    cell: int
    """Its grid cell, an index into `CELLS`."""


@dataclass(frozen=True)
class Scene:
    """What one image shows, independent of its size."""

    objects: tuple[Shape, ...]
    """1 to 3 objects in distinct cells."""
    text: str | None
    """A 1-2 character text, or None."""
    text_cell: int | None
    """The free cell the text is drawn in, or None."""


def check_arguments(seed: int, count: int, size: int, subset: str) -> None:
    """Raise ConfigError naming the config key of a bad argument."""
    if subset not in SUBSETS:
        raise ConfigError(f"input.subset={subset!r}: must be one of {', '.join(SUBSETS)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"input.synthetic_count={count!r}: must be an integer >= 1")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(
            f"images.size={size!r}: must be an integer >= {MIN_SIZE} to draw the synthetic shapes"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: the synthetic image seed must be an integer")


def scene_rng(seed: int, subset: str, index: int) -> random.Random:
    """The RNG of one scene, derived from (seed, subset, index) through sha256."""
    digest = hashlib.sha256(f"{VERSION}:{seed}:{subset}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "little"))


def scene(seed: int, subset: str, index: int) -> Scene:
    """Scene `index` of the `subset` stream of `seed`."""
    rng = scene_rng(seed, subset, index)
    num_objects = rng.randint(1, MAX_OBJECTS)
    has_text = num_objects < MAX_OBJECTS and rng.random() < TEXT_PROBABILITY
    cells = rng.sample(range(len(CELLS)), num_objects + int(has_text))
    first = rng.choice(sorted(HELDOUT_PAIRS) if subset == "heldout" else TRAIN_PAIRS)
    pool = ALL_PAIRS if subset == "heldout" else TRAIN_PAIRS
    pairs = [first]
    while len(pairs) < num_objects:
        repeat = rng.random() < REPEAT_PROBABILITY
        pairs.append(rng.choice(pairs) if repeat else rng.choice(pool))
    objects = tuple(Shape(c, s, cell) for (c, s), cell in zip(pairs, cells, strict=False))
    if not has_text:
        return Scene(objects, None, None)
    text = "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(1, 2)))
    return Scene(objects, text, cells[-1])


def caption(scene: Scene) -> str:
    """The sentence describing `scene`: groups of equal pairs in order of their first cell."""
    groups: dict[tuple[str, str], list[int]] = {}
    for obj in sorted(scene.objects, key=lambda o: o.cell):
        groups.setdefault((obj.colour, obj.shape), []).append(obj.cell)
    phrases = []
    for (colour, shape), cells in groups.items():
        noun = shape if len(cells) == 1 else PLURALS[shape]
        places = [CELLS[c] for c in cells]
        where = places[0] if len(places) == 1 else ", ".join(places[:-1]) + " and " + places[-1]
        phrases.append(f"{COUNTS[len(cells)]} {colour} {noun} at {where}")
    sentence = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if scene.text is not None:
        sentence += f', with the text "{scene.text}"'
    return sentence + "."


def cell_box(cell: int, size: int) -> tuple[int, int, int, int]:
    """Pixel bounds (x0, y0, x1, y1), inclusive, of grid cell `cell` in a size x size image."""
    row, col = divmod(cell, 3)
    x0, x1 = col * size // 3, (col + 1) * size // 3 - 1
    y0, y1 = row * size // 3, (row + 1) * size // 3 - 1
    return x0, y0, x1, y1


def cell_centre(cell: int, size: int) -> tuple[int, int]:
    """The pixel (x, y) at the centre of a cell; every shape covers it."""
    x0, y0, x1, y1 = cell_box(cell, size)
    return (x0 + x1) // 2, (y0 + y1) // 2


def shape_box(cell: int, size: int) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1), inclusive, a shape is drawn in: centred on the cell centre,
    the same odd side in every cell (so every shape is symmetric about its centre pixel)."""
    side = size // 3 - max(1, size // 48)  # leaves a gap of >= 1 pixel between neighbours
    half = (side - 1) // 2
    cx, cy = cell_centre(cell, size)
    return cx - half, cy - half, cx + half, cy + half


def inside(shape: str, dx: int, dy: int, half: int) -> bool:
    """Whether pixel offset (dx, dy) from the centre (y down) belongs to `shape` drawn in a
    (2 * half + 1)-pixel square: integer tests only, symmetric about the centre column."""
    if shape == "circle":
        return 2 * (dx * dx + dy * dy) <= 2 * half * half + half  # radius ~ half + 1/4
    if shape == "square":
        return True
    if shape == "triangle":  # apex up, base the bottom row
        return 2 * abs(dx) <= dy + half
    if shape == "diamond":
        return abs(dx) + abs(dy) <= half
    if shape == "cross":
        arm = max(1, (2 * half + 1) // 7)
        return abs(dx) <= arm or abs(dy) <= arm
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=256)
def shape_mask(shape: str, half: int) -> Image.Image:
    """The 0/255 mask ("L") of `shape` in a (2 * half + 1)-pixel square."""
    span = range(-half, half + 1)
    data = bytes(255 if inside(shape, dx, dy, half) else 0 for dy in span for dx in span)
    return Image.frombytes("L", (2 * half + 1, 2 * half + 1), data)


def draw_shape(image: Image.Image, obj: Shape, size: int) -> None:
    """Paint one object, aliased, in its cell."""
    x0, y0, x1, _ = shape_box(obj.cell, size)
    image.paste(COLOURS[obj.colour], (x0, y0), shape_mask(obj.shape, (x1 - x0) // 2))


@lru_cache(maxsize=1)
def bitmap_font() -> ImageFont.ImageFont:
    """Pillow's embedded bitmap font (`load_default` returns it before Pillow 10.1)."""
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


@lru_cache(maxsize=4096)
def text_mask(text: str, width: int, height: int) -> Image.Image:
    """A 1-bit mask of `text` in Pillow's embedded bitmap font, scaled (nearest) to fit the box."""
    font = bitmap_font()
    left, top, right, bottom = font.getbbox(text)
    glyphs = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(glyphs).text((-left, -top), text, fill=255, font=font)
    glyphs = glyphs.point(lambda v: 255 if v >= 128 else 0).crop(glyphs.getbbox())
    scale = min(width / glyphs.width, height / glyphs.height)
    target = (max(1, int(glyphs.width * scale)), max(1, int(glyphs.height * scale)))
    return glyphs.resize(target, Image.Resampling.NEAREST)


def draw_text(image: Image.Image, text: str, cell: int, size: int) -> None:
    """Paste `text` in black, centred in its cell."""
    x0, y0, x1, y1 = shape_box(cell, size)
    mask = text_mask(text, x1 - x0 + 1, y1 - y0 + 1)
    left = x0 + (x1 - x0 + 1 - mask.width) // 2
    top = y0 + (y1 - y0 + 1 - mask.height) // 2
    image.paste(TEXT_COLOUR, (left, top, left + mask.width, top + mask.height), mask)


def render(scene: Scene, size: int) -> Image.Image:
    """The RGB size x size image of `scene`."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    for obj in scene.objects:
        draw_shape(image, obj, size)
    if scene.text is not None and scene.text_cell is not None:
        draw_text(image, scene.text, scene.text_cell, size)
    return image


def synthetic_samples(seed: int, count: int, size: int, subset: str) -> Iterator[SyntheticImage]:
    """Samples 0..count-1 of the `subset` stream of `seed`, rendered at size x size.

    The arguments are checked at the call, before the first sample is asked for.
    """
    check_arguments(seed, count, size, subset)
    return _samples(seed, count, size, subset)


def _samples(seed: int, count: int, size: int, subset: str) -> Iterator[SyntheticImage]:
    """The generator behind `synthetic_samples` (arguments already checked)."""
    for index in range(count):
        drawn = scene(seed, subset, index)
        yield SyntheticImage(f"synthetic:{subset}:{index}", render(drawn, size), caption(drawn))


def settings(seed: int, count: int, size: int, subset: str) -> dict:
    """The generator's settings, JSON-able, for manifest["image_text"]["synthetic"]."""
    check_arguments(seed, count, size, subset)
    return {
        "generator": VERSION,
        "seed": seed,
        "count": count,
        "size": size,
        "subset": subset,
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "shapes": list(SHAPES),
        "cells": list(CELLS),
        "background": list(BACKGROUND),
        "heldout_rule": "(shape_index - 2 * colour_index) % 5 == 0",
        "heldout_pairs": sorted(f"{c} {s}" for c, s in HELDOUT_PAIRS),
        "text_probability": TEXT_PROBABILITY,
        "repeat_probability": REPEAT_PROBABILITY,
        "max_objects": MAX_OBJECTS,
    }
