"""Opening image files: the one place that decodes them, so that every bad file is an error naming it.

PIL refuses an image of more than twice ``Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb,
``DecompressionBombError``) and raises ``OSError`` for a truncated file when it decodes it; here
both, and a file that is no image, become one :class:`ImageError` naming the file and why.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from copa.data.formats.records import FormatError

# What PIL raises for a file that is missing, no image, cut short or too large to decode safely
UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError)


class ImageError(FormatError):
    """An image file that cannot be decoded (or would be too large to); names the file and why."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(path, problem)

    def __reduce__(self):
        return type(self), (self.path, self.problem)


def read_rgb(path: Path) -> Image.Image:
    """The image at ``path`` decoded to RGB; an :class:`ImageError` for a file that is missing, no
    image, truncated or a decompression bomb."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UNREADABLE as exc:
        raise ImageError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


def too_large(exc: BaseException) -> bool:
    """Whether PIL refused an image for its pixel count (the filter counts it apart)."""
    return isinstance(exc, Image.DecompressionBombError)
