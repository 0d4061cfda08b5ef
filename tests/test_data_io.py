from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import handmade_png
from PIL import Image

from realnet.data.io import (
    load_sample,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
)
from realnet.data.records import ANOMALOUS, NORMAL, Record
from realnet.errors import BadFileError

GRAY = np.array([[0, 64, 128], [192, 255, 7]], dtype=np.uint8)


def _save(path: Path, image: Image.Image, **params) -> Path:
    image.save(path, **params)
    return path


# --- modes -------------------------------------------------------------------------------


def test_rgb_png_is_returned_unchanged(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = read_image(_save(tmp_path / "rgb.png", Image.fromarray(pixels)))
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3)
    np.testing.assert_array_equal(image, pixels)


def test_gray_l_is_replicated_to_three_channels(tmp_path):
    image = read_image(_save(tmp_path / "l.png", Image.fromarray(GRAY)))
    assert image.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], GRAY)


def test_bilevel_mode_1_becomes_0_or_255(tmp_path):
    bits = Image.fromarray(GRAY > 100)
    assert bits.mode == "1"
    image = read_image(_save(tmp_path / "one.png", bits))
    np.testing.assert_array_equal(image[:, :, 0], np.where(GRAY > 100, 255, 0))


def test_la_alpha_is_composited_on_black(tmp_path):
    la = Image.new("LA", (3, 1))
    for x, (value, alpha) in enumerate([(200, 255), (200, 128), (200, 0)]):
        la.putpixel((x, 0), (value, alpha))
    image = read_image(_save(tmp_path / "la.png", la))
    np.testing.assert_array_equal(image[0, :, 1], [200, round(200 * 128 / 255), 0])


def test_rgba_alpha_is_composited_on_black(tmp_path):
    rgba = np.array([[[10, 100, 250, 255], [10, 100, 250, 51], [255, 255, 255, 0]]], np.uint8)
    image = read_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba)))
    np.testing.assert_array_equal(image[0], [[10, 100, 250], [2, 20, 50], [0, 0, 0]])


def test_palette_uses_its_colours_and_transparent_index_is_black(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * (253 * 3))
    for x, index in enumerate([1, 2, 0]):
        palette.putpixel((x, 0), index)
    plain = read_image(_save(tmp_path / "p.png", palette))
    np.testing.assert_array_equal(plain[0], [[10, 20, 30], [200, 100, 50], [0, 0, 0]])
    keyed = read_image(_save(tmp_path / "p_trns.png", palette, transparency=2))
    np.testing.assert_array_equal(keyed[0], [[10, 20, 30], [0, 0, 0], [0, 0, 0]])


def test_colour_key_of_gray_and_rgb_images_is_black(tmp_path):
    """Regression: L and RGB returned before the colour-key check, so keyed pixels kept their colour."""
    gray = read_image(_save(tmp_path / "l_trns.png", Image.fromarray(GRAY), transparency=128))
    np.testing.assert_array_equal(gray[:, :, 0], np.where(GRAY == 128, 0, GRAY))
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    keyed = read_image(_save(tmp_path / "rgb_trns.png", Image.fromarray(rgb), transparency=(10, 20, 30)))
    np.testing.assert_array_equal(keyed[0], [[0, 0, 0], [40, 50, 60]])


def test_i16_tiff_is_scaled_by_its_16_bit_range_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000], [32768, 65535, 255]], dtype=np.uint16)
    tiff = Image.fromarray(values)
    assert tiff.mode == "I;16"
    image = read_image(_save(tmp_path / "deep.tif", tiff))
    np.testing.assert_array_equal(image[:, :, 0], np.rint(values / 65535 * 255).astype(np.uint8))
    assert image[1, 2, 0] == 1  # 255 of 65535 is dark, where Pillow's convert("L") clips to 255


def test_16_bit_png_and_pgm_follow_the_same_rule(tmp_path):
    values = np.array([[0, 4096, 65535]], dtype=np.uint16)
    expected = np.rint(values / 65535 * 255).astype(np.uint8)
    for name in ("deep.png", "deep.pgm"):
        image = read_image(_save(tmp_path / name, Image.fromarray(values)))
        np.testing.assert_array_equal(image[:, :, 0], expected, err_msg=name)


