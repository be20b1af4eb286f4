"""Output media: PNGs that show what was asked for, or cheap ones for benchmarks.

Rendering is deterministic (the same spec gives the same bytes), so the media store
may evict a rendered file and render it again without changing its ETag.
"""

from __future__ import annotations

import colorsys
import functools
import io
import random
import struct
import textwrap
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import ImageFont

__all__ = [
    "GridImage",
    "ImageSpec",
    "Media",
    "PngFile",
    "background_for",
    "font",
    "heading",
    "ink_on",
    "size_for_ratio",
    "with_padding",
]

LONG_SIDE = 512
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_CHUNK_OVERHEAD = 12


class Media(Protocol):
    """Anything the media store can serve: it knows its type and how to make its bytes."""

    @property
    def content_type(self) -> str: ...

    @property
    def suffix(self) -> str: ...

    def render(self, *, draw: bool) -> bytes:
        """The file; ``draw=False`` asks for the cheapest valid file instead."""
        ...

    def pad(self, body: bytes, size: int | None) -> bytes:
        """``body`` grown to about ``size`` bytes, still a valid file of its type."""
        ...


def size_for_ratio(ratio: str, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """Pixel size for an aspect ratio such as ``"16:9"``, ``long_side`` on the long side."""
    across, down = (int(part) for part in ratio.split(":"))
    if across >= down:
        return long_side, max(1, round(long_side * down / across))
    return max(1, round(long_side * across / down)), long_side


def background_for(seed: int) -> tuple[int, int, int]:
    """The background colour of a seed's picture (image or video frames): a pastel hue."""
    hue = ((seed * 2654435761) & 0xFFFFFFFF) / 2**32
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.45, 0.85)
    return round(red * 255), round(green * 255), round(blue * 255)


def heading(provider: str, seed: int, details: tuple[str, ...]) -> tuple[str, ...]:
    """The labelled lines a picture shows above its prompt (image or video frames)."""
    return (f"{provider} emulator", f"seed {seed}", *details)


