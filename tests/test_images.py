"""Loading the source image: formats, modes, orientation, sizes and every error path.

All inputs are generated in tmp_path.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from compress1img import images
from compress1img.errors import InputError
from compress1img.images import BUNDLED_DIR, BUNDLED_IMAGES, DEFAULT_IMAGE, load_image, resolve_image


def gradient(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert image.mode == "RGB"
    assert image.size == size
    return np.asarray(image)


@pytest.mark.parametrize("ext,tolerance", [
    ("jpg", 12), ("png", 0), ("webp", 12), ("tif", 0), ("bmp", 0), ("gif", 40), ("ppm", 0),
])
def test_formats_load_as_rgb(tmp_path, ext, tolerance):
    source = gradient()
    path = tmp_path / f"image.{ext}"
    source.save(path)
    pixels = assert_rgb(load_image(path), source.size).astype(int)
    assert np.abs(pixels - np.asarray(source).astype(int)).mean() <= tolerance


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_exif_orientation_is_applied(tmp_path, ext):
    source = Image.new("RGB", (2, 1))
    source.putpixel((0, 0), (255, 0, 0))
    source.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / f"rotated.{ext}"
    source.save(path, exif=exif)
    pixels = assert_rgb(load_image(path), (1, 2)).astype(int)
    if ext == "png":  # lossless: the left (red) pixel ends up on top
        assert pixels[0, 0].tolist() == [255, 0, 0]
        assert pixels[1, 0].tolist() == [0, 0, 255]


def test_grayscale_8bit(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 100, 255]], np.uint8), "L").save(path)
    assert assert_rgb(load_image(path), (3, 1))[0].tolist() == [[0] * 3, [100] * 3, [255] * 3]


def test_bilevel(tmp_path):
    path = tmp_path / "bits.png"
    Image.fromarray(np.array([[0, 255]], np.uint8), "L").convert("1").save(path)
    assert assert_rgb(load_image(path), (2, 1))[0].tolist() == [[0] * 3, [255] * 3]


SIXTEEN_BIT = np.array([[0, 257, 32896, 65535, 1000]], np.uint16)
EIGHT_BIT = [0, 1, 128, 255, 4]  # round(v / 257)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(SIXTEEN_BIT).save(path)
    assert Image.open(path).mode.startswith("I")
    assert assert_rgb(load_image(path), (5, 1))[0, :, 0].tolist() == EIGHT_BIT


def test_16bit_big_endian_tiff(tmp_path):
    path = tmp_path / "deep_be.tif"
    Image.fromarray(SIXTEEN_BIT.astype(">u2")).save(path)
    assert Image.open(path).mode == "I;16B"
    assert assert_rgb(load_image(path), (5, 1))[0, :, 1].tolist() == EIGHT_BIT


def test_32bit_integer_mode_is_taken_as_16bit(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(SIXTEEN_BIT.astype(np.int32), "I").save(path)
    assert Image.open(path).mode == "I"
    assert assert_rgb(load_image(path), (5, 1))[0, :, 2].tolist() == EIGHT_BIT


@pytest.mark.parametrize("values,expected", [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 100.0, 300.0], [0, 100, 255])])
def test_float_mode(tmp_path, values, expected):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([values], np.float32), "F").save(path)
    assert Image.open(path).mode == "F"
    assert assert_rgb(load_image(path), (3, 1))[0, :, 0].tolist() == expected


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "alpha.png"
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = assert_rgb(load_image(path), (3, 1))[0].astype(int)
    assert pixels[0].tolist() == [255, 255, 255]
    assert pixels[1].tolist() == [255, 0, 0]
    assert np.all(np.abs(pixels[2] - 127) <= 1)


def test_gray_alpha(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA").save(path)
    assert assert_rgb(load_image(path), (2, 1))[0].tolist() == [[50] * 3, [255] * 3]


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([0, 255, 0] + [10, 20, 30] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    image.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    assert assert_rgb(load_image(path), (2, 1))[0].tolist() == [[255, 255, 255], [10, 20, 30]]


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    assert assert_rgb(load_image(path), (4, 3))[0, 0].tolist() == [255, 0, 0]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)
    pixels = assert_rgb(load_image(path), (8, 8)).astype(int)
    assert np.abs(pixels[0, 0] - [255, 0, 0]).max() <= 8


def test_animated_gif_uses_first_frame_and_warns(tmp_path, caplog):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 4), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with caplog.at_level(logging.WARNING, logger="compress1img"):
        pixels = assert_rgb(load_image(path), (6, 4))
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert "2 frames" in caplog.text and "anim.gif" in caplog.text


def test_one_pixel_image_loads(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    assert assert_rgb(load_image(path), (1, 1))[0, 0].tolist() == [1, 2, 3]


def test_small_image_is_upscaled_with_warning(tmp_path, caplog):
    path = tmp_path / "small.png"
    gradient(40, 30).save(path)
    with caplog.at_level(logging.WARNING, logger="compress1img"):
        image = load_image(path, min_side=90)
    assert image.size == (120, 90)
    assert "small.png is only 40x30; upscaled to 120x90" in caplog.text


def test_large_enough_image_is_left_alone(tmp_path, caplog):
    path = tmp_path / "ok.png"
    gradient(40, 30).save(path)
    with caplog.at_level(logging.WARNING, logger="compress1img"):
        assert load_image(path, min_side=30).size == (40, 30)
    assert caplog.text == ""


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_huge_image_is_downscaled_with_warning(tmp_path, caplog, monkeypatch, ext):
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    path = tmp_path / f"huge.{ext}"
    gradient(400, 300).save(path)
    with caplog.at_level(logging.WARNING, logger="compress1img"):
        image = load_image(path)
    assert image.mode == "RGB"
    assert image.width * image.height <= 10_000
    assert abs(image.width / image.height - 4 / 3) < 0.1
    assert "huge." in caplog.text and "downscaled" in caplog.text


def test_decompression_bomb_is_an_input_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    gradient(100, 100).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(InputError, match="bomb.png.*too large"):
        load_image(path)


def one_line_input_error(path_or_name, name: str) -> str:
    with pytest.raises(InputError) as info:
        load_image(path_or_name)
    message = str(info.value)
    assert name in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    message = one_line_input_error(tmp_path / "nope.jpg", "nope.jpg")
    assert "not found" in message and "china" in message


def test_directory(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert "directory" in one_line_input_error(tmp_path / "folder.jpg", "folder.jpg")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in one_line_input_error(tmp_path / "empty.jpg", "empty.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    assert "supported format" in one_line_input_error(tmp_path / "notes.jpg", "notes.jpg")


def test_unsupported_format_is_refused(tmp_path):
    path = tmp_path / "image.pcx"
    gradient().save(path)  # Pillow reads PCX, but we only open the formats we list
    one_line_input_error(path, "image.pcx")


@pytest.mark.parametrize("ext,keep", [("jpg", 0.6), ("png", 0.5)])
def test_truncated_file(tmp_path, ext, keep):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = tmp_path / f"whole.{ext}"
    Image.fromarray(noise).save(whole)
    data = whole.read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: int(len(data) * keep)])
    one_line_input_error(tmp_path / f"cut.{ext}", f"cut.{ext}")


def test_bundled_images_resolve_and_load():
    assert DEFAULT_IMAGE in BUNDLED_IMAGES
    licences = (BUNDLED_DIR / "LICENSES.md").read_text()
    for name, filename in BUNDLED_IMAGES.items():
        assert resolve_image(name) == BUNDLED_DIR / filename
        assert filename in licences
        image = load_image(name)
        assert image.mode == "RGB" and min(image.size) >= 256
    for unlicensed in ("city.jpg", "animals.jpg", "animals_small.png", "bridge.png"):
        assert not (BUNDLED_DIR / unlicensed).exists()


def test_existing_path_wins_over_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gradient().save(tmp_path / "china", format="PNG")
    assert resolve_image("china") == Path("china")
    assert load_image("china").size == (40, 30)