def test_signed_32_bit_tiff_uses_its_declared_bit_depth(tmp_path):
    values = np.array([[0, 2**31 - 1, 2**30, 65535, -5]], dtype=np.int32)
    image = read_image(_save(tmp_path / "i32.tif", Image.fromarray(values)))
    np.testing.assert_array_equal(image[0, :, 0], [0, 255, 128, 0, 0])


def _grey_tiff(path: Path, width: int, bits: int, photometric: int, data: bytes) -> Path:
    """An uncompressed little-endian grey TIFF of one row of `width` samples stored in `data`
    (Pillow writes no 12-bit files, and the installed tifffile's codecs cannot pack them)."""
    tags = [(256, width), (257, 1), (258, bits), (259, 1), (262, photometric), (273, 0), (277, 1), (278, 1),
            (279, len(data))]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(struct.pack("<HHII", tag, 4, 1, data_offset if tag == 273 else value) for tag, value in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0) + data)
    return path


def test_12_bit_tiff_is_scaled_by_its_declared_bit_depth(tmp_path):
    """Regression: Pillow opens a 12-bit TIFF as I;16, which was scaled by 65535, 16 times too dark."""
    packed = int("".join(format(v, "012b") for v in (0, 1024, 2048, 4095)), 2).to_bytes(6, "big")
    path = _grey_tiff(tmp_path / "deep12.tif", 4, 12, 1, packed)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 64, 128, 255])


def test_white_is_zero_tiff_is_inverted_at_any_bit_depth(tmp_path):
    """Regression: Pillow inverts an 8-bit WhiteIsZero TIFF itself but not a 16-bit one, which
    was read as its negative (and as a mask, marked its white background)."""
    narrow = _grey_tiff(tmp_path / "white8.tif", 3, 8, 0, bytes([0, 255, 1]))
    wide = _grey_tiff(tmp_path / "white16.tif", 3, 16, 0, np.array([0, 65535, 257], "<u2").tobytes())
    for path in (narrow, wide):
        np.testing.assert_array_equal(read_image(path)[0, :, 0], [255, 0, 254], err_msg=path.name)
        np.testing.assert_array_equal(read_mask(path)[0], [True, False, True], err_msg=path.name)

def test_float_image_is_unit_range(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 7.0, -1.0]], dtype=np.float32)
    image = read_image(_save(tmp_path / "f.tif", Image.fromarray(values)))
    np.testing.assert_array_equal(image[0, :, 0], [0, 128, 255, 255, 0])


def test_cmyk_jpeg_converts_with_pillows_formula(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink
    path = _save(tmp_path / "cmyk.jpg", cmyk, quality=100)
    assert Image.open(path).mode == "CMYK"
    image = read_image(path)
    assert image.shape == (16, 16, 3)
    np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=3)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)  # red left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path / "rotated.jpg", Image.fromarray(pixels), exif=exif, quality=95)
    image = read_image(path)
    assert image.shape == (32, 16, 3)
    assert image[:12, :, 0].mean() > 200  # the red half is now on top
    assert image[20:, :, 0].mean() < 50


