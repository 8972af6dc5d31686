"""Opening image files: the one place that decodes them, so that every bad file is an error naming it.

PIL refuses an image of more than twice ``Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb,
``DecompressionBombError``) and raises ``OSError`` for a truncated file when it decodes it; here
both, and a file that is no image, become one :class:`ImageError` naming the file and why.
Where images enter (``validate-data``'s readers, ``copa filter``), :func:`image_file_problem`
checks each file's header: there, against its annotation, without decoding the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from copa.data.formats.records import FormatError

# What PIL raises for a file that is missing, no image, cut short or too large to decode safely
UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError)
# Below one patch of the paper's ViT (16 px) a picture holds nothing to align with a text: a 1x1
# web placeholder or tracking pixel, which training would stretch to a flat colour.
MIN_IMAGE_SIDE = 16
# What is wrong with an image file, as the filter counts its drops
FILE_PROBLEMS = ("missing_image", "unreadable_image", "image_too_large", "image_size_mismatch", "image_too_small")


@dataclass(frozen=True)
class ImageProblem:
    reason: str  # one of FILE_PROBLEMS
    detail: str  # what is wrong, naming the file

    def __str__(self) -> str:
        return self.detail


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


def image_file_problem(path: Path, size: tuple[int, int] | None = None) -> tuple[ImageProblem | None, tuple[int, int] | None]:
    """(what is wrong with the image file at ``path`` or None, its (width, height) where its header
    reads): missing, not an image, over PIL's pixel limit, not the ``size`` its annotation gives,
    or under ``MIN_IMAGE_SIDE``. Reads the header only: a file cut short shows when decoded (:func:`read_rgb`)."""
    if not path.is_file():
        return ImageProblem("missing_image", f"image file {path} does not exist"), None
    try:
        with Image.open(path) as image:
            found = image.size
    except UNREADABLE as exc:
        reason = "image_too_large" if too_large(exc) else "unreadable_image"
        return ImageProblem(reason, f"image file {path} is not a readable image ({type(exc).__name__}: {exc})"), None
    if size is not None and tuple(found) != tuple(size):
        return ImageProblem("image_size_mismatch", f"image file {path} is {found[0]}x{found[1]}, its annotation says {size[0]}x{size[1]}"), found
    if min(found) < MIN_IMAGE_SIDE:
        return ImageProblem("image_too_small", f"image file {path} is {found[0]}x{found[1]}, under {MIN_IMAGE_SIDE} px a side"), found
    return None, found
