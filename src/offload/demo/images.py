"""Images with Pillow: checking an upload is a usable image (web), making thumbnails (worker)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

#: Image formats an upload may have.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP", "BMP"})
#: Largest image (in pixels) accepted: far below Pillow's decompression-bomb limit.
DEFAULT_MAX_PIXELS = 40_000_000


class NotAnImage(ValueError):
    """The upload is not an image this demo can read."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")

    @property
    def extension(self) -> str:
        return {"JPEG": "jpg"}.get(self.format, self.format.lower())


@dataclass(frozen=True, slots=True)
class Thumbnail:
    size: int
    width: int
    height: int
    data: bytes


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read an image's header and check its structure, without decoding its pixels.

    Raises:
        NotAnImage: unreadable, truncated, an unsupported format, or too many pixels.
    """
    if not data:
        raise NotAnImage("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                info = ImageInfo(str(image.format), image.width, image.height)
                if info.format not in ALLOWED_FORMATS:
                    raise NotAnImage(f"{info.format} images are not supported")
                if info.width * info.height > max_pixels:
                    raise NotAnImage(f"the image is too large ({info.width}×{info.height} pixels)")
                image.verify()
    except NotAnImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NotAnImage("it is not a PNG, JPEG, GIF, WebP or BMP file") from None
    except (OSError, SyntaxError, ValueError) as exc:  # verify() reports damage as these
        raise NotAnImage(f"the image is damaged: {exc}") from None
    return info


def make_thumbnails(data: bytes, sizes: Sequence[int]) -> list[Thumbnail]:
    """Fit the image into each `size`×`size` box (keeping its aspect ratio), as WebP.

    The camera's EXIF orientation is applied first, so portrait photos stay upright.
    """
    with Image.open(io.BytesIO(data)) as original:
        image = ImageOps.exif_transpose(original)
        if image.mode not in ("RGB", "RGBA"):
            alpha = "A" in image.getbands() or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        thumbnails = []
        for size in sorted(set(sizes)):
            copy = image.copy()
            copy.thumbnail((size, size), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            copy.save(out, format="WEBP", quality=85, method=4)
            thumbnails.append(Thumbnail(size, copy.width, copy.height, out.getvalue()))
    return thumbnails


def original_key(job_id: str, image_key: str) -> str:
    """Where a thumbnail job keeps its copy of the upload: under its own id, so that its
    result may link it (a result links only keys that name its job)."""
    return f"thumbnails/{job_id}/original{PurePosixPath(image_key).suffix}"


def thumbnails_result(
    original: str, filename: str, info: ImageInfo, thumbnails: list[Thumbnail], refs: list[str]
) -> dict[str, Any]:
    """The job result of a thumbnail set (the same in queued and inline mode); `original`
    is the reference of the job's copy of the upload (`original_key`)."""
    return {
        "filename": filename,
        "original": original,
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "thumbnails": [
            {"size": t.size, "width": t.width, "height": t.height, "url": ref}
            for t, ref in zip(thumbnails, refs, strict=True)
        ],
    }