@pytest.mark.parametrize("compression", ["raw", "tiff_lzw"])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_tiff_orientations_are_applied_to_non_square_images(tmp_path, mode, compression):
    """Regression: Pillow's decoder of uncompressed strips scrambles a non-square TIFF with a
    transposing orientation (5-8), so such files were refused; they are now read through libtiff.
    Each orientation is compared with the stored pixels turned by Pillow's transpose."""
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    pixels = {"L": stored, "RGB": np.dstack([stored, 255 - stored, stored // 2]),
              "RGBA": np.dstack([stored, 255 - stored, stored // 2, np.full_like(stored, 255)]),
              "I;16": stored.astype(np.uint16) * 257}[mode]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = _save(tmp_path / "r.tif", Image.fromarray(pixels), exif=exif, compression=compression)
        turned = Image.fromarray(pixels)
        if orientation > 1:
            turned = turned.transpose({2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                                       4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                                       6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                                       8: Image.Transpose.ROTATE_90}[orientation])
        expected = np.asarray(turned) if mode != "I;16" else (np.asarray(turned) // 257).astype(np.uint8)
        image = read_image(path)
        np.testing.assert_array_equal(image[:, :, 0], expected if expected.ndim == 2 else expected[:, :, 0],
                                      err_msg=f"orientation {orientation}")


def test_a_tiff_pillow_would_scramble_is_refused_when_libtiff_cannot_read_it(tmp_path, monkeypatch):
    import realnet.data.io as image_io

    unchecked = image_io._open_unchecked
    monkeypatch.setattr(image_io, "_open_unchecked", lambda path, with_libtiff=False: unchecked(path))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "r.tif", Image.fromarray(np.zeros((3, 4), np.uint8)), exif=exif)
    with pytest.raises(BadFileError, match="r.tif.*TIFF orientation 6 on a non-square uncompressed image"):
        read_image(path)


# --- failures ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [13_400, 30_000])  # just above realnet's default limit (Pillow's error level), far above
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(handmade_png(side, side))
    with pytest.raises(BadFileError, match="decompression bomb") as caught:
        read_image(path)
    assert caught.value.path == path
    with pytest.raises(BadFileError, match="decompression bomb"):
        read_mask(path)


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_truncated_file_fails_naming_it(tmp_path, rng, name):
    full = tmp_path / f"full{Path(name).suffix}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFileError) as caught:
        read_image(path)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_missing_and_non_image_files_fail_naming_them(tmp_path):
    with pytest.raises(BadFileError, match="file not found"):
        read_image(tmp_path / "absent.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadFileError, match="not an image file") as caught:
        read_image(text)
    assert caught.value.path == text


# --- masks ---------------------------------------------------------------------------------


def test_mask_nonzero_is_defect_for_any_value(tmp_path):
    values = np.array([[0, 1, 2], [128, 255, 0]], dtype=np.uint8)
    mask = read_mask(_save(tmp_path / "m.png", Image.fromarray(values)))
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, values != 0)


def test_16_bit_mask_small_labels_count_before_any_scaling(tmp_path):
    values = np.array([[0, 1, 65535]], dtype=np.uint16)
    mask = read_mask(_save(tmp_path / "m16.png", Image.fromarray(values)))
    np.testing.assert_array_equal(mask, [[False, True, True]])


def test_rgb_and_rgba_masks_use_any_channel_after_compositing(tmp_path):
    rgba = np.array([[[0, 0, 0, 255], [0, 9, 0, 255], [255, 255, 255, 0]]], np.uint8)
    mask = read_mask(_save(tmp_path / "m_rgba.png", Image.fromarray(rgba)))
    np.testing.assert_array_equal(mask, [[False, True, False]])
    mask = read_mask(_save(tmp_path / "m_rgb.png", Image.fromarray(rgba[:, :, :3].copy())))
    np.testing.assert_array_equal(mask, [[False, True, True]])


def _square_mask() -> np.ndarray:
    values = np.zeros((64, 64), np.uint8)
    values[13:43, 9:50] = 255  # edges off the 8 px JPEG blocks
    return values


def _far_from_edge(square: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels more than `margin` px (Chebyshev) from the square's edge, inside or outside it."""
    rows, cols = np.nonzero(square)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    near = np.zeros(square.shape, bool)
    near[max(top - margin, 0):bottom + margin, max(left - margin, 0):right + margin] = True
    near[top + margin:bottom - margin, left + margin:right - margin] = False
    return ~near


def test_jpeg_mask_compression_noise_is_not_defect(tmp_path):
    """Regression: every nonzero pixel counted, so JPEG ringing around a mask's edge grew the
    defect by about a third."""
    values = _square_mask()
    path = _save(tmp_path / "m.jpg", Image.fromarray(values), quality=90)
    assert (np.asarray(Image.open(path)) != 0).sum() > values.astype(bool).sum() + 50  # the noise is there
    np.testing.assert_array_equal(read_mask(path), values != 0)


@pytest.mark.parametrize(
    "name, params",
    [
        ("m.jpg", {"quality": 50}),
        ("m.webp", {"quality": 50}),  # a plain VP8 (lossy) chunk
        ("m_animated.webp", {"quality": 50, "save_all": True,  # VP8X, then VP8 inside ANMF frames
                             "append_images": [Image.fromarray(255 - _square_mask())]}),
    ],
)
def test_lossy_mask_noise_is_not_defect(tmp_path, name, params):
    """Regression: a lossy WebP mask counted every nonzero pixel, so its compression noise in the
    black background and around the edge became defect pixels."""
    values = _square_mask()
    path = _save(tmp_path / name, Image.fromarray(values), **params)
    stored = np.asarray(Image.open(path).convert("L"))
    assert (stored != 0).sum() > (values != 0).sum() + 50  # the noise is there
    mask = read_mask(path)
    far = _far_from_edge(values)
    np.testing.assert_array_equal(mask[far], values[far] != 0)
    assert abs(int(mask.sum()) - int((values != 0).sum())) < 30  # and few pixels off near the edge


@pytest.mark.parametrize("params", [{}, {"save_all": True, "append_images": [Image.new("L", (3, 2))]}])
def test_lossless_webp_mask_keeps_label_values(tmp_path, params):
    values = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.uint8)  # a 0/1 label mask
    path = _save(tmp_path / "m.webp", Image.fromarray(values), lossless=True, **params)
    np.testing.assert_array_equal(read_mask(path), values != 0)


def test_16_bit_colour_png_mask_small_labels_count(tmp_path):
    """Regression: Pillow keeps only the high byte of a 16-bit RGB(A) PNG, so labels below 256
    read as no defect in a lossless file."""
    import cv2

    values = np.zeros((2, 3, 3), np.uint16)
    values[0, 1, 2], values[1, 0, 0], values[1, 2, 1] = 1, 255, 65535
    path = tmp_path / "m16rgb.png"
    assert cv2.imwrite(str(path), values)
    np.testing.assert_array_equal(read_mask(path), [[False, True, False], [True, False, True]])
    alpha = np.full((2, 3, 1), 65535, np.uint16)
    alpha[1, 2] = 0  # transparent: composited on black, as for 8-bit masks
    assert cv2.imwrite(str(tmp_path / "m16rgba.png"), np.concatenate([values, alpha], axis=2))
    np.testing.assert_array_equal(read_mask(tmp_path / "m16rgba.png"), [[False, True, False], [True, False, False]])


def test_16_bit_grey_alpha_png_mask_small_labels_count(tmp_path):
    """Regression: only 16-bit RGB(A) PNGs were read at full depth, so a 0/255 or 0/1 mask in a
    16-bit grey + alpha PNG (colour type 4), reduced by Pillow to its high bytes, read as empty."""
    grey = np.array([[0, 1, 0], [255, 0, 65535]], np.uint16)
    alpha = np.full_like(grey, 65535)
    alpha[1, 2] = 0  # transparent: no defect whatever its grey value
    rows = np.dstack([grey, alpha]).astype(">u2")
    path = tmp_path / "m16la.png"
    path.write_bytes(handmade_png(3, 2, 16, 4, b"".join(b"\0" + row.tobytes() for row in rows)))
    np.testing.assert_array_equal(read_mask(path), [[False, True, False], [True, False, False]])


@pytest.mark.parametrize("orientation", [1, 3, 6])
def test_16_bit_colour_tiff_mask_small_labels_count(tmp_path, orientation):
    """Regression: Pillow keeps only the high bytes of a 16-bit RGB(A) TIFF, so 0/255 and 0/1
    masks saved that way read as empty. Compared with the same mask in an 8-bit TIFF, turned alike."""
    tifffile = pytest.importorskip("tifffile")

    rgba = np.zeros((3, 3, 4), np.uint16)
    rgba[0, 1, 2], rgba[1, 0, 0], rgba[2, 2, 1], rgba[2, 0, 0] = 1, 255, 65535, 1
    rgba[:, :, 3] = 65535
    rgba[2, 0, 3] = 0  # transparent: no defect
    exif = Image.Exif()
    exif[0x0112] = orientation
    for extra, marks in (((), 4), ((2,), 3), ((0,), 4)):  # no extra sample, alpha, an unspecified one
        deep = rgba[:, :, :3 + len(extra)]
        tifffile.imwrite(tmp_path / "m16.tif", deep, photometric="rgb", extrasamples=extra,
                         extratags=[(0x0112, "H", 1, orientation, True)])
        shown = deep if extra == (2,) else deep[:, :, :3]
        narrow = _save(tmp_path / "m8.tif", Image.fromarray((shown > 0).astype(np.uint8) * 255), exif=exif)
        expected = read_mask(narrow)
        assert expected.sum() == marks
        np.testing.assert_array_equal(read_mask(tmp_path / "m16.tif"), expected, err_msg=f"extra samples {extra}")

def test_16_bit_colour_png_mask_with_a_name_that_is_not_utf8(tmp_path):
    """Regression: OpenCV, which reads a 16-bit colour PNG at full depth, crashed the process
    (segmentation fault) on a file name in a legacy encoding."""
    import cv2

    from dataset_fixtures import legacy_encoded

    values = np.zeros((2, 3, 3), np.uint16)
    values[1, 2] = 65535
    path = legacy_encoded(tmp_path, b"caf\xe9_mask.png")
    path.write_bytes(cv2.imencode(".png", values)[1].tobytes())
    np.testing.assert_array_equal(read_mask(path), [[False, False, False], [False, False, True]])

def test_jpeg_compressed_tiff_mask_noise_is_not_defect(tmp_path):
    """Regression: a TIFF holding JPEG data counted its compression noise as defect pixels."""
    values = _square_mask()
    path = _save(tmp_path / "m.tif", Image.fromarray(values), compression="jpeg", quality=50)
    assert (np.asarray(Image.open(path)) != 0).sum() > (values != 0).sum() + 50  # the noise is there
    far = _far_from_edge(values)
    np.testing.assert_array_equal(read_mask(path)[far], values[far] != 0)


def test_broken_symbolic_link_fails_naming_it(tmp_path):
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "absent.png")
    with pytest.raises(BadFileError, match=r"gone.png: broken symbolic link"):
        read_image(link)


# --- resizing and samples ----------------------------------------------------------------


def test_resize_is_straight_and_keeps_types():
    image = np.full((20, 40, 3), 77, np.uint8)
    resized = resize_image(image, 16)
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8
    assert (resized == 77).all()
    mask = np.zeros((20, 40), bool)
    mask[:, 20:] = True
    resized_mask = resize_mask(mask, 16)
    assert resized_mask.shape == (16, 16) and resized_mask.dtype == np.bool_
    np.testing.assert_array_equal(resized_mask, np.repeat([[False] * 8 + [True] * 8], 16, axis=0))


def test_mask_upsampling_is_nearest_neighbour():
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(resize_mask(mask, 4), np.kron(mask, np.ones((2, 2), bool)))


# Image and mask share the pixel-centre geometry: output pixel i samples input coordinate
# (i + 0.5) * in / out - 0.5, so a defect lands on the same output pixels in both.
def _source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5


def test_mask_resize_follows_pixel_centres(rng):
    mask = rng.random((37, 53)) > 0.5
    rows = np.floor(_source_coordinates(37, 24) + 0.5).astype(int)
    cols = np.floor(_source_coordinates(53, 24) + 0.5).astype(int)
    np.testing.assert_array_equal(resize_mask(mask, 24), mask[np.ix_(rows, cols)])


def test_image_upsampling_is_bilinear_on_pixel_centres(rng):
    image = rng.integers(0, 256, size=(5, 7, 3)).astype(np.uint8)

    def weights(n_in: int, n_out: int) -> np.ndarray:
        x = np.clip(_source_coordinates(n_in, n_out), 0, n_in - 1)
        low = np.floor(x).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), low] += 1 - (x - low)
        matrix[np.arange(n_out), high] += x - low
        return matrix

    expected = np.einsum("ri,ijc,sj->rsc", weights(5, 12), image.astype(float), weights(7, 12))
    np.testing.assert_allclose(resize_image(image, 12), expected, atol=1.01)


def test_resize_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="uint8"):
        resize_image(np.zeros((4, 4), np.uint8), 8)
    with pytest.raises(ValueError, match="bool"):
        resize_mask(np.zeros((4, 4), np.uint8), 8)
    with pytest.raises(ValueError, match="positive"):
        resize_image(np.zeros((4, 4, 3), np.uint8), 0)


