"""Checking uploads and making thumbnails with Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from offload.demo.images import NotAnImage, inspect_image, make_thumbnails


def _image(fmt: str, size: tuple[int, int] = (300, 200), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "teal" if mode != "P" else 3).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp")],
)
def test_supported_images_pass(fmt: str, ext: str) -> None:
    info = inspect_image(_image(fmt))
    assert (info.format, info.width, info.height, info.extension) == (fmt, 300, 200, ext)
    assert info.content_type.startswith("image/")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not a PNG"),
        (b"%PDF-1.7\n" + b"0" * 100, "not a PNG"),
        (_image("PNG")[:60], "damaged"),
        (_image("TIFF"), "TIFF images are not supported"),
    ],
)
def test_what_is_not_a_usable_image_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(NotAnImage, match=reason):
        inspect_image(data)


def test_too_many_pixels_are_refused_without_decoding() -> None:
    with pytest.raises(NotAnImage, match="too large"):
        inspect_image(_image("PNG", (2000, 1000)), max_pixels=1_000_000)


def test_thumbnails_fit_each_box_and_keep_the_aspect_ratio() -> None:
    thumbs = make_thumbnails(_image("PNG", (1200, 800)), [320, 64, 160, 64])
    assert [(t.size, t.width, t.height) for t in thumbs] == [
        (64, 64, 43),
        (160, 160, 107),
        (320, 320, 213),
    ]
    for t in thumbs:
        with Image.open(io.BytesIO(t.data)) as image:
            assert image.format == "WEBP" and image.size == (t.width, t.height)


def test_small_images_are_not_enlarged_and_palette_images_convert() -> None:
    (thumb,) = make_thumbnails(_image("GIF", (40, 30), mode="P"), [64])
    assert (thumb.width, thumb.height) == (40, 30)


def test_camera_orientation_is_applied() -> None:
    image = Image.new("RGB", (400, 200), "navy")
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90° clockwise: shown as portrait
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    (thumb,) = make_thumbnails(out.getvalue(), [100])
    assert (thumb.width, thumb.height) == (50, 100)
