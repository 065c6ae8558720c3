"""Eval transforms against two independent references: paddle.vision.transforms (ppim 1.x's
pipeline) and plain PIL arithmetic written here."""
import numpy as np
import paddle
import pytest
from PIL import Image

import ppim
from ppim.transforms import create_transforms

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# (resize, crop) per model, as ppim 1.x's transforms
EXPECTED = {
    "lvvit_t": (248, 224), "lvvit_s": (248, 224), "lvvit_m": (248, 224), "lvvit_s_384": (384, 384),
    "lvvit_m_384": (384, 384), "lvvit_m_448": (448, 448), "lvvit_l_448": (448, 448), "lvvit_l_512": (512, 512),
}


def photo(width, height, mode="RGB", seed=0):
    """A smooth random image (a noise field upsampled) so resampling filters differ visibly."""
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 8 + 1, width // 8 + 1, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    noise = rng.integers(-20, 20, (height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(image, dtype=int) + noise, 0, 255).astype(np.uint8))
    return image.convert(mode)


def by_hand(image, resize, crop):
    """Shorter side to `resize` (longer side truncated), bicubic; centred crop; /255; normalize."""
    image = image.convert("RGB")
    w, h = image.size
    new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - crop) / 2)), int(round((new_h - crop) / 2))
    array = np.asarray(image.crop((left, top, left + crop, top + crop))).astype(np.float32) / 255
    return ((array - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cfg_sizes_follow_spec(name):
    cfg = ppim.get_model_cfg(name)
    assert (cfg["resize"], cfg["crop"]) == EXPECTED[name]
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, EXPECTED[name][1], EXPECTED[name][1])


@pytest.mark.parametrize("size,mode", [((500, 375), "RGB"), ((333, 517), "L"), ((640, 481), "RGBA"),
                                       ((300, 300), "P"), ((451, 299), "CMYK")])
@pytest.mark.parametrize("name", ["lvvit_s", "lvvit_s_384", "lvvit_m_448", "lvvit_l_512"])
def test_matches_pil_by_hand(name, size, mode):
    image = photo(*size, mode=mode)
    resize, crop = EXPECTED[name]
    out = create_transforms(name).to_numpy(image)
    assert isinstance(out, np.ndarray) and out.shape == (3, crop, crop) and out.dtype == np.float32
    np.testing.assert_allclose(out, by_hand(image, resize, crop), rtol=0, atol=1e-5)


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["lvvit_s", "lvvit_m_384"])
def test_matches_the_seed_paddle_vision_pipeline(name):
    from paddle.vision import transforms as T

    resize, crop = EXPECTED[name]
    seed = T.Compose([T.Resize(resize, interpolation="bicubic"), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(MEAN.tolist(), STD.tolist())])
    for seed_number, size in enumerate([(500, 375), (375, 500), (777, 600)]):
        image = photo(*size, seed=seed_number)
        out = create_transforms(name)(image)  # the paddle.Tensor ppim 1.x code feeds to the model
        assert isinstance(out, paddle.Tensor) and out.dtype == paddle.float32
        np.testing.assert_allclose(out.numpy(), seed(image).numpy(), rtol=0, atol=1e-5)


def test_return_transforms_and_img_size_override():
    model, transforms = ppim.lvvit_s(return_transforms=True, depth=1)
    assert (transforms.resize, transforms.crop) == (248, 224)
    _, transforms = ppim.lvvit_s(return_transforms=True, depth=1, img_size=288)
    # the crop follows the model's input size and the resize keeps the 224/248 crop ratio
    assert (transforms.crop, transforms.resize) == (288, 318)


def test_accepts_arrays_and_paths(tmp_path):
    image = photo(320, 240)
    path = tmp_path / "x.jpg"
    image.save(path)
    transforms = create_transforms("lvvit_s").to_numpy
    np.testing.assert_array_equal(transforms(np.asarray(image)), transforms(image))
    with Image.open(path) as reloaded:
        np.testing.assert_array_equal(transforms(str(path)), transforms(reloaded.convert("RGB")))


def test_eval_overrides_and_model_source():
    model = ppim.lvvit_s(depth=1, embed_dim=48, num_heads=2)
    assert repr(create_transforms(model)) == repr(create_transforms("lvvit_s"))
    t = create_transforms("lvvit_s", img_size=160)
    assert (t.crop, t.resize) == (160, 160 * 248 // 224)
    t = create_transforms("lvvit_s", crop_pct=0.875, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert (t.crop, t.resize, t.interpolation) == (224, 256, "bilinear")
    image = photo(300, 260)
    by_pil = image.resize((295, 256), Image.BILINEAR).crop((36, 16, 260, 240))
    expected = (np.asarray(by_pil, dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(t.to_numpy(image), expected, rtol=0, atol=1e-5)
    assert create_transforms("lvvit_s", resize=300).resize == 300
    with pytest.raises(TypeError, match="re_prob"):
        create_transforms("lvvit_s", re_prob=0.5)  # a train-only override on eval transforms
