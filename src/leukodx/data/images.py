"""Reading images safely: every way a file can be unusable becomes one clear error.

Everything downstream receives ``uint8`` RGB arrays of shape (H, W, 3), whatever the file held
(grayscale, RGBA, palette, CMYK, 16-bit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from leukodx.errors import DataNotFoundError, InvalidInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

#: Largest image accepted, in pixels. Checked from the header before any pixel is decoded,
#: so a decompression bomb costs nothing. 10,000 x 10,000 smear scans fit; 30,000^2 do not.
MAX_PIXELS = 120_000_000
#: Smallest side accepted: below this no cell can be resolved.
MIN_SIDE = 8

# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

log = logging.getLogger(__name__)


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(str(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> np.ndarray:
    """Read ``path`` as a (H, W, 3) uint8 RGB array, or raise a one-line ``InvalidInputError``.

    ``max_side``: the caller needs no more than this many pixels along the longer side; a larger
    image is reduced while it is decoded (JPEG: in the DCT, others: PIL's box reduce), so a scan of
    10,000^2 px never exists in memory at full size. The result keeps the aspect ratio and its longer
    side is at least ``max_side`` (or the image's own, if smaller)."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file")
    try:
        with _quiet_pil():
            return _decode(path, max_pixels, max_side)
    except PermissionError:
        raise InvalidInputError(f"{path}: permission denied (the file cannot be read by this user)") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError:
        raise InvalidInputError(
            f"{path}: image is far over the {max_pixels / 1e6:.0f} Mpx limit (possible decompression bomb)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{path}: corrupt or truncated image ({reason})") from None


@contextlib.contextmanager
def _quiet_pil():
    """PIL's warnings are not the user's: damaged metadata it can skip (a TIFF tag past the end) leaves the
    pixels to decide, and image size is checked here against ``MAX_PIXELS``, not PIL's lower bomb limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _decode(path: Path, max_pixels: int, max_side: int | None) -> np.ndarray:
    with Image.open(path) as im:
        width, height = im.size
        _check_size(str(path), width, height, max_pixels)
        orientation = im.getexif().get(0x0112, 1)
        if max_side is not None and max(width, height) > max_side:
            im.draft("RGB", (max(1, width * max_side // max(width, height)),
                             max(1, height * max_side // max(width, height))))
            im.load()
            factor = max(im.size) // max_side
            if factor >= 2:
                im = im.reduce(factor)
        im.load()
        # a camera's EXIF orientation: the image as it is shown, not as the sensor stored it
        turn = _EXIF_TURNS.get(orientation)
        return to_rgb_array(im.transpose(turn) if turn is not None else im)


_EXIF_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{name}: image is {width}x{height} px ({width * height / 1e6:.0f} Mpx), "
            f"over the {max_pixels / 1e6:.0f} Mpx limit (possible decompression bomb)"
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidInputError(
            f"{name}: image is {width}x{height} px; at least {MIN_SIDE}x{MIN_SIDE} is needed"
        )


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert any PIL mode to (H, W, 3) uint8 RGB; high bit depths are scaled, not clipped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max()), 1.0) if arr.max() > 1 else 1.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # composite on white: a transparent background is slide glass, not black
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    # one copy out of PIL, not two: a 10,000 x 10,000 scan is 300 MB per copy
    return np.array(im, dtype=np.uint8)


def jpeg_bytes(rgb: np.ndarray, quality: int = 80) -> bytes:
    """An RGB array as JPEG bytes (thumbnails, overlays, previews)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_jpeg(rgb: np.ndarray, side: int = 96) -> bytes:
    """A JPEG of ``rgb`` reduced to fit ``side`` x ``side`` (aspect kept)."""
    im = Image.fromarray(np.ascontiguousarray(rgb))
    im.thumbnail((side, side))
    return jpeg_bytes(np.asarray(im))


def as_rgb_array(image: np.ndarray, name: str = "array") -> np.ndarray:
    """Validate an in-memory image (H, W), (H, W, 1|3|4), uint8/uint16/float in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidInputError(
            f"{name}: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    _check_size(name, arr.shape[1], arr.shape[0], MAX_PIXELS)
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"{name}: image contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise InvalidInputError(f"{name}: float images must lie in [0, 1]")
        arr = (arr * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InvalidInputError(f"{name}: unsupported dtype {arr.dtype} (use uint8, uint16 or float)")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        arr = (arr[:, :, :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


def split_in_memory(item, name: str = "input") -> list[np.ndarray]:
    """One in-memory input as a list of images (H, W[, C]).

    Accepts a ``PIL.Image``, an (H, W) / (H, W, C) array (channels last), an (N, H, W, C) batch,
    and torch tensors in torch's layout: (C, H, W) or (N, C, H, W). A 3-D tensor or array whose
    layout cannot be told apart (e.g. (3, 64, 3)) is refused rather than guessed.
    """
    if type(item).__module__.startswith("PIL."):
        return [np.asarray(item.convert("RGBA" if "A" in item.getbands() else "RGB"))]
    is_tensor = type(item).__module__.startswith("torch")
    if is_tensor:
        arr = item.detach().cpu().numpy()
        if arr.ndim == 4:
            return [np.moveaxis(a, 0, -1) for a in arr]
        if arr.ndim == 3:
            if arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
                return [np.moveaxis(arr, 0, -1)]
            raise InvalidInputError(f"{name}: a 3-D tensor of shape {tuple(arr.shape)} is ambiguous; "
                                    "give (C, H, W) with C in 1, 3, 4 and W > 4, or a channels-last array")
        return [arr]
    arr = np.asarray(item)
    if arr.ndim == 4:
        return list(arr)
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise InvalidInputError(f"{name}: array of shape {arr.shape} looks channels-first; arrays are (H, W, C) "
                                "(pass a torch tensor for (C, H, W))")
    return [arr]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as the image is shown (EXIF orientation applied), read from the header only."""
    try:
        with _quiet_pil(), Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
                width, height = height, width
            return width, height
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"{path}: not a readable image ({type(exc).__name__})") from None


def list_images(inputs: list[str | os.PathLike], errors: list[dict] | None = None) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image paths.

    A named file is kept whatever its extension, so that a bad file is reported rather than
    silently skipped; inside folders only image extensions are taken, and the other files are
    mentioned (one log line per folder given). A sub-folder that cannot be read is an entry in
    ``errors`` when a list is given, else an ``InvalidInputError``.
    """
    return [Path(p) for p in list_image_paths(inputs, errors)]


class PathList(Sequence):
    """Path strings in order, held as one byte buffer and end offsets: a path costs its own length plus
    8 bytes instead of ~100 bytes of str object and list slot, so listing 10^6 files stays ~50 MB."""

    def __init__(self, paths: Iterable[str] = ()):
        self._buf = bytearray()
        self._ends = array("Q")
        self.extend(paths)

    def append(self, path: str) -> None:
        self._buf += os.fsencode(path)  # undecodable names round-trip (surrogateescape)
        self._ends.append(len(self._buf))

    def extend(self, paths: Iterable[str]) -> None:
        if isinstance(paths, PathList):  # buffers joined: no path decoded and encoded again
            base = len(self._buf)
            self._buf += paths._buf
            self._ends.extend(base + end for end in paths._ends)
            return
        for p in paths:
            self.append(p)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self._ends)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return os.fsdecode(bytes(self._buf[self._ends[i - 1] if i else 0:self._ends[i]]))


def list_image_paths(inputs: list[str | os.PathLike], errors: list[dict] | None = None) -> PathList:
    """``list_images`` as plain strings, in the same order, held compactly (``PathList``)."""
    found = PathList()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            walked = _walk_images(p, errors)
            if len(found):
                found.extend(walked)
            else:  # taken over, not copied
                found = walked
        elif p.exists():
            found.append(str(p))
        else:
            raise DataNotFoundError(f"{p}: no such file or folder")
    return found


def _walk_images(folder: Path, errors: list[dict] | None) -> PathList:
    images = PathList()
    other: Counter = Counter()

    def unreadable(exc: OSError) -> None:
        where = exc.filename or folder
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or type(exc).__name__)
        message = f"{where}: folder cannot be read ({reason}); its images are left out"
        if errors is None:
            raise InvalidInputError(message)
        errors.append({"input": str(where), "error": message})

    seen: set[str] = set()

    def join(directory: str, name: str) -> str:
        # str(Path(directory) / name) without pathlib, which interns every name for good (~40 bytes a
        # file, never freed); the same text, "." included
        return name if directory == "." else os.path.join(directory, name)

    def visit(directory: str) -> None:
        """Depth first, entries by name: the order of sorted Path objects, with no sort over all paths."""
        real = os.path.realpath(directory)
        if real in seen:  # a symbolic link back up the tree: walked once
            return
        seen.add(real)
        try:
            with os.scandir(directory) as listing:
                names = sorted(entry.name for entry in listing)
        except OSError as exc:
            unreadable(exc)
            return
        for name in names:
            path = join(directory, name)
            if os.path.isdir(path):  # follows symbolic links, as the walk always has
                visit(path)
            elif is_image_file(name):
                images.append(path)
            elif not name.startswith("."):
                other[os.path.splitext(name)[1].lower() or "(no extension)"] += 1

    try:
        visit(str(folder))
    finally:
        visit = None  # noqa: F841 - the recursive closure refers to itself: the cycle is broken so the lists go now
    if other:
        kinds = ", ".join(f"{ext} x{n}" for ext, n in other.most_common())
        log.warning("%s: %d file(s) that are not images skipped (%s)", folder, sum(other.values()), kinds)
    return images


def collect_images(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """Like ``list_images``, but a missing input becomes an error entry and the rest are still listed."""
    found, errors = collect_image_paths(inputs)
    return [Path(p) for p in found], errors


def collect_image_paths(inputs: list[str | os.PathLike]) -> tuple[PathList, list[dict]]:
    """``collect_images`` held compactly (``PathList`` of plain strings, the same order)."""
    found, errors = PathList(), []
    for item in inputs:
        try:
            found.extend(list_image_paths([item], errors))
        except DataNotFoundError as exc:
            errors.append({"input": str(item), "error": str(exc)})
    return found, errors
