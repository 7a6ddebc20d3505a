"""Bad and unusual image files: each is read correctly or refused with one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leukodx.data.images import as_rgb_array, list_images, read_image
from leukodx.errors import DataNotFoundError, InvalidInputError


@pytest.fixture()
def cell(real_jpeg) -> Image.Image:
    return Image.open(real_jpeg).convert("RGB")


def test_real_jpeg_reads_as_rgb_uint8(real_jpeg):
    arr = read_image(real_jpeg)
    assert arr.dtype == np.uint8 and arr.shape == (224, 224, 3)


def test_truncated_jpeg_is_refused_naming_the_file(real_jpeg, tmp_path):
    data = real_jpeg.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="truncated.jpg: corrupt or truncated"):
        read_image(bad)


def test_text_file_renamed_jpg_is_refused(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image\n")
    with pytest.raises(InvalidInputError, match="notes.jpg: not a readable image"):
        read_image(bad)


def test_empty_file_is_refused(tmp_path):
    bad = tmp_path / "empty.png"
    bad.touch()
    with pytest.raises(InvalidInputError, match="empty.png: empty file"):
        read_image(bad)


def test_grayscale_becomes_three_equal_channels(cell, tmp_path):
    path = tmp_path / "gray.png"
    cell.convert("L").save(path)
    arr = read_image(path)
    assert arr.shape == (224, 224, 3)
    assert np.array_equal(arr[..., 0], arr[..., 2])


def test_rgba_transparency_composites_on_white(cell, tmp_path):
    rgba = cell.convert("RGBA")
    alpha = np.full((224, 224), 255, dtype=np.uint8)
    alpha[:10, :10] = 0
    rgba.putalpha(Image.fromarray(alpha))
    path = tmp_path / "rgba.png"
    rgba.save(path)
    arr = read_image(path)
    assert arr.shape == (224, 224, 3)
    assert (arr[:10, :10] == 255).all()
    assert np.array_equal(arr[50:60, 50:60], np.asarray(cell)[50:60, 50:60])


def test_16_bit_grayscale_is_scaled_not_clipped(cell, tmp_path):
    gray8 = np.asarray(cell.convert("L")).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(gray8 * 257).save(path)  # full 16-bit range
    arr = read_image(path)
    assert abs(int(arr[..., 0].astype(int).mean()) - int(gray8.mean())) <= 1
    assert arr.max() > 200  # clipping at 255 of a 16-bit value would saturate everything


def test_cmyk_jpeg_converts_to_rgb(cell, tmp_path):
    path = tmp_path / "cmyk.jpg"
    cell.convert("CMYK").save(path)
    arr = read_image(path)
    assert arr.shape == (224, 224, 3)
    assert np.abs(arr.astype(int) - np.asarray(cell).astype(int)).mean() < 20


def test_one_pixel_image_is_refused(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(InvalidInputError, match=r"dot.png: image is 1x1 px"):
        read_image(path)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (30_000, 30_000)).save(path)  # a few hundred kB on disk, 900 Mpx decoded
    assert path.stat().st_size < 5_000_000
    with pytest.raises(InvalidInputError, match=r"bomb.png: image is .*Mpx limit \(possible decompression bomb\)"):
        read_image(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere.jpg: file not found"):
        read_image(tmp_path / "nowhere.jpg")


def test_in_memory_arrays_are_validated():
    assert as_rgb_array(np.zeros((20, 20), dtype=np.uint8)).shape == (20, 20, 3)
    assert as_rgb_array(np.ones((20, 20, 3), dtype=np.float32)).max() == 255
    with pytest.raises(InvalidInputError, match="expected an image of shape"):
        as_rgb_array(np.zeros((2, 20, 20, 3), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="NaN"):
        as_rgb_array(np.full((20, 20, 3), np.nan, dtype=np.float32))


def test_list_images_walks_folders_and_skips_hidden_and_non_images(tmp_path, real_jpeg):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(real_jpeg.read_bytes())
    (tmp_path / "a" / ".DS_Store").write_text("junk")
    (tmp_path / "a" / "readme.txt").write_text("junk")
    assert [p.name for p in list_images([tmp_path])] == ["x.jpg"]
    with pytest.raises(DataNotFoundError, match="no such file or folder"):
        list_images([tmp_path / "missing"])


def test_walked_paths_read_as_pathlib_writes_them_and_the_walk_keeps_nothing(tmp_path, monkeypatch):
    """The walk joins names with os.path (pathlib interns every name, for good), in the same text as
    pathlib, "." and nested folders included; what it lists is released with the list."""
    import gc
    import weakref

    from leukodx.data.images import list_image_paths

    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for p in ("a.jpg", "sub/b.png", "sub/deeper/c.jpg"):
        (tmp_path / p).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    for root in (".", "sub", "./sub", "sub/", str(tmp_path)):
        want = [str(p) for p in list_images([root])]
        assert list(list_image_paths([root])) == want and want
    assert list(list_image_paths(["."])) == ["a.jpg", "sub/b.png", "sub/deeper/c.jpg"]
    listed = list_image_paths(["."])  # the walk's own list, taken over
    gone = weakref.ref(listed)
    gc.disable()  # released by reference counting, not by a later garbage collection of a cycle
    try:
        del listed
        assert gone() is None
    finally:
        gc.enable()


def test_image_over_the_pixel_limit_is_refused_before_decoding(cell, tmp_path):
    path = tmp_path / "big.png"
    cell.save(path)
    with pytest.raises(InvalidInputError, match=r"big.png: image is 224x224 px .*over the 0 Mpx limit"):
        read_image(path, max_pixels=10_000)


def test_exif_orientation_is_applied(real_jpeg, tmp_path):
    """A camera stores a portrait field as landscape plus an EXIF tag: it is analysed as it is shown."""
    from PIL import Image

    with Image.open(real_jpeg) as im:
        rgb = np.asarray(im.convert("RGB"))
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        im.convert("RGB").save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "rotated.jpg")
    assert shown.shape == (rgb.shape[1], rgb.shape[0], 3)


def test_an_unreadable_file_is_called_unreadable_not_corrupt(real_jpeg, monkeypatch):
    """A chmod-000 image was reported as "corrupt or truncated". The suite runs as root, where the
    permission bits do not bind, so the operating system's refusal is injected where the file is opened."""
    import leukodx.data.images as images

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.Image, "open", refuse)
    with pytest.raises(InvalidInputError, match="permission denied"):
        read_image(real_jpeg)


def test_reduced_read_keeps_the_exif_orientation_and_the_aspect(real_jpeg, tmp_path):
    rgb = read_image(real_jpeg)
    wide = Image.fromarray(rgb).resize((1200, 600))
    exif = wide.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    full = read_image(tmp_path / "rotated.jpg")
    small = read_image(tmp_path / "rotated.jpg", max_side=200)
    assert full.shape == (1200, 600, 3)
    assert small.shape[0] == 2 * small.shape[1] and 200 <= small.shape[0] < 400


def test_damaged_tiff_metadata_is_read_without_a_warning(real_jpeg, tmp_path, recwarn):
    import io

    buf = io.BytesIO()
    Image.fromarray(read_image(real_jpeg)).save(buf, format="TIFF")
    raw = bytearray(buf.getvalue())
    entry = 10 + 12 * 3  # the 4th tag of the first directory (compression): its count made to run past the end
    raw[entry + 4:entry + 8] = (100_000).to_bytes(4, "little")
    (tmp_path / "damaged.tif").write_bytes(bytes(raw))
    assert read_image(tmp_path / "damaged.tif").shape == read_image(real_jpeg).shape
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]  # PIL warned "Tag data larger than file"
