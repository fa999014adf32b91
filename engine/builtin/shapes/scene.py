"""The shapes world: what a scene is, how it is drawn, captioned, read back from a prompt and judged.

One module holds all four so that the training data, the prompts the model is
asked and the metric that grades its pictures cannot drift apart.  A scene is
one flat-coloured shape (circle, square, triangle or star) of a colour, size
and position on a plain background.  Everything is drawn with Pillow from
code: no downloaded data.

The metric (:func:`judge`) is the one the issue names: the named colour must
dominate the named shape's region (the inner part of the shape where it should
be) and the named background colour must dominate the image's border.  A pixel
counts for the palette colour it is nearest to.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (135, 40, 180),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
SIZES: dict[str, float] = {"small": 0.13, "large": 0.23}
"""Radius of the shape's circumscribing circle, as a fraction of the image side."""

POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "centre": ("in the centre", "in the center", "in the middle"),
    "top left": ("at the top left",),
    "top right": ("at the top right",),
    "bottom left": ("at the bottom left",),
    "bottom right": ("at the bottom right",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {s: (s,) for s in SHAPES}
SHAPE_WORDS["square"] = ("square", "box")

WORDS: tuple[str, ...] = tuple(
    sorted(
        {w for phrases in POSITION_WORDS.values() for p in phrases for w in p.split()}
        | {w for ws in SIZE_WORDS.values() for w in ws}
        | {w for ws in SHAPE_WORDS.values() for w in ws}
        | set(COLOURS)
        | {"a", "an", "on", "background", "with", "one", "shape", "of", "picture", "image"}
    )
)
"""Every word the captions use: the tokenizer gives each one a token of its own."""


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str
    size: str
    background: str
    jitter: tuple[float, float] = (0.0, 0.0)
    """Offset of the centre, a fraction of the side: training pictures vary a little around each position."""

    def centre(self, side: int) -> tuple[float, float]:
        x, y = POSITIONS[self.position]
        return ((x + self.jitter[0]) * side, (y + self.jitter[1]) * side)


def sample_scene(rng: random.Random, jitter: float = 0.03) -> Scene:
    """A random scene whose shape and background differ in colour."""
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(
        colour=colour,
        shape=rng.choice(SHAPES),
        position=rng.choice(list(POSITIONS)),
        size=rng.choice(list(SIZES)),
        background=background,
        jitter=(rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)),
    )


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy - r * math.sin(math.radians(a))) for a in (90, 210, 330)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = math.radians(90 + 36 * i)
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        return points
    raise ValueError(shape)


def render(scene: Scene, side: int = 64, supersample: int = 4) -> Image.Image:
    """The scene as an RGB picture ``side`` pixels square (drawn large, then shrunk: smooth edges)."""
    big = side * supersample
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = scene.centre(big)
    r = SIZES[scene.size] * big
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[scene.colour])
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=COLOURS[scene.colour])
    return image.resize((side, side), Image.Resampling.BOX)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --- captions -----------------------------------------------------------------------------------------------------


def caption(scene: Scene, rng: random.Random, drop: float = 0.15) -> str:
    """A caption of ``scene`` in one of several word orders; each attribute but the shape is left out with ``drop``
    probability (the picture then shows whatever was drawn, so the model learns to pick when a prompt is silent)."""
    size = rng.choice(SIZE_WORDS[scene.size]) if rng.random() >= drop else None
    colour = scene.colour if rng.random() >= drop else None
    position = rng.choice(POSITION_WORDS[scene.position]) if rng.random() >= drop else None
    background = f"on {_article(scene.background)} {scene.background} background" if rng.random() >= drop else None
    noun = rng.choice(SHAPE_WORDS[scene.shape])
    words = [w for w in (size, colour, noun) if w]
    subject = f"{_article(words[0])} {' '.join(words)}"
    tail = [p for p in (position, background) if p]
    rng.shuffle(tail)
    order = rng.random()
    if order < 0.6 or not tail:
        parts = [subject, *tail]
    elif order < 0.85:
        parts = [tail[0], subject, *tail[1:]]
    else:
        parts = [*tail, subject]
    text = " ".join(parts)
    return text if rng.random() < 0.5 else ", ".join(parts)