def _record(image: Path, mask: Path | None) -> Record:
    label = NORMAL if mask is None else ANOMALOUS
    return Record(image, mask, label, "good" if mask is None else "blob", "widget", "test")


def test_load_sample_reads_resizes_and_aligns(tmp_path):
    gray = np.zeros((30, 50), np.uint8)
    gray[10:20, 25:45] = 255
    image_path = _save(tmp_path / "i.jpg", Image.fromarray(gray), quality=95)
    mask_path = _save(tmp_path / "i_mask.png", Image.fromarray(gray))
    image, mask = load_sample(_record(image_path, mask_path), 20)
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    assert mask.shape == (20, 20) and mask.dtype == np.bool_
    assert mask.sum() > 0
    assert image[mask].min() > 150 and image[~mask].max() < 110


def test_load_sample_without_mask_is_all_false(tmp_path):
    image_path = _save(tmp_path / "n.png", Image.fromarray(GRAY))
    image, mask = load_sample(_record(image_path, None), 8)
    assert image.shape == (8, 8, 3) and mask.shape == (8, 8) and not mask.any()


def test_load_sample_size_mismatch_names_the_mask(tmp_path):
    image_path = _save(tmp_path / "a.png", Image.new("L", (10, 8)))
    mask_path = _save(tmp_path / "a_mask.png", Image.new("L", (8, 10)))
    with pytest.raises(BadFileError, match=r"mask is 8x10 but its image .* is 10x8") as caught:
        load_sample(_record(image_path, mask_path), 8)
    assert caught.value.path == mask_path


