"""Output media: PNGs that show what was asked for, or cheap ones for benchmarks.

Rendering is deterministic (the same spec gives the same bytes), so the media store
may evict a rendered file and render it again without changing its ETag.
"""

from __future__ import annotations

import colorsys
import functools
import io
import struct
import textwrap
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import ImageFont

__all__ = [
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


def with_padding(png: bytes, size: int | None) -> bytes:
    """``png`` grown to about ``size`` bytes with a private ancillary chunk (still valid)."""
    if size is None or len(png) + _CHUNK_OVERHEAD >= size:
        return png
    return _with_chunk(png, _chunk(b"emPd", bytes(size - len(png) - _CHUNK_OVERHEAD)))


def _drawn_png(spec: ImageSpec) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (spec.width, spec.height), spec.background())
    draw = ImageDraw.Draw(image)
    ink = ink_on(spec.background())
    small, large = font(14), font(20)
    y = 12
    for text in heading(spec.provider, spec.seed, spec.details):
        draw.text((12, y), text, font=small, fill=ink)
        y += 18
    y += 10
    columns = max(10, (spec.width - 24) // 11)
    for line in textwrap.wrap(spec.prompt, columns) or [""]:
        if y > spec.height - 26:
            break
        draw.text((12, y), line, font=large, fill=ink)
        y += 25
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


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
