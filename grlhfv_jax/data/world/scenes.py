"""Scenes, rendering, the vision stage's attribute labels, PNG coding."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .config import ATTRS, BACKGROUND, COLOURS, COUNTS, POSITIONS, SHAPES, WorldConfig

# ---------------------------------------------------------------------------------------------
# Scenes and images.


@dataclasses.dataclass(frozen=True)
class Scene:
    """`count` objects of one `shape` and `colour` along one side (`position`) of the image.

    `centres` are the objects' (x, y) pixel centres; each object spans 0.76 cell (cell = size / 4).
    """

    shape: str
    colour: str
    count: int
    position: str
    centres: tuple[tuple[int, int], ...]
    image_size: int = 56

    def facts(self) -> dict[str, Any]:
        return {"colour": self.colour, "count": self.count, "shape": self.shape, "position": self.position}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_any(cls, s: Scene | str | bytes | Mapping[str, Any]) -> Scene:
        """A Scene from a Scene, its JSON text, or its dict. Raises ValueError naming the problem."""
        if isinstance(s, Scene):
            return s
        if isinstance(s, bytes):
            s = s.decode("utf-8", errors="replace")
        if isinstance(s, str):
            try:
                s = json.loads(s)
            except json.JSONDecodeError as e:
                raise ValueError(f"scene: not valid JSON ({e}): {s[:80]!r}") from None
        if not isinstance(s, Mapping):
            raise ValueError(f"scene: expected a dict or JSON object, got {type(s).__name__}")
        for k in ("shape", "colour", "count", "position", "centres"):
            if k not in s:
                raise ValueError(f"scene: missing field {k!r}")
        try:
            scene = cls(
                shape=str(s["shape"]),
                colour=str(s["colour"]),
                count=int(s["count"]),
                position=str(s["position"]),
                centres=tuple((int(c[0]), int(c[1])) for c in s["centres"]),
                image_size=int(s.get("image_size", 56)),
            )
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"scene: malformed field ({type(e).__name__}: {e})") from None
        if scene.shape not in SHAPES or scene.colour not in COLOURS or scene.position not in POSITIONS:
            raise ValueError(f"scene: unknown shape/colour/position in {scene.facts()}")
        if scene.count not in COUNTS or len(scene.centres) != scene.count:
            raise ValueError(f"scene: count {scene.count} does not match centres {scene.centres}")
        return scene


def sample_scene(rng: np.random.Generator, cfg: WorldConfig, *, combos: list[tuple[str, str]] | None = None) -> Scene:
    """A random scene; `combos` restricts the (colour, shape) pair (default: any).

    The objects stand in a line along the side named by `position`, centred on it, one cell apart
    (the line shifts by +-1 px along itself, each object by +-1 px across), so that the side is
    unambiguous: e.g. "left" objects are in the leftmost column of cells and never all in the top
    or bottom half."""
    if combos is None:
        combos = [(c, s) for c in COLOURS for s in SHAPES]
    colour, shape = combos[int(rng.integers(len(combos)))]
    count = int(rng.choice(COUNTS))
    position = str(rng.choice(POSITIONS))
    size = cfg.image_size
    cell = size / 4
    jit = max(1, size // 56)
    across = cell / 2 if position in ("left", "top") else size - cell / 2
    shift = int(rng.integers(-jit, jit + 1))  # the whole line moves along its axis; spacing stays one cell
    centres = []
    for k in range(count):
        along = int(round(size / 2 + (k - (count - 1) / 2) * cell)) + shift
        off = int(round(across)) + int(rng.integers(-jit, jit + 1))
        centres.append((off, along) if position in ("left", "right") else (along, off))
    return Scene(shape=shape, colour=colour, count=count, position=position, centres=tuple(centres), image_size=size)


OBJECT_RADIUS = 0.38  # in cells


def render(scene: Scene) -> np.ndarray:
    """The scene's image, uint8 [size, size, 3]. Solid shapes, no anti-aliasing."""
    size = scene.image_size
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    rad = OBJECT_RADIUS * size / 4
    fill = COLOURS[scene.colour]
    for cx, cy in scene.centres:
        if scene.shape == "circle":
            draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
        elif scene.shape == "square":
            h = 0.85 * rad
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif scene.shape == "triangle":
            draw.polygon([(cx, cy - rad), (cx - rad, cy + rad), (cx + rad, cy + rad)], fill=fill)
        elif scene.shape == "diamond":
            draw.polygon([(cx, cy - rad), (cx + rad, cy), (cx, cy + rad), (cx - rad, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {scene.shape!r}")
    return np.asarray(img, dtype=np.uint8)


ATTR_VALUES: dict[str, tuple] = {"colour": tuple(COLOURS), "count": COUNTS, "shape": SHAPES, "position": POSITIONS}


def attribute_labels(scene: Scene) -> np.ndarray:
    """int [4]: the index of the scene's colour, count, shape and position in `ATTR_VALUES`
    (in `ATTRS` order)."""
    f = scene.facts()
    return np.array([ATTR_VALUES[a].index(f[a]) for a in ATTRS], np.int32)


def vision_examples(cfg: WorldConfig, stream: int, index: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`n` rendered scenes and their attribute labels [n, 4], for pretraining a vision tower.

    Deterministic in (cfg.seed, stream, index); the held-out colour-shape combinations of the
    out-of-distribution split are never drawn, so that split stays unseen by every model."""
    rng = np.random.default_rng([cfg.seed, 1000 + int(stream), int(index)])
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in set(cfg.heldout_combos)]
    scenes = [sample_scene(rng, cfg, combos=combos) for _ in range(n)]
    return [render(s) for s in scenes], np.stack([attribute_labels(s) for s in scenes])


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, *, where: str = "image") -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 [H, W, 3]; ValueError naming `where` if corrupt."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{where}: expected encoded image bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"{where}: corrupt or unreadable image ({type(e).__name__}: {e})") from None
