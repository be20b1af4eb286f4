"""Short real MP4s (H.264, yuv420p) that show what was asked for, or a cheap shared clip.

A ``VideoSpec`` is registered in the media store at submit and encoded on first
download (off the event loop), like ``render.ImageSpec``. Each frame shows the
provider, the seed, a few details and the prompt, with a dot sliding across so the
frames differ. Encoding is deterministic (one encoder thread, no timestamps in the
container), so an evicted file re-encodes to the same bytes and keeps its ETag.
"""

from __future__ import annotations

import functools
import io
import struct
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.emulators.render import background_for, font, heading, ink_on

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FPS", "FRAMES", "VideoSpec", "encode_mp4", "pad_mp4", "size_for_ratio"]

LONG_SIDE = 320
FPS = 10
FRAMES = 10  # one second
CHEAP_FRAMES = 2
_X264_OPTIONS = {"preset": "ultrafast", "crf": "30", "threads": "1"}
_BOX_HEADER = 8  # 32-bit size + 4-byte type


def size_for_ratio(ratio: str, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """Even pixel dimensions (H.264 4:2:0 needs them) for a ratio such as ``"16:9"``."""
    across, down = (int(part) for part in ratio.split(":"))
    short = long_side * min(across, down) / max(across, down)
    short_even = max(2, round(short / 2) * 2)
    return (long_side, short_even) if across >= down else (short_even, long_side)


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """A one-second clip showing the provider, the seed, details and the prompt."""

    provider: str
    prompt: str
    seed: int
    width: int
    height: int
    details: tuple[str, ...] = ()

    content_type = "video/mp4"
    suffix = ".mp4"

    def render(self, *, draw: bool) -> bytes:
        if draw:
            return encode_mp4([_frame(self, index) for index in range(FRAMES)], FPS)
        return _cheap_clip(self.width, self.height)

    @staticmethod
    def pad(body: bytes, size: int | None) -> bytes:
        """``body`` grown to about ``size`` bytes (the ``output_bytes`` knob)."""
        return pad_mp4(body, size)

    def background(self) -> tuple[int, int, int]:
        return background_for(self.seed)


def encode_mp4(frames: list[Image.Image], fps: int) -> bytes:
    """H.264 in an MP4 container from same-sized RGB frames."""
    import av

    out = io.BytesIO()
    width, height = frames[0].size
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=dict(_X264_OPTIONS))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for image in frames:
            rgba = image.convert("RGBA").tobytes()
            rgb = av.VideoFrame.from_bytes(rgba, width, height, format="rgba")
            frame = rgb.reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def pad_mp4(mp4: bytes, size: int | None) -> bytes:
    """``mp4`` grown to about ``size`` bytes with a trailing ``free`` box (still valid)."""
    if size is None or len(mp4) + _BOX_HEADER >= size:
        return mp4
    filler = size - len(mp4) - _BOX_HEADER
    return mp4 + struct.pack(">I", filler + _BOX_HEADER) + b"free" + bytes(filler)


@functools.lru_cache(maxsize=8)
def _cheap_clip(width: int, height: int) -> bytes:
    """Two flat grey frames; encoded once per size and reused (benchmarks)."""
    from PIL import Image

    frames = [Image.new("RGB", (width, height), (176, 176, 176)) for _ in range(CHEAP_FRAMES)]
    return encode_mp4(frames, FPS)


def _frame(spec: VideoSpec, index: int) -> Image.Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (spec.width, spec.height), spec.background())
    draw = ImageDraw.Draw(image)
    ink = ink_on(spec.background())
    radius = max(4, spec.height // 14)
    x = radius + (spec.width - 2 * radius) * index // max(1, FRAMES - 1)
    y = spec.height - radius - 6
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    small, large = font(11), font(14)
    top = 6
    for text in heading(spec.provider, spec.seed, spec.details):
        draw.text((8, top), text, font=small, fill=ink)
        top += 13
    top += 4
    columns = max(10, (spec.width - 16) // 8)
    for line in textwrap.wrap(spec.prompt, columns) or [""]:
        if top > y - radius - 18:
            break
        draw.text((8, top), line, font=large, fill=ink)
        top += 17
    return image
