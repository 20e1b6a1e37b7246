"""Open, validate, orient, convert to RGB, hash and thumbnail images: the only Pillow user.

Every image that enters Lookalike (an upload, a file being ingested, a search query) goes
through `load_image`, which either returns a fully decoded RGB `LoadedImage` or raises
`ImageError` with one sentence a UI or a batch report can show. The checks run cheapest first:
byte size before reading a file to the end, pixel count before decoding, decoding last.

Pillow's process-wide switches (`Image.MAX_IMAGE_PIXELS`, `ImageFile.LOAD_TRUNCATED_IMAGES`)
are never written here: Streamlit serves several sessions from threads of one process.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.config import ImageLimits
from core.errors import LookalikeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)

# The decoders `load_image` will run, matching IMAGE_EXTENSIONS (Pillow's JPEG decoder also
# opens the multi-picture JPEGs many phones write, reported as format "MPO"). Naming them
# keeps untrusted bytes away from Pillow's other plugins, e.g. EPS, which runs Ghostscript.
_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF")
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"

# What Pillow's decoders raise on malformed data (Image.open itself treats SyntaxError,
# IndexError, TypeError and struct.error as "not this format"). Anything else is a bug and
# propagates as it is.
_BAD_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)

_DEFAULT_LIMITS = ImageLimits()
_MB = 1024 * 1024  # ImageLimits.max_bytes counts megabytes as MiB
_WHITE = (255, 255, 255, 255)
_THUMB_QUALITY = 85  # JPEG quality of thumbnails: no visible artefacts at grid size


class ImageError(LookalikeError, ValueError):
    """A file that cannot be used as an image; str(exc) is one sentence a UI can show."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image together with the exact bytes it came from."""

    id: str  # image_id(data): sha256 hex digest of the original bytes
    image: Image.Image  # fully loaded, EXIF orientation applied, mode "RGB"
    width: int  # after orientation
    height: int  # after orientation
    format: str | None  # Pillow's format name of the source ("PNG", "JPEG", ...)
    data: bytes  # the original bytes, unchanged


def image_id(data: bytes) -> str:
    """The id of an image: the sha256 hex digest of its bytes (same bytes, same image)."""
    return hashlib.sha256(data).hexdigest()


