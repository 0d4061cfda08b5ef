"""Robust image and mask reading: any Pillow-readable file becomes RGB uint8 or a bool mask.

Rules (the same for every caller, so training, testing and `data check` see identical pixels):

- The file is fully decoded; a truncated or corrupt file fails. Only the first frame of a
  multi-frame file (GIF, multi-page TIFF) is used.
- Decompression bombs are refused: an image with more pixels than `max_image_pixels()` fails
  before its pixels are decoded. That is 178,956,970 (Pillow's default error level, twice its
  `PIL.Image.MAX_IMAGE_PIXELS`), unless the environment variable REALNET_MAX_IMAGE_PIXELS gives
  another number (line-scan cameras).
- The EXIF orientation tag is applied, so pixels are in display orientation. An uncompressed
  non-square TIFF with a transposing orientation (5-8) is decoded through libtiff: Pillow's own
  decoder scrambles its pixels.
- Conversion to RGB uint8:
  - L and 1 are replicated to three channels; P, YCbCr and RGBX go through Pillow's conversion;
    CMYK uses Pillow's plain formula R = (255 - C)(255 - K) / 255 (no ICC colour management).
  - Transparency (LA, PA, RGBA, or a palette/colour key) is composited on black:
    each colour channel is multiplied by alpha / 255 and rounded. Fully transparent pixels are
    black whatever colour they stored.
  - Integer modes wider than 8 bits are scaled by their bit range, not clipped:
    v8 = round(clip(v, 0, top) * 255 / top) with top = 2**bits - 1. `bits` is the TIFF
    BitsPerSample when the file declares one (Pillow opens a 12-bit TIFF as I;16; top is
    2**(bits - 1) - 1 when its SampleFormat says signed), else 16 (16-bit PNG, and 16-bit PGM,
    which Pillow opens as I). A TIFF's WhiteIsZero samples are inverted first, v = top - v (Pillow
    inverts those of 8 bits and fewer itself), for masks too.
  - Colour images of 16 bits a sample, and 16-bit grey with alpha (a PNG of colour type 4), keep
    the high byte, v8 = v >> 8: Pillow decodes them so. Without alpha, the same grey picture is
    scaled as above and may read one level higher.
  - Float images (mode F) are taken as intensities in [0, 1]: v8 = round(clip(v, 0, 1) * 255),
    NaN becomes 0.
- Masks: a lossless file stores its values exactly, so any nonzero value is a deliberate mark.
  Single-band files (1, L, I, I;16, F) mark a defect wherever the stored value is nonzero (no
  scaling first, so 0/1 label masks and 0/255 masks both work); other files are converted to RGB
  by the rules above and a pixel is a defect where any channel is nonzero. A 16-bit PNG with
  colour or alpha (RGB, RGBA, grey + alpha) and an RGB(A) TIFF with samples wider than 8 bits,
  which Pillow reduces to their high bytes, are read at full depth: a defect where any colour
  channel is nonzero and the pixel is not fully transparent. A lossy file (JPEG, a TIFF holding
  JPEG data, and WebP whose first frame is VP8 rather than lossless VP8L data) has compression noise, small
  nonzero values in black areas and around edges, so there a pixel is a defect where its 8-bit
  value (any channel) is at least half the full scale, 128. Save 0/1 label masks losslessly:
  in a lossy file their labels are no stronger than its noise.
- Resizing is a straight resize to size x size (no crop, aspect ratio not kept): images bilinear,
  masks nearest neighbour, both with Pillow's pixel-centre geometry so they stay aligned.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from realnet.data.records import Record
from realnet.errors import BadFileError, RealnetError

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SINGLE_BAND_MODES = frozenset({"1", "L", "F"})
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})
_LOSSY_THRESHOLD = 128  # half of the 8-bit full scale
_WEBP_LOSSY, _WEBP_LOSSLESS, _WEBP_FRAME = b"VP8 ", b"VP8L", b"ANMF"
_WEBP_FRAME_HEADER = 16  # position, size, duration and flags before a frame's own chunks
_TIFF_JPEG_COMPRESSIONS = frozenset({"jpeg", "tiff_jpeg"})  # Pillow's names: JPEG and old-style JPEG
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = frozenset({2, 4, 6})  # RGB, grey + alpha and RGBA, the ones Pillow reduces to 8 bits
_FULL_DEPTH_MODES = frozenset({"RGB", "RGBA"})  # Pillow's modes for those, and the ones OpenCV reads as BGR(A)
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED_INTEGER = 2
_TIFF_PHOTOMETRIC = 262
_TIFF_WHITE_IS_ZERO = 0
_TIFF_ORIENTATION = _EXIF_ORIENTATION = 274
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def open_image(path: str | Path) -> Image.Image:
    """Open, bomb-check, fully decode and EXIF-orient one image; any failure is a BadFileError."""
    path = Path(path)
    limit = max_image_pixels()  # a bad $REALNET_MAX_IMAGE_PIXELS is the command's error, not this file's
    try:
        image = _open_unchecked(path)
        if _scrambled_by_pillow(image):
            image.close()
            image = _open_unchecked(path, with_libtiff=True)
        with image:
            _refuse_bomb(path, image.size, limit)
            _refuse_misdecoded_tiff(path, image)
            image.load()
            # In place keeps the format's own object (a TIFF's BitsPerSample tag) and skips a copy.
            ImageOps.exif_transpose(image, in_place=True)
    except BadFileError:
        raise
    except FileNotFoundError:
        raise BadFileError(path, "broken symbolic link" if path.is_symlink() else "file not found") from None
    except IsADirectoryError:
        raise BadFileError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise BadFileError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise BadFileError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise BadFileError(path, f"refused as a decompression bomb ({error})") from None
    except OSError as error:  # with an errno the file system refused it (name too long, I/O error); else a decoder
        reason = f"cannot read it ({error.strerror})" if error.errno else f"cannot decode image: {_one_line(error)}"
        raise BadFileError(path, reason) from None
    except Exception as error:  # Pillow's decoders raise many types on corrupt data
        raise BadFileError(path, f"cannot decode image: {_one_line(error)}") from None
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read any Pillow-readable image as (H, W, 3) uint8 RGB by the module's conversion rules."""
    path = Path(path)
    return _to_rgb(open_image(path), path)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as (H, W) bool: True where the file marks a defect, that is
    nonzero in a lossless file and at least 128 (8-bit, any channel) in a lossy one."""
    path = Path(path)
    image = open_image(path)
    if _is_lossy(image, path):
        return _to_rgb(image, path).max(axis=2) >= _LOSSY_THRESHOLD
    if _is_reduced_to_high_bytes(image, path):
        return _full_depth_mask(path, image)
    if _is_wide_integer(image.mode):
        return _wide_integer_values(image) != 0
    if image.mode in _SINGLE_BAND_MODES:
        return np.asarray(image) != 0
    return _to_rgb(image, path).any(axis=2)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear straight resize of an (H, W, 3) uint8 image to (size, size, 3); no crop."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    resized = Image.fromarray(image).resize((_check_size(size),) * 2, Image.Resampling.BILINEAR)
    return np.asarray(resized)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour straight resize of an (H, W) bool mask to (size, size) bool."""
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"expected an (H, W) bool mask, got {mask.shape} {mask.dtype}")
    as_uint8 = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(as_uint8.resize((_check_size(size),) * 2, Image.Resampling.NEAREST)) != 0