def test_alpha_compositing_rounds_to_the_nearest_level(tmp_path):
    """Module rules: each colour channel times alpha / 255, rounded (not truncated)."""
    rgba = np.array([[[200, 100, 1, 127], [255, 3, 254, 1]]], np.uint8)
    image = read_image(_save(tmp_path / "half.png", Image.fromarray(rgba)))
    # 200 * 127 / 255 = 99.6, 100 * 127 / 255 = 49.8, 1 * 127 / 255 = 0.498; 254 / 255 = 0.996
    np.testing.assert_array_equal(image[0], [[100, 50, 0], [1, 0, 1]])


def test_float_image_nan_is_black(tmp_path):
    values = np.array([[np.nan, 0.25, np.nan]], dtype=np.float32)
    image = read_image(_save(tmp_path / "nan.tif", Image.fromarray(values)))
    np.testing.assert_array_equal(image[0, :, 0], [0, 64, 0])


def test_lossy_mask_threshold_is_at_least_128(tmp_path):
    # Uniform 8x8 JPEG blocks decode exactly (DC only): 128 is a defect, 127 is not.
    values = np.zeros((8, 32), np.uint8)
    values[:, 0:8], values[:, 8:16], values[:, 16:24] = 128, 127, 255
    path = tmp_path / "m.jpg"
    Image.fromarray(values).save(path, quality=95)
    assert (np.asarray(Image.open(path)) == values).all()  # the file holds these values exactly
    np.testing.assert_array_equal(read_mask(path), values >= 128)