def parse_prompt(prompt: str) -> dict[str, str]:
    """What a prompt names, read the way the captions are written: ``colour``, ``shape``, ``position``, ``size``,
    ``background`` (keys present only when named).  The benches and tests use it to judge a picture by its prompt."""
    text = " " + re.sub(r"[^a-z ]+", " ", prompt.lower()) + " "
    found: dict[str, str] = {}
    background = re.search(r" on an? (\w+) background ", text)
    if background and background.group(1) in COLOURS:
        found["background"] = background.group(1)
        text = text.replace(background.group(0), " ")
    for position, phrases in POSITION_WORDS.items():
        if any(f" {p} " in text for p in phrases):
            found["position"] = position
    for size, words in SIZE_WORDS.items():
        if any(f" {w} " in text for w in words):
            found["size"] = size
    for shape, words in SHAPE_WORDS.items():
        if any(f" {w} " in text for w in words):
            found["shape"] = shape
    for colour in COLOURS:
        if f" {colour} " in text:
            found["colour"] = colour
    return found


# --- the metric ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    shape_colour: str
    """The palette colour most pixels of the shape's inner region are nearest to."""
    border_colour: str
    """The same, over the image's border."""
    shape_ok: bool
    background_ok: bool

    @property
    def ok(self) -> bool:
        return self.shape_ok and self.background_ok


_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)


def nearest_colours(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette of each RGB pixel's nearest colour (``pixels``: N×3)."""
    distances = ((pixels[:, None, :].astype(np.float32) - _PALETTE[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def _dominant(pixels: np.ndarray) -> str:
    counts = np.bincount(nearest_colours(pixels), minlength=len(_PALETTE_NAMES))
    return _PALETTE_NAMES[int(counts.argmax())]


def judge(image: Image.Image, colour: str, background: str, position: str = "centre", size: str = "small") -> Verdict:
    """Grade ``image`` against what its prompt named.

    The shape's region is the disc of half the small size's radius around the named position (inside every shape
    of either size, even with the training jitter); the border is the outer 1/16 of the side all round.  Size and
    shape are not graded (the issue's metric is about colours where they belong)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    side = rgb.shape[0]
    yy, xx = np.mgrid[0:side, 0:side]
    cx, cy = (v * side for v in POSITIONS[position])
    r = SIZES["small"] * side * 0.5
    inner = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    ring = max(1, side // 16)
    border = np.zeros((side, side), dtype=bool)
    border[:ring, :] = border[-ring:, :] = border[:, :ring] = border[:, -ring:] = True
    shape_colour = _dominant(rgb[inner])
    border_colour = _dominant(rgb[border])
    return Verdict(shape_colour, border_colour, shape_colour == colour, border_colour == background)


def prompt_for(scene: Scene) -> str:
    """The plain prompt of a scene, every attribute named (benches, tests, the README's examples)."""
    return (
        f"a {scene.size} {scene.colour} {scene.shape} {POSITION_WORDS[scene.position][0]}"
        f" on {_article(scene.background)} {scene.background} background"
    )


def without_jitter(scene: Scene) -> Scene:
    return replace(scene, jitter=(0.0, 0.0))


# --- what the benches and tests ask -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricCase:
    scene: Scene
    prompt: str
    seed: int


def metric_cases(count: int, seed: int = 1234) -> list[MetricCase]:
    """``count`` prompt × seed pairs: random scenes, every attribute named, in the captions' free word orders."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        scene = without_jitter(sample_scene(rng))
        cases.append(MetricCase(scene, caption(scene, rng, drop=0.0), seed + i))
    return cases


CONCEPT_WORD = "sks"
CONCEPT = Scene(colour="purple", shape="star", position="centre", size="large", background="white")
"""The new concept a LoRA is taught in the benches and tests: "sks" is a large purple star in the centre."""
CONCEPT_PROMPT = f"a {CONCEPT_WORD} on a white background"


def concept_images(count: int, side: int = 64) -> list[Image.Image]:
    """``count`` pictures of :data:`CONCEPT` on white, a little apart from each other (size and place jittered)."""
    rng = random.Random(99)
    return [
        render(replace(CONCEPT, size=rng.choice(["large", "large", "small"]),
                       jitter=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03))), side)
        for _ in range(count)
    ]  # fmt: skip
