"""The embedded synthetic image-caption corpus: determinism, held-out pairs, exact captions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from data_pipeline.errors import ConfigError
from data_pipeline.images import synthetic as syn

SIZES = (32, 64)
CELLS = ("top left", "top", "top right", "left", "center", "right",
         "bottom left", "bottom", "bottom right")  # fmt: skip
"""This test's own names of the 3x3 grid cells, row-major (not the module's table)."""
_PLACE = "|".join(sorted(CELLS, key=len, reverse=True))  # "top left" before "top"
_GROUP = (
    rf"(a|two|three) ({'|'.join(syn.COLOURS)}) (\w+) at "
    rf"((?:{_PLACE})(?:(?:, | and )(?:{_PLACE}))*)"
)
_TEXT = r', with the text "([A-Z0-9]{1,2})"'
_CAPTION = re.compile(rf"{_GROUP}(?:(?:, | and ){_GROUP})*(?:{_TEXT})?\.")
_NOUNS = {**{s: (s, 1) for s in syn.SHAPES}, **{p: (s, 2) for s, p in syn.PLURALS.items()}}


def parse(caption: str) -> tuple[list[tuple[str, str, int]], str | None]:
    """(colour, shape, cell) of every object a caption names, and its text: the caption read back
    with this test's own grammar, not the module's."""
    full = _CAPTION.fullmatch(caption)
    assert full, f"caption does not follow the grammar: {caption!r}"
    objects = []
    for count, colour, noun, places in re.findall(_GROUP, caption):
        shape, number = _NOUNS[noun]
        cells = [CELLS.index(p) for p in re.split(r", | and ", places)]
        assert len(cells) == {"a": 1, "two": 2, "three": 3}[count], caption
        assert (number == 1) == (count == "a"), f"singular/plural mismatch in {caption!r}"
        objects += [(colour, shape, cell) for cell in cells]
    return objects, full.groups()[-1]


def pixels(image) -> np.ndarray:
    """The image as an HxWx3 uint8 array."""
    return np.asarray(image, dtype=np.uint8)


def cell_slice(cell: int, size: int) -> tuple[slice, slice]:
    """The (rows, columns) of a 3x3 grid cell, computed here independently of the module."""
    row, col = divmod(cell, 3)
    return (
        slice(row * size // 3, (row + 1) * size // 3),
        slice(col * size // 3, (col + 1) * size // 3),
    )


def template(shape: str, h: int, w: int) -> np.ndarray:
    """An analytic mask of `shape` filling an h x w box: pixel centres u, v in (-1, 1), v down."""
    v, u = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1,
                       indexing="ij")  # fmt: skip
    eps = 1e-9
    return {
        "circle": u**2 + v**2 <= 1 + eps,
        "square": np.ones((h, w), bool),
        "triangle": np.abs(u) <= (v + 1) / 2 + eps,
        "diamond": np.abs(u) + np.abs(v) <= 1 + eps,
        "cross": (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3),
    }[shape]


def classify(mask: np.ndarray) -> str:
    """The shape whose analytic template best matches (IoU) the bounding box of `mask`."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scores = {}
    for shape in syn.SHAPES:
        ref = template(shape, *crop.shape)
        scores[shape] = (crop & ref).sum() / (crop | ref).sum()
    return max(scores, key=scores.get)


def check_image(image, caption: str, size: int) -> None:
    """The image shows exactly what the caption says, read from the pixels alone."""
    arr = pixels(image)
    assert arr.shape == (size, size, 3)
    objects, text = parse(caption)
    named = {cell for _, _, cell in objects}
    assert len(named) == len(objects), f"two objects in one cell: {caption!r}"
    for colour, shape, cell in objects:
        rows, cols = cell_slice(cell, size)
        y, x = (rows.start + rows.stop - 1) // 2, (cols.start + cols.stop - 1) // 2
        assert tuple(arr[y, x]) == syn.COLOURS[colour], (caption, cell)
        region = arr[rows, cols]
        mask = np.all(region == syn.COLOURS[colour], axis=-1)
        background = np.all(region == syn.BACKGROUND, axis=-1)
        assert np.all(mask | background), f"{caption!r}: stray colours in cell {cell}"
        assert classify(mask) == shape, (caption, cell, size)
    text_cells = []
    for cell in set(range(9)) - named:
        region = arr[cell_slice(cell, size)]
        black = np.all(region == syn.TEXT_COLOUR, axis=-1)
        assert np.all(black | np.all(region == syn.BACKGROUND, axis=-1)), (caption, cell)
        if black.any():
            text_cells.append(cell)
    assert len(text_cells) == (text is not None), f"{caption!r}: text drawn in {text_cells}"


@pytest.mark.parametrize("size", SIZES)
def test_same_arguments_give_identical_pixels_and_seeds_differ(size):
    first = list(syn.synthetic_samples(7, 40, size, "train"))
    again = list(syn.synthetic_samples(7, 40, size, "train"))
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in again]
    assert [s.caption for s in first] == [s.caption for s in again]
    assert [s.key for s in first] == [f"synthetic:train:{i}" for i in range(40)]
    assert all(s.image.mode == "RGB" and s.image.size == (size, size) for s in first)
    other = list(syn.synthetic_samples(8, 40, size, "train"))
    held = list(syn.synthetic_samples(7, 40, size, "heldout"))
    for stream in (other, held):
        pairs = zip(first, stream, strict=True)
        same = sum(a.image.tobytes() == b.image.tobytes() for a, b in pairs)
        assert same <= 2, f"{same} of 40 images equal across streams"