def test_lossy_colour_mask_marks_a_defect_where_any_channel_is_high(tmp_path):
    # A pure red annotation in a JPEG: R about 254, G and B about 0 (their mean is only 85).
    values = np.zeros((32, 32, 3), np.uint8)
    values[:, :16] = (255, 0, 0)
    path = tmp_path / "red.jpg"
    Image.fromarray(values).save(path, quality=90)
    mask = read_mask(path)
    assert mask[:, :14].all() and not mask[:, 18:].any()


def test_16_bit_png_every_value_scales_by_65535(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = tmp_path / "all16.png"
    Image.fromarray(values).save(path)
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5)  # no value lies exactly on .5
    np.testing.assert_array_equal(read_image(path)[:, :, 0], expected.astype(np.uint8))


def test_an_image_of_exactly_the_pixel_limit_is_read(tmp_path, monkeypatch):
    path = tmp_path / "4x5.png"
    Image.new("L", (4, 5)).save(path)
    monkeypatch.setenv("REALNET_MAX_IMAGE_PIXELS", "20")
    assert read_image(path).shape == (5, 4, 3)
    monkeypatch.setenv("REALNET_MAX_IMAGE_PIXELS", "19")
    with pytest.raises(BadFileError, match="decompression bomb"):
        read_image(path)


@pytest.mark.parametrize("value", ["²", "1²", "10⁶"])
def test_a_pixel_limit_int_cannot_read_is_a_one_line_error(monkeypatch, value):
    """Regression: str.isdigit takes characters int() refuses (superscripts), so such a
    REALNET_MAX_IMAGE_PIXELS ended in a ValueError traceback instead of realnet's one-line error."""
    from realnet.data.io import max_image_pixels
    from realnet.errors import RealnetError

    monkeypatch.setenv("REALNET_MAX_IMAGE_PIXELS", value)
    with pytest.raises(RealnetError, match="REALNET_MAX_IMAGE_PIXELS"):
        max_image_pixels()
