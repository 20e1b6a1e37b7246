"""Tests for core.gallery.images, on small generated images only.

Expected colours come from the colour models' definitions (alpha compositing over white,
CMYK/HSV/YCbCr/CIELAB formulas, the EXIF orientation table), not from the module's output.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.config import ImageLimits
from core.gallery.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    LoadedImage,
    image_id,
    load_image,
    looks_like_image_path,
    thumbnail,
    thumbnail_bytes,
    to_rgb,
)

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
BLUE: RGB = (0, 0, 255)
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    """Random RGB pixels: they do not compress, so half a file is really half the image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def pixel(mode: str, value: Any) -> Image.Image:
    return Image.new(mode, (1, 1), value)


def palette(mode: str, index: int, **info: Any) -> Image.Image:
    """A one-pixel palette image whose palette is [red, blue], showing entry `index`."""
    img = Image.new(mode, (1, 1), index if mode == "P" else (index, 0))
    img.putpalette([*RED, *BLUE])
    img.info.update(info)
    return img


def grid(mode: str, values: list[float]) -> Image.Image:
    """A 1-row image of the given values in a 16-bit, 32-bit or float mode."""
    img = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    return img


def assert_close(actual: Any, expected: RGB, tol: int) -> None:
    assert len(actual) == 3
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (actual, expected)


# (case id, image factory, expected colour of pixel (0, 0), tolerance)
MODE_CASES: list[tuple[str, Callable[[], Image.Image], RGB, int]] = [
    ("RGB", lambda: pixel("RGB", (10, 20, 30)), (10, 20, 30), 0),
    ("RGBA transparent", lambda: pixel("RGBA", (0, 0, 0, 0)), WHITE, 0),
    # over white: c * a + 255 * (1 - a), a = 128/255 -> G = B = 127
    ("RGBA half red", lambda: pixel("RGBA", (255, 0, 0, 128)), (255, 127, 127), 1),
    ("RGBA opaque", lambda: pixel("RGBA", (0, 0, 255, 255)), BLUE, 0),
    ("LA transparent", lambda: pixel("LA", (0, 0)), WHITE, 0),
    ("LA opaque", lambda: pixel("LA", (40, 255)), (40, 40, 40), 0),
    ("La transparent", lambda: pixel("La", (0, 0)), WHITE, 0),
    ("PA transparent", lambda: palette("PA", 0), WHITE, 0),
    ("P transparency key", lambda: palette("P", 0, transparency=0), WHITE, 0),
    ("P opaque entry", lambda: palette("P", 1, transparency=0), BLUE, 0),
    ("P no transparency", lambda: palette("P", 0), RED, 0),
    ("RGB transparency key", lambda: _with_info(pixel("RGB", RED), transparency=RED), WHITE, 0),
    ("CMYK cyan", lambda: pixel("CMYK", (255, 0, 0, 0)), (0, 255, 255), 0),
    ("CMYK black", lambda: pixel("CMYK", (0, 0, 0, 255)), BLACK, 0),
    # JFIF: Y = .299 R + .587 G + .114 B, Cb = 128 - .1687 R ..., Cr = 128 + .5 R ...
    ("YCbCr red", lambda: pixel("YCbCr", (76, 85, 255)), RED, 3),
    # CIELAB of sRGB red is (53.24, 80.09, 67.20); Pillow stores L * 255/100 and a, b + 128
    ("LAB red", lambda: pixel("LAB", (136, 208, 195)), RED, 12),
    ("LAB white", lambda: pixel("LAB", (255, 128, 128)), WHITE, 2),
    # hue 85/255 of the circle = 120 degrees = green
    ("HSV green", lambda: pixel("HSV", (85, 255, 255)), (0, 255, 0), 0),
    ("L", lambda: pixel("L", 200), (200, 200, 200), 0),
    ("1 on", lambda: pixel("1", 1), WHITE, 0),
    ("1 off", lambda: pixel("1", 0), BLACK, 0),
    ("I;16 max", lambda: grid("I;16", [65535]), WHITE, 0),
    ("I;16 mid", lambda: grid("I;16", [32768, 0]), (128, 128, 128), 1),
    ("I;16B max", lambda: grid("I;16B", [65535]), WHITE, 0),
    ("I;16 zero", lambda: grid("I;16", [0, 65535]), BLACK, 0),
    ("I 16-bit data", lambda: grid("I", [65535, 0]), WHITE, 0),
    # outside 0..65535 the image's own range is used: -1000..1000 -> 0..255
    ("I own range", lambda: grid("I", [0, -1000, 1000]), (128, 128, 128), 1),
    ("F unit range", lambda: grid("F", [0.5, 0.0, 1.0]), (128, 128, 128), 1),
    ("F own range", lambda: grid("F", [250.0, 0.0, 1000.0]), (64, 64, 64), 1),
    ("F NaN", lambda: grid("F", [float("nan"), 1.0]), BLACK, 0),
]


def _with_info(img: Image.Image, **info: Any) -> Image.Image:
    img.info.update(info)
    return img