_DIGEST = """
import hashlib
from data_pipeline.images import synthetic as syn
h = hashlib.sha256()
for s in syn.synthetic_samples(3, 30, 32, "heldout"):
    h.update(s.image.tobytes() + s.caption.encode())
print(h.hexdigest())
"""


def test_pixels_identical_in_another_process():
    """Another interpreter with another str-hash seed draws the same bytes (no `hash()`)."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", _DIGEST],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_heldout_rule_and_split():
    assert {
        ("red", "circle"),
        ("green", "triangle"),
        ("blue", "diamond"),
        ("yellow", "square"),
        ("purple", "cross"),
    } == syn.HELDOUT_PAIRS
    train_pairs, held_firsts = Counter(), Counter()
    for index in range(4000):
        train, _ = parse(syn.caption(syn.scene(11, "train", index)))
        assert not {(c, s) for c, s, _ in train} & syn.HELDOUT_PAIRS, train
        train_pairs.update((c, s) for c, s, _ in train)
    for index in range(1500):
        held, _ = parse(syn.caption(syn.scene(11, "heldout", index)))
        pairs = {(c, s) for c, s, _ in held} & syn.HELDOUT_PAIRS
        assert pairs, f"heldout scene {index} has no held-out pair: {held}"
        held_firsts.update(pairs)
    assert set(train_pairs) == set(syn.ALL_PAIRS) - syn.HELDOUT_PAIRS  # all 20 others are seen
    assert set(held_firsts) == syn.HELDOUT_PAIRS


@pytest.mark.parametrize("size", SIZES)
def test_caption_describes_the_image_exactly(size):
    seen = Counter()
    for subset in syn.SUBSETS:
        samples = syn.synthetic_samples(5, 150, size, subset)
        for index, sample in enumerate(samples):
            check_image(sample.image, sample.caption, size)
            drawn = syn.scene(5, subset, index)
            objects, text = parse(sample.caption)
            assert sorted(objects) == sorted((o.colour, o.shape, o.cell) for o in drawn.objects)
            assert text == drawn.text
            seen["text"] += text is not None
            seen["repeat"] += len(objects) > len({(c, s) for c, s, _ in objects})
            seen[len(objects)] += 1
    assert seen["text"] > 30 and seen["repeat"] > 20  # the cases this test guards do occur
    assert min(seen[1], seen[2], seen[3]) > 50
    assert max(len(syn.caption(syn.scene(5, "train", i)).split()) for i in range(2000)) <= 19


@pytest.mark.parametrize("size", SIZES)
def test_shapes_are_distinguishable(size):
    masks = {}
    for shape in syn.SHAPES:
        image = syn.render(syn.Scene((syn.Shape("blue", shape, 4),), None, None), size)
        masks[shape] = np.all(pixels(image) == syn.COLOURS["blue"], axis=-1)
        assert classify(masks[shape]) == shape
    for a in syn.SHAPES:
        for b in syn.SHAPES:
            if a < b:
                assert (masks[a] != masks[b]).sum() >= 8, (a, b, size)


@pytest.mark.parametrize("size", (24, 97, 224))
def test_other_sizes_draw_the_same_scenes(size):
    small = list(syn.synthetic_samples(2, 20, 32, "train"))
    for ref, sample in zip(small, syn.synthetic_samples(2, 20, size, "train"), strict=True):
        assert sample.caption == ref.caption and sample.image.size == (size, size)
        arr = pixels(sample.image)
        for colour, _, cell in parse(sample.caption)[0]:
            rows, cols = cell_slice(cell, size)
            y, x = (rows.start + rows.stop - 1) // 2, (cols.start + cols.stop - 1) // 2
            assert tuple(arr[y, x]) == syn.COLOURS[colour]


def test_colour_names_match_their_rgb():
    r, g, b = (np.array(rgb, dtype=int) for rgb in zip(*syn.COLOURS.values(), strict=True))
    looks = dict(zip(syn.COLOURS, zip(r, g, b, strict=True), strict=True))
    assert looks["red"][0] > 150 > 100 > max(looks["red"][1:])
    assert looks["green"][1] > 100 + max(looks["green"][0], looks["green"][2])
    assert looks["blue"][2] > 100 + max(looks["blue"][:2])
    assert min(looks["yellow"][:2]) > 150 > 100 > looks["yellow"][2]
    assert min(looks["purple"][0], looks["purple"][2]) > 100 > looks["purple"][1]
    rgbs = [*syn.COLOURS.values(), syn.BACKGROUND, syn.TEXT_COLOUR]
    for i, a in enumerate(rgbs):  # well separated: every channel-sum distance >= 100
        for c in rgbs[i + 1 :]:
            assert sum(abs(x - y) for x, y in zip(a, c, strict=True)) >= 100, (a, c)


def test_settings_are_json_and_name_the_split():
    settings = syn.settings(1, 100, 32, "heldout")
    assert json.loads(json.dumps(settings)) == settings
    assert settings["seed"] == 1 and settings["count"] == 100 and settings["subset"] == "heldout"
    assert len(settings["heldout_pairs"]) == 5 and "red circle" in settings["heldout_pairs"]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((0, 10, 32, "val"), "input.subset"),
        ((0, 0, 32, "train"), "input.synthetic_count"),
        ((0, -3, 32, "train"), "input.synthetic_count"),
        ((0, True, 32, "train"), "input.synthetic_count"),
        ((0, 10, 23, "train"), "images.size"),
        ((0, 10, "32", "train"), "images.size"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_key(args, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        syn.synthetic_samples(*args)  # at the call, not at the first next()
    with pytest.raises(ConfigError, match=re.escape(key)):
        syn.settings(*args)