def looks_like_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether a path has one of IMAGE_EXTENSIONS (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: bytes | str | os.PathLike[str],
    *,
    limits: ImageLimits = _DEFAULT_LIMITS,
    name: str | None = None,
) -> LoadedImage:
    """Read, validate and decode one image from bytes or a path.

    Owns every way an input can be refused, each raised as `ImageError` naming the file
    (`name`, else the path's file name): unreadable path, more than `limits.max_bytes` bytes,
    empty, not a PNG/JPEG/WebP/GIF/BMP/TIFF, more than `limits.max_pixels` pixels (or over
    Pillow's own decompression-bomb threshold, whichever is lower), truncated or corrupt.
    Animated images yield their first frame; EXIF orientation is applied; see `to_rgb` for
    how colour modes become RGB.
    """
    if isinstance(source, bytes):
        label = _label(name)
        data = source
        _check_size(len(data), label, limits)
    else:
        path = Path(source)
        label = _label(name or path.name or str(path))
        data = _read_file(path, label, limits)
    if not data:
        raise ImageError(f"{label} is empty.")

    decoded, source_format = _decode(data, label, limits)
    try:
        rgb = to_rgb(decoded)
    except ValueError as exc:
        msg = f"{label} has a colour mode ({decoded.mode}) that cannot be converted to RGB."
        raise ImageError(msg) from exc
    return LoadedImage(
        id=image_id(data),
        image=rgb,
        width=rgb.width,
        height=rgb.height,
        format=source_format,
        data=data,
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to "RGB" (returns `img` itself if already plain RGB).

    - Transparency (RGBA, LA, PA, La, RGBa, and P/L/RGB/1 with a `transparency` key) is
      composited over white, so a fully transparent pixel becomes (255, 255, 255).
    - CMYK, YCbCr, LAB, HSV, L, 1 and P use Pillow's own conversions.
    - 16-bit, 32-bit and float images are first scaled to 8-bit grey: see `_to_8bit_grey`.
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _to_8bit_grey(img)
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.has_transparency_data:
        return _flatten_on_white(img)
    return img.convert("RGB")


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """An RGB copy of `img` whose longest side is at most `size`, aspect ratio kept.

    Uses LANCZOS resampling and never upsamples: an image already within `size` is only copied.
    """
    if size < 1:
        raise ValueError(f"Thumbnail size must be at least 1 pixel, not {size}.")
    thumb = to_rgb(img)
    if thumb is img:
        thumb = img.copy()  # Image.thumbnail works in place; the caller's image stays untouched
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return thumb


def square_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """`thumbnail(img, size)` centred on a white `size` x `size` square, so grids line up."""
    thumb = thumbnail(img, size)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
    return canvas


def thumbnail_bytes(img: Image.Image, size: int) -> bytes:
    """`square_thumbnail(img, size)` encoded as a JPEG (quality 85), ready to store or serve."""
    buffer = io.BytesIO()
    square_thumbnail(img, size).save(buffer, format="JPEG", quality=_THUMB_QUALITY)
    return buffer.getvalue()


def grey_png_bytes(pixels: np.ndarray) -> bytes:
    """An (H, W) uint8 array as a greyscale PNG. Deterministic (no metadata, fixed settings):
    the same pixels give the same bytes, so a file written again keeps its id."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 array, got {pixels.shape} {pixels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # uint8 (H, W): mode "L"
    return buffer.getvalue()


def _label(name: str | None) -> str:
    """How messages refer to the input: its quoted name, or "The file" when it has none."""
    return f"'{name}'" if name else "The file"


def _check_size(size: int, label: str, limits: ImageLimits) -> None:
    """Refuse inputs over `limits.max_bytes` before anything tries to decode them."""
    if size > limits.max_bytes:
        raise ImageError(
            f"{label} is {size / _MB:.1f} MB ({size:,} bytes), over the "
            f"{limits.max_bytes / _MB:.1f} MB limit ({limits.max_bytes:,} bytes)."
        )


def _read_file(path: Path, label: str, limits: ImageLimits) -> bytes:
    """The bytes of the file at `path`, refusing missing, unreadable and oversized files."""
    try:
        if path.is_dir():
            raise ImageError(f"{label} is a directory, not an image file.")
        _check_size(path.stat().st_size, label, limits)
        with path.open("rb") as file:
            # Read one byte past the cap: st_size can be stale or 0 (pipes, /proc, growing files).
            data = file.read(limits.max_bytes + 1)
    except FileNotFoundError as exc:
        raise ImageError(f"{label} does not exist.") from exc
    except PermissionError as exc:
        raise ImageError(f"{label} cannot be read: permission denied.") from exc
    except OSError as exc:
        raise ImageError(f"{label} cannot be read ({exc.strerror or exc}).") from exc
    _check_size(len(data), label, limits)
    return data


def _decode(data: bytes, label: str, limits: ImageLimits) -> tuple[Image.Image, str | None]:
    """Decode the first frame of `data` with orientation applied, and its format name.

    The returned image is a detached copy: nothing refers to `data` or the decoder any more.
    """
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it refuse instead.
        # Scoped to this block so Pillow's global threshold and filters are left as they were.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_FORMATS) as src:
                _check_pixels(src.width, src.height, label, limits)
                src.load()  # an animated image stays on frame 0, the frame we want
                oriented = ImageOps.exif_transpose(src)
                return oriented, src.format
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(
                f"{label} has too many pixels to decode safely (a possible decompression bomb)."
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageError(
                f"{label} is not an image Pillow can read (expected {_FORMAT_NAMES})."
            ) from exc
        except _BAD_DATA_ERRORS as exc:
            raise ImageError(f"{label} is truncated or corrupt.") from exc


def _check_pixels(width: int, height: int, label: str, limits: ImageLimits) -> None:
    """Refuse images whose header promises too many pixels, before they are decoded."""
    if width < 1 or height < 1:
        raise ImageError(f"{label} has no pixels ({width}×{height}).")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{label} is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels), "
            f"over the {limits.max_pixels / 1e6:.1f}-megapixel limit."
        )


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """Scale a 16-bit ("I;16*"), 32-bit ("I") or float ("F") image to 8-bit grey ("L").

    Pillow's own conversion clips these to 0..255, turning most 16-bit photos white. Instead:
    - "I;16*": by the type range, 0..65535 -> 0..255, so brightness is absolute;
    - "I": the same when every value fits 0..65535 (16-bit PNG/TIFF data decoded as "I"),
      otherwise stretched from the image's own minimum..maximum;
    - "F": 0..1 -> 0..255 when every value is in 0..1, otherwise stretched from its own
      minimum..maximum of its finite values (NaN becomes black, ±inf the ends).
    A stretched image whose pixels are all equal becomes black.
    """
    values = np.asarray(img, dtype=np.float64)  # (H, W)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    if hi > lo:
        clean = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
        scaled = (clean - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)


def _flatten_on_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency over an opaque white background, as RGB."""
    if img.mode == "La":
        img = img.convert("LA")  # Pillow cannot take premultiplied La straight to RGBA
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")