@pytest.mark.parametrize(
    ("make", "expected", "tol"),
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_to_rgb_gives_the_expected_colour(
    make: Callable[[], Image.Image], expected: RGB, tol: int
) -> None:
    img = make()
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == img.size
    assert_close(out.getpixel((0, 0)), expected, tol)


def test_to_rgb_returns_plain_rgb_unchanged() -> None:
    img = pixel("RGB", RED)
    assert to_rgb(img) is img


@pytest.mark.parametrize(
    ("make", "fmt", "expected"),
    [
        (lambda: pixel("RGBA", (0, 0, 0, 0)), "PNG", WHITE),
        (lambda: pixel("LA", (0, 0)), "PNG", WHITE),
        (lambda: palette("P", 0, transparency=0), "PNG", WHITE),
        (lambda: palette("P", 1, transparency=0), "GIF", BLUE),
        (lambda: pixel("CMYK", (255, 0, 0, 0)), "TIFF", (0, 255, 255)),
        (lambda: grid("I;16", [65535]), "PNG", WHITE),
        (lambda: pixel("1", 1), "BMP", WHITE),
        (lambda: pixel("RGB", RED), "WEBP", RED),
    ],
    ids=["RGBA-png", "LA-png", "P-tRNS-png", "P-gif", "CMYK-tiff", "I16-png", "1-bmp", "webp"],
)
def test_load_image_converts_saved_files_to_rgb(
    make: Callable[[], Image.Image], fmt: str, expected: RGB
) -> None:
    data = encode(make(), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    loaded = load_image(data, name=f"x.{fmt.lower()}")
    assert loaded.image.mode == "RGB"
    assert loaded.format == fmt
    assert_close(loaded.image.getpixel((0, 0)), expected, 0)


def test_loaded_image_fields(tmp_path: Path) -> None:
    data = encode(noise((30, 20)), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    from_path = load_image(path)
    from_bytes = load_image(data)
    assert isinstance(from_path, LoadedImage)
    assert from_path.data == data
    assert (from_path.width, from_path.height) == (30, 20) == from_path.image.size
    assert from_path.format == "PNG"
    assert from_path.id == from_bytes.id == hashlib.sha256(data).hexdigest()
    assert np.array_equal(np.asarray(from_path.image), np.asarray(from_bytes.image))
    assert load_image(str(path)).id == from_path.id


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6_rotates_clockwise(fmt: str) -> None:
    # Stored 40 wide x 20 high, blue, with a red 10x10 block in the top-left corner.
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6
    loaded = load_image(encode(img, fmt, exif=exif), name=f"rotated.{fmt.lower()}")
    # EXIF orientation 6: stored row 0 is the visual right edge, stored column 0 the visual
    # top, so the top-left block shows in the top-right corner of a 20 x 40 picture.
    assert (loaded.width, loaded.height) == (20, 40) == loaded.image.size
    assert_close(loaded.image.getpixel((15, 4)), RED, 8)
    assert_close(loaded.image.getpixel((4, 4)), BLUE, 8)
    assert_close(loaded.image.getpixel((15, 35)), BLUE, 8)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    loaded = load_image(data, name=f"anim.{fmt.lower()}")
    assert loaded.image.mode == "RGB"
    assert_close(loaded.image.getpixel((4, 4)), RED, 0)


def ogg_bytes() -> bytes:
    """The start of an Ogg Vorbis stream: a real container, not an image."""
    return b"OggS\x00\x02" + bytes(20) + b"\x01\x1e\x01vorbis" + bytes(64)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello, I am a text file\n" * 10, "not an image Pillow can read"),
        (ogg_bytes(), "not an image Pillow can read"),
        (encode(noise(), "PNG")[: len(encode(noise(), "PNG")) // 2], "truncated or corrupt"),
        (encode(noise(), "JPEG")[: len(encode(noise(), "JPEG")) // 2], "truncated or corrupt"),
        # Pillow reads PPM, but load_image only accepts the formats it advertises
        (encode(noise(), "PPM"), "not an image Pillow can read"),
        (b"", "is empty"),
    ],
    ids=["text", "ogg", "half-png", "half-jpeg", "ppm", "empty"],
)
def test_unusable_bytes_raise_image_error_naming_the_file(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(data, name="holiday 03.jpg")
    message = str(info.value)
    assert "holiday 03.jpg" in message
    assert reason in message
    assert message.endswith(".")


def test_corrupt_png_data_raises_image_error() -> None:
    data = bytearray(encode(noise(), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)  # breaks the IDAT chunk's CRC
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(bytes(data), name="bad.png")


@pytest.mark.filterwarnings("ignore:.*:UserWarning")  # Pillow's TIFF reader warns, then fails
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_every_truncation_raises_image_error_and_nothing_else(fmt: str) -> None:
    data = encode(noise((16, 16)), fmt)
    # The last bytes of some formats (PNG's IEND chunk, GIF's trailer) hold no pixels and
    # Pillow rightly accepts files without them, so cut only into the image data.
    for end in range(1, len(data) - 32, max(1, len(data) // 60)):
        with pytest.raises(ImageError):
            load_image(data[:end], name="cut")


def test_unreadable_paths_raise_image_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    cases = {
        tmp_path / "missing.png": "does not exist",
        folder: "is a directory",
        empty: "is empty",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert path.name in str(info.value)
        assert reason in str(info.value)


def test_name_overrides_the_path_name_in_messages(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="upload-7"):
        load_image(tmp_path / "missing.png", name="upload-7")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to decode pixel data (opening a header is allowed)."""
    calls: list[str] = []

    def refuse(self: ImageFile.ImageFile) -> Any:
        calls.append(self.format or "?")
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    return calls


def test_oversize_input_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(noise(), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1)

    def no_open(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Image.open was called")

    monkeypatch.setattr(Image, "open", no_open)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(ImageError) as info:
            load_image(source, limits=limits, name="big.png")
        assert "big.png" in str(info.value)
        assert "MB" in str(info.value)
        assert "limit" in str(info.value)


def test_input_at_the_byte_limit_is_accepted() -> None:
    data = encode(noise(), "PNG")
    assert load_image(data, limits=ImageLimits(max_bytes=len(data))).data == data


def test_too_many_pixels_is_refused_without_decoding(no_decoding: list[str]) -> None:
    # 3000 x 3000 bilevel pixels compress to a few kB: small on disk, 9 megapixels decoded.
    data = encode(Image.new("1", (3000, 3000)), "PNG")
    assert len(data) < 10_000
    with pytest.raises(ImageError) as info:
        load_image(data, limits=ImageLimits(max_pixels=1_000_000), name="bomb.png")
    assert "bomb.png" in str(info.value)
    assert "megapixel limit" in str(info.value)
    assert no_decoding == []


def test_pillow_bomb_warning_becomes_image_error(no_decoding: list[str]) -> None:
    data = encode(Image.new("1", (10000, 10000)), "PNG")
    filters_before = list(warnings.filters)
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    # Our own cap allows it, so the refusal comes from Pillow's threshold (89.5 MP).
    with pytest.raises(ImageError, match=r"bomb\.png"):
        load_image(data, limits=ImageLimits(max_pixels=10**9), name="bomb.png")
    assert no_decoding == []
    assert warnings.filters == filters_before
    assert max_pixels_before == Image.MAX_IMAGE_PIXELS


def test_pillow_globals_are_left_alone() -> None:
    load_image(encode(noise(), "PNG"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_id_is_sha256_of_the_bytes() -> None:
    data = encode(noise(), "PNG")
    assert image_id(data) == hashlib.sha256(data).hexdigest()
    assert image_id(bytes(data)) == image_id(data)
    changed = bytearray(data)
    changed[100] ^= 1
    assert image_id(bytes(changed)) != image_id(data)
    assert image_id(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        ((400, 200), 256, (256, 128)),
        ((200, 400), 256, (128, 256)),
        ((300, 300), 100, (100, 100)),
        ((100, 50), 256, (100, 50)),  # never upsampled
        ((256, 10), 256, (256, 10)),
    ],
)
def test_thumbnail_keeps_aspect_and_never_upsamples(
    size: tuple[int, int], limit: int, expected: tuple[int, int]
) -> None:
    img = noise(size)
    thumb = thumbnail(img, limit)
    assert thumb.size == expected
    assert thumb.mode == "RGB"
    assert thumb is not img
    assert img.size == size


def test_thumbnail_of_transparent_image_is_rgb_on_white() -> None:
    thumb = thumbnail(Image.new("RGBA", (600, 300), (0, 0, 0, 0)), 64)
    assert (thumb.mode, thumb.size) == ("RGB", (64, 32))
    assert_close(thumb.getpixel((10, 10)), WHITE, 0)


def test_thumbnail_rejects_a_size_below_one() -> None:
    with pytest.raises(ValueError):
        thumbnail(noise(), 0)


def test_thumbnail_bytes_are_a_jpeg_of_the_thumbnail_centred_on_a_white_square() -> None:
    data = thumbnail_bytes(Image.new("RGB", (500, 250), RED), 100)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG"
    assert decoded.size == (100, 100)  # a 100 x 50 thumbnail, padded top and bottom
    assert_close(decoded.convert("RGB").getpixel((50, 50)), RED, 4)
    assert_close(decoded.convert("RGB").getpixel((50, 10)), WHITE, 4)
    assert_close(decoded.convert("RGB").getpixel((50, 90)), WHITE, 4)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("cat.png", True),
        ("CAT.JPG", True),
        ("dir/photo.JpEg", True),
        (Path("scan.tiff"), True),
        ("a.b.webp", True),
        ("notes.txt", False),
        ("sound.ogg", False),
        ("png", False),
        ("archive.png.zip", False),
        ("folder.png/readme", False),
    ],
)
def test_looks_like_image_path(path: str | Path, expected: bool) -> None:
    assert looks_like_image_path(path) is expected


def test_image_extensions() -> None:
    expected = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    assert expected == IMAGE_EXTENSIONS
    assert all(looks_like_image_path(f"x{ext}") for ext in IMAGE_EXTENSIONS)


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)
