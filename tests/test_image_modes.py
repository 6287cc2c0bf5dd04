"""16-bit and other wide image modes: scaled to 8 bits (never clipped) or refused, the same way wherever an image is
opened (training and evaluation loading, the pre-run check, encode() from a path or a PIL image)."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.data.images import check_image_file, load_image
from modeling_vlm2vec.image_policy_vlm2vec import to_rgb
from modeling_vlm2vec.loading import load_vlm2vec

# every 16-bit tone class: black, values that clip to white in Pillow's convert("RGB"), halves, full scale
TONES = np.array([[0, 1, 128, 129, 255, 256, 385, 386, 32767, 32768, 65279, 65280, 65535] * 3], dtype=np.uint16)


def _expected_rgb(values: np.ndarray) -> np.ndarray:
    """The 8-bit RGB reference: v / 257 rounded half up, in integers, on all three channels."""
    eight = ((values.astype(np.int64) + 128) // 257).astype(np.uint8)
    return np.repeat(eight[..., None], 3, axis=-1)


def _sixteen_bit(mode: str) -> Image.Image:
    if mode == "I":
        return Image.fromarray(TONES.astype(np.int32))
    order = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, TONES.shape[::-1], TONES.astype(order).tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_sixteen_bit_greyscale_is_scaled_not_clipped(mode):
    image = _sixteen_bit(mode)
    assert image.mode == mode
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), _expected_rgb(TONES))
    clipped = np.asarray(image.convert("RGB"))[..., 0]
    assert (clipped == 255).mean() > 0.5  # what Pillow alone does: the mostly white image this avoids


def test_a_sixteen_bit_png_is_loaded_and_checked_as_scaled(tmp_path):
    path = tmp_path / "depth.png"
    _sixteen_bit("I;16").save(path)
    with Image.open(path) as reopened:
        assert reopened.mode in ("I;16", "I")  # PNG keeps 16 bits
    np.testing.assert_array_equal(np.asarray(load_image(path, dataset="d", row=0)), _expected_rgb(TONES))
    check_image_file(path, dataset="d", row=0)  # accepted by the pre-run check


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), "floating-point image"),
        (Image.fromarray(np.array([[-5, 0, 70000]], dtype=np.int32)), "values -5..70000 is not 16-bit"),
    ],
)
def test_images_with_no_8_bit_reading_are_refused_before_any_work(tmp_path, image, message):
    path = tmp_path / "wide.tiff"
    image.save(path)
    with pytest.raises(ValueError, match=message):
        to_rgb(image)
    with pytest.raises(DataError, match=message) as refused:
        check_image_file(path, dataset="scans", row=4)
    assert "dataset 'scans', row 4" in str(refused.value) and "wide.tiff" in str(refused.value)
    with pytest.raises(DataError, match=message):
        load_image(path, dataset="scans", row=4)


def test_encode_embeds_a_sixteen_bit_image_as_its_8_bit_scaling(tiny_backbone_dir, tmp_path):
    model = load_vlm2vec(tiny_backbone_dir("qwen2_vl"))
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(40, 48), dtype=np.uint16)
    sixteen, eight = tmp_path / "sixteen.png", tmp_path / "eight.png"
    Image.fromarray(values).save(sixteen)
    Image.fromarray(_expected_rgb(values)).save(eight)  # the reference, converted outside the package
    with Image.open(sixteen) as img:
        img.load()
        as_pil = img.copy()
    got = model.encode([{"image": str(sixteen)}, {"image": as_pil}, {"image": str(eight)}], batch_size=3)
    torch.testing.assert_close(got[0], got[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], got[2], rtol=0, atol=1e-5)
    clipped = model.encode([Image.fromarray(values).convert("RGB")])[0]
    assert not torch.allclose(clipped, got[2], atol=1e-3)  # the clipped image embeds differently