def read_sample(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """The record's image (H, W, 3) uint8 and mask (H, W) bool at the file's own size, all False
    if no mask."""
    image = read_image(record.image)
    if record.mask is None:
        return image, np.zeros(image.shape[:2], dtype=bool)
    mask = read_mask(record.mask)
    if mask.shape != image.shape[:2]:
        raise BadFileError(
            record.mask,
            f"mask is {_wxh(mask.shape)} but its image {record.image} is {_wxh(image.shape)}",
        )
    return image, mask


def load_sample(record: Record, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The record's image (size, size, 3) uint8 and mask (size, size) bool, all False if no mask."""
    image, mask = read_sample(record)
    return resize_image(image, size), resize_mask(mask, size)


PIXEL_LIMIT_VARIABLE = "REALNET_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485  # Pillow's default error level, twice its MAX_IMAGE_PIXELS


def max_image_pixels() -> int:
    """The most pixels an image may have: $REALNET_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if value is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < 1:  # isdigit alone takes '²'
        raise RealnetError(f"{PIXEL_LIMIT_VARIABLE}={value!r}: give the largest number of pixels an image may have")
    return int(value)


_PILLOW_GLOBALS = threading.Lock()


def _open_unchecked(path: Path, *, with_libtiff: bool = False) -> Image.Image:
    """Image.open without Pillow's own size check, which warns (a traceback-like line) above its
    MAX_IMAGE_PIXELS and refuses above twice that with a message naming no way around it;
    `_refuse_bomb` decides instead. `with_libtiff`: an uncompressed TIFF is decoded by libtiff, as
    Pillow decodes compressed ones. Both are Pillow globals that opening reads, so they are set
    under a lock; opening reads the header only, so it is held briefly."""
    with _PILLOW_GLOBALS:
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        read_libtiff = TiffImagePlugin.READ_LIBTIFF
        TiffImagePlugin.READ_LIBTIFF = read_libtiff or with_libtiff
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
            TiffImagePlugin.READ_LIBTIFF = read_libtiff


def _scrambled_by_pillow(image: Image.Image) -> bool:
    """Pillow (13.0) turns a TIFF by its transposing orientation (5-8) while decoding, and its own
    decoder of uncompressed strips scrambles a non-square one (python-pillow/Pillow#7381); the
    libtiff decoder, which it uses for compressed TIFFs, does not."""
    return (image.format == "TIFF" and not getattr(image, "use_load_libtiff", True)
            and image.tag_v2.get(_TIFF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS
            and image.size[0] != image.size[1])


def _refuse_bomb(path: Path, size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise BadFileError(
            path,
            f"refused as a decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limit} (set {PIXEL_LIMIT_VARIABLE} to raise it)",
        )


def _refuse_misdecoded_tiff(path: Path, image: Image.Image) -> None:
    """A TIFF `_scrambled_by_pillow` still is after reopening with libtiff: a Pillow built without it."""
    if _scrambled_by_pillow(image):
        orientation = image.tag_v2[_TIFF_ORIENTATION]
        raise BadFileError(path, f"TIFF orientation {orientation} on a non-square uncompressed image, which Pillow "
                                 "without libtiff decodes wrongly; save it compressed or without the orientation tag")


def _is_lossy(image: Image.Image, path: Path) -> bool:
    if image.format in _LOSSY_FORMATS:
        return True
    if image.format == "TIFF":
        return image.info.get("compression") in _TIFF_JPEG_COMPRESSIONS
    return image.format == "WEBP" and _webp_bitstream(path) == _WEBP_LOSSY


def _is_16_bit_colour_png(path: Path) -> bool:
    """From the IHDR chunk, which PNG puts first: bit depth at byte 24, colour type at 25."""
    try:
        with path.open("rb") as handle:
            header = handle.read(26)
    except OSError as error:
        raise BadFileError(path, f"cannot read it ({error.strerror})") from None
    return header[:8] == _PNG_SIGNATURE and len(header) == 26 and header[24] == 16 and header[25] in _PNG_COLOUR_TYPES


def _is_reduced_to_high_bytes(image: Image.Image, path: Path) -> bool:
    if image.mode not in _FULL_DEPTH_MODES:
        return False
    if image.format == "TIFF":
        return max(image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, (8,))) > 8
    return image.format == "PNG" and _is_16_bit_colour_png(path)


def _full_depth_mask(path: Path, oriented: Image.Image) -> np.ndarray:
    """The mask of a file `_is_reduced_to_high_bytes` at full depth (OpenCV keeps it; Pillow does
    not), turned as `oriented`, the file as open_image read and EXIF-oriented it. A fourth sample
    is alpha only where Pillow says so (a TIFF's unspecified extra sample is not)."""
    try:
        encoded = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as error:
        raise BadFileError(path, f"cannot read it ({error.strerror})") from None
    # decoded from bytes: cv2.imread crashes the process on a file name that is not UTF-8
    pixels = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.ndim != 3:
        raise BadFileError(path, "cannot decode its colour pixels at full depth")
    marked = pixels[:, :, :3].any(axis=2)
    if oriented.mode == "RGBA" and pixels.shape[2] == 4:
        marked &= pixels[:, :, 3] != 0
    as_image = Image.fromarray(marked)
    if oriented.format != "TIFF":  # OpenCV turns a TIFF by its orientation tag itself, whatever the flags
        with _open_unchecked(path) as stored:  # its size was checked when `oriented` was opened
            as_image.getexif()[_EXIF_ORIENTATION] = stored.getexif().get(_EXIF_ORIENTATION, 1)
        ImageOps.exif_transpose(as_image, in_place=True)
    mask = np.asarray(as_image)
    if mask.shape != (oriented.height, oriented.width):  # a decoder disagreement, not a user's file
        raise BadFileError(path, f"decoded as {_wxh(mask.shape)} but Pillow reads {oriented.width}x{oriented.height}")
    return mask


def _webp_bitstream(path: Path) -> bytes:
    """FourCC of the first frame's image chunk, VP8 (lossy) or VP8L (lossless); Pillow does not
    report which. Walks the RIFF chunks, stepping into an animation frame (ANMF)."""
    try:
        with path.open("rb") as handle:
            handle.seek(12)  # past "RIFF", the file size and "WEBP"
            while len(header := handle.read(8)) == 8:
                fourcc, size = header[:4], struct.unpack("<I", header[4:])[0]
                if fourcc in (_WEBP_LOSSY, _WEBP_LOSSLESS):
                    return fourcc
                # a frame's image chunk follows its header; other chunks are padded to even sizes
                handle.seek(_WEBP_FRAME_HEADER if fourcc == _WEBP_FRAME else size + size % 2, 1)
    except OSError as error:
        raise BadFileError(path, f"cannot read it ({error.strerror})") from None
    return b""


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    keyed = "transparency" in image.info and mode in ("RGB", "L", "1")
    if mode == "RGB" and not keyed:
        return np.asarray(image)
    if mode in ("L", "1") and not keyed:
        return np.repeat(np.asarray(image.convert("L"))[:, :, None], 3, axis=2)
    if mode == "F" or _is_wide_integer(mode):
        gray = _scale_to_uint8(image)
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA")).astype(np.uint16)
            rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:]
            return ((rgb * alpha + 127) // 255).astype(np.uint8)
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise BadFileError(path, f"cannot convert image mode {mode} to RGB ({error})") from None


def _scale_to_uint8(image: Image.Image) -> np.ndarray:
    if image.mode == "F":
        unit = np.clip(np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0), 0.0, 1.0)
        return np.rint(unit * 255.0).astype(np.uint8)
    top = float(_integer_top(image))
    clipped = np.clip(_wide_integer_values(image).astype(np.float64), 0.0, top)
    return np.rint(clipped * (255.0 / top)).astype(np.uint8)


def _is_wide_integer(mode: str) -> bool:
    return mode == "I" or mode.startswith("I;16")


def _wide_integer_values(image: Image.Image) -> np.ndarray:
    """The samples of an I or I;16 image with 0 as black: a TIFF's WhiteIsZero ones inverted."""
    values = np.asarray(image).astype(np.int64)
    if _first(getattr(image, "tag_v2", {}).get(_TIFF_PHOTOMETRIC)) == _TIFF_WHITE_IS_ZERO:
        return _integer_top(image) - values
    return values


def _integer_top(image: Image.Image) -> int:
    """Largest sample value: 2**bits - 1, or 2**(bits - 1) - 1 for signed TIFF samples."""
    tags = getattr(image, "tag_v2", {})
    bits = _first(tags.get(_TIFF_BITS_PER_SAMPLE))
    if isinstance(bits, int) and 8 < bits <= 32:
        signed = _first(tags.get(_TIFF_SAMPLE_FORMAT)) == _TIFF_SIGNED_INTEGER
        return 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return 2**16 - 1


def _first(tag_value):
    return tag_value[0] if isinstance(tag_value, tuple) and tag_value else tag_value


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return int(size)


def _wxh(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