def ink_on(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Text colour that reads on ``background``: near-black on light, near-white on dark."""
    return (20, 20, 20) if sum(background) > 380 else (245, 245, 245)


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` (loaded once per size)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


class PngFile:
    """What every PNG the media store serves shares: its type and how it is padded."""

    __slots__ = ()

    content_type = "image/png"
    suffix = ".png"

    @staticmethod
    def pad(body: bytes, size: int | None) -> bytes:
        return with_padding(body, size)


@dataclass(frozen=True, slots=True)
class ImageSpec(PngFile):
    """A PNG showing the provider, the seed, the prompt and a few labelled details."""

    provider: str
    prompt: str
    seed: int
    width: int
    height: int
    details: tuple[str, ...] = ()

    def render(self, *, draw: bool) -> bytes:
        png = _drawn_png(self) if draw else _plain_png(self.width, self.height)
        return _with_chunk(png, _itxt("Description", self.caption()))

    def caption(self) -> str:
        return "\n".join([*heading(self.provider, self.seed, self.details), self.prompt])

    def background(self) -> tuple[int, int, int]:
        return background_for(self.seed)


@dataclass(frozen=True, slots=True)
class GridImage(PngFile):
    """A 2x2 composite of up to four images (PixAI's ``outputs.mediaId`` for a batch)."""

    cells: tuple[ImageSpec, ...]
    width: int
    height: int

    def render(self, *, draw: bool) -> bytes:
        from PIL import Image

        canvas = Image.new("RGB", (self.width, self.height), (30, 30, 30))
        half_w, half_h = self.width // 2, self.height // 2
        for index, cell in enumerate(self.cells[:4]):
            small = ImageSpec(cell.provider, cell.prompt, cell.seed, half_w - 4, half_h - 4)
            with Image.open(io.BytesIO(small.render(draw=draw))) as tile:
                canvas.paste(
                    tile.convert("RGB"), ((index % 2) * half_w + 2, (index // 2) * half_h + 2)
                )
        out = io.BytesIO()
        canvas.save(out, "PNG", compress_level=1)
        return out.getvalue()


def with_padding(png: bytes, size: int | None) -> bytes:
    """``png`` grown to about ``size`` bytes with a private ancillary chunk (still valid)."""
    if size is None or len(png) + _CHUNK_OVERHEAD >= size:
        return png
    return _with_chunk(png, _chunk(b"emPd", bytes(size - len(png) - _CHUNK_OVERHEAD)))


def _drawn_png(spec: ImageSpec) -> bytes:
    from PIL import Image, ImageDraw

    image = _scene(spec.width, spec.height, spec.seed, spec.prompt)
    panel = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(panel)
    small, large = font(14), font(20)
    lines = list(heading(spec.provider, spec.seed, spec.details))
    prompt_lines = textwrap.wrap(spec.prompt, max(10, (spec.width - 24) // 11)) or [""]
    room = max(1, (spec.height - 40 - 18 * len(lines)) // 25)
    height = 22 + 18 * len(lines) + 25 * min(len(prompt_lines), room)
    draw.rectangle((0, 0, spec.width, height), fill=(0, 0, 0, 140))
    y = 12
    for text in lines:
        draw.text((12, y), text, font=small, fill=(235, 235, 235, 255))
        y += 18
    y += 6
    for line in prompt_lines[:room]:
        draw.text((12, y), line, font=large, fill=(255, 255, 255, 255))
        y += 25
    image = Image.alpha_composite(image, panel).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _scene(width: int, height: int, seed: int, prompt: str) -> Any:
    """A small landscape that is the same for the same seed and prompt: a sky gradient,
    a sun or moon, soft clouds and two rows of hills, all in the seed's palette."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed * 1_000_003 + zlib.crc32(prompt.encode()))
    top, bottom = background_for(seed), background_for(seed * 7 + 3)
    mask = Image.linear_gradient("L").resize((width, height))
    sky = Image.composite(
        Image.new("RGBA", (width, height), (*_shade(bottom, 0.8), 255)),
        Image.new("RGBA", (width, height), (*top, 255)),
        mask,
    )
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    radius = rng.randint(min(width, height) // 12, min(width, height) // 6)
    cx, cy = rng.randint(radius, width - radius), rng.randint(height // 3, height // 2)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 244, 214, 220))
    for _ in range(rng.randint(2, 5)):
        x, y = rng.randint(0, width), rng.randint(height // 4, height // 2)
        w, h = rng.randint(width // 8, width // 3), rng.randint(height // 30, height // 14)
        draw.ellipse((x - w, y - h, x + w, y + h), fill=(255, 255, 255, 90))
    layer = layer.filter(ImageFilter.GaussianBlur(radius=max(1, width // 160)))
    hills = ImageDraw.Draw(layer)
    for row, base in enumerate((0.62, 0.78)):
        colour = _shade(background_for(seed * 13 + row), 0.55 - 0.2 * row)
        points: list[tuple[float, float]] = [(0, height)]
        for step in range(9):
            across = width * step / 8
            points.append((across, height * (base + rng.uniform(-0.07, 0.07))))
        points.append((width, height))
        hills.polygon(points, fill=(*colour, 255))
    return Image.alpha_composite(sky, layer)


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    red, green, blue = (max(0, min(255, round(c * factor))) for c in colour)
    return red, green, blue


@functools.lru_cache(maxsize=32)
def _plain_png(width: int, height: int) -> bytes:
    """A flat grey PNG; cached per size, so it costs nothing after the first time."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = (b"\x00" + b"\xb0" * width) * height
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _IEND


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _itxt(keyword: str, text: str) -> bytes:
    data = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode()
    return _chunk(b"iTXt", data)


def _with_chunk(png: bytes, chunk: bytes) -> bytes:
    """Insert ``chunk`` just before IEND."""
    if not png.endswith(_IEND):
        raise ValueError("not a PNG that ends with IEND")
    return png[: -len(_IEND)] + chunk + _IEND
