"""Image and mask decoding edge cases: full-depth colour PNG masks with an EXIF orientation, WebP
masks whose image chunk follows an odd-sized chunk, multi-picture JPEG (MPO) masks read with the
lossy rule, and a record without a mask."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from realnet.data.io import read_image, read_mask, read_sample
from realnet.data.records import NORMAL, Record


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _exif_orientation(orientation: int) -> bytes:
    """A big-endian TIFF block with one IFD entry: Orientation (0x0112, SHORT, 1)."""
    return b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + \
        struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)


@pytest.mark.parametrize("shape", [(2, 3), (3, 3)])
def test_16_bit_colour_png_mask_follows_its_exif_orientation(tmp_path, shape):
    """Orientation 6 (rotate 90 degrees clockwise for display) must turn the full-depth mask as
    read_image turns the image, whether or not the mask is square."""
    import cv2

    h, w = shape
    stored = np.zeros((h, w), bool)
    stored[0, 0] = stored[h - 1, 1] = True  # an asymmetric mark
    values = np.zeros((h, w, 3), np.uint16)
    values[stored] = (0, 0, 1)  # a label below 256: only the full-depth read sees it
    ok, encoded = cv2.imencode(".png", values)
    assert ok
    png = encoded.tobytes()
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR header, IHDR data, CRC
    path = tmp_path / "m.png"
    path.write_bytes(png[:ihdr_end] + _chunk(b"eXIf", _exif_orientation(6)) + png[ihdr_end:])
    expected = np.rot90(stored, k=-1)  # 90 degrees clockwise
    assert read_image(path).shape[:2] == expected.shape  # the image is turned too
    np.testing.assert_array_equal(read_mask(path), expected)


def test_lossy_webp_mask_after_an_odd_sized_chunk_is_still_lossy(tmp_path):
    """An ICC profile of odd length is padded by one byte; the image chunk after it must still be
    found as VP8 (lossy), so that faint compression noise is no defect."""
    grey = np.full((16, 16), 40, np.uint8)  # well below half scale: no defect in a lossy file
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buffer, "WEBP", quality=50, icc_profile=b"\x01" * 7)
    data = buffer.getvalue()
    assert b"ICCP" in data and b"VP8 " in data  # the odd-sized chunk comes before the lossy image chunk
    iccp = data.index(b"ICCP")
    assert struct.unpack("<I", data[iccp + 4:iccp + 8])[0] % 2 == 1
    path = tmp_path / "m.webp"
    path.write_bytes(data)
    assert np.asarray(Image.open(path).convert("L")).max() < 128
    assert not read_mask(path).any()


def test_mpo_mask_noise_is_not_defect(tmp_path):
    yy, xx = np.mgrid[:32, :32]
    values = np.where((yy - 15.3) ** 2 + (xx - 13.7) ** 2 < 9.5**2, 255, 0).astype(np.uint8)  # a disk: ringing edges
    first = Image.fromarray(values).convert("RGB")
    path = tmp_path / "m.mpo"
    first.save(path, "MPO", quality=50, save_all=True, append_images=[first])
    with Image.open(path) as stored:
        assert stored.format == "MPO"
        pixels = np.asarray(stored.convert("RGB"))
    assert (pixels.max(axis=2) != 0).sum() > (values != 0).sum() + 20  # the compression noise is there
    expected = pixels.max(axis=2) >= 128  # the lossy rule: any channel at least half scale
    mask = read_mask(path)
    np.testing.assert_array_equal(mask, expected)
    assert abs(int(mask.sum()) - int((values != 0).sum())) < 30


def test_read_sample_without_mask_matches_a_non_square_images_shape(tmp_path):
    pixels = np.zeros((5, 9, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "n.png")
    image, mask = read_sample(Record(tmp_path / "n.png", None, NORMAL, "good", "c", "test"))
    assert image.shape == (5, 9, 3)
    assert mask.shape == (5, 9) and mask.dtype == np.bool_ and not mask.any()
