"""Train transforms against references written here from timm 0.4.x's rules: the random draws in
timm's order (Python ``random`` / numpy), PIL's sampling as numpy index arithmetic, and statistics."""
import math
import pickle
import random

import numpy as np
import paddle
import pytest
from PIL import Image, ImageEnhance

import ppim
from ppim.auto_augment import (RAND_INCREASING_TRANSFORMS, AugmentOp, OpParams, RandAugment, move_map,
                               rand_augment_transform)
from ppim.data import ImageFolderDataset
from ppim.transforms import RandomErasing, RandomResizedCrop, TrainTransforms, create_transforms

GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}


def photo(width=96, height=80, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)


def plain(**overrides):
    """Train transforms with only the steps a test names switched on, mean 0 / std 1 (pixels / 255)."""
    kwargs = dict(auto_augment=None, color_jitter=None, hflip=0.0, re_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    kwargs.update(overrides)
    return create_transforms("lvvit_s", is_training=True, **kwargs)


def reference_crop_box(rng, width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """timm's RandomResizedCropAndInterpolation.get_params, from its rules, on a random.Random."""
    area = width * height
    for _ in range(10):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if w <= width and h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def pil_sample(array, x_in, y_in, fill=0):
    """Nearest-neighbour sampling as PIL does it: input pixel floor(coordinate), ``fill`` outside."""
    height, width = array.shape[:2]
    xi, yi = np.floor(x_in).astype(int), np.floor(y_in).astype(int)
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    out = np.full(array.shape, fill, dtype=array.dtype)
    out[inside] = array[yi[inside], xi[inside]]
    return out


def output_grid(height, width):
    ys, xs = np.mgrid[0:height, 0:width]
    return xs + 0.5, ys + 0.5  # PIL maps pixel centres


# ------------------------------------------------------------------------------------------------
# the contract: paddle.Tensor by call, numpy by to_numpy, seeded, picklable
# ------------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_output_contract_and_ppim1_usage():
    image = photo(300, 260)
    transforms = create_transforms("lvvit_s", is_training=True)
    seed_all(0)
    tensor = transforms(image)
    assert isinstance(tensor, paddle.Tensor) and tensor.dtype == paddle.float32 and tensor.shape == [3, 224, 224]
    seed_all(0)
    array = transforms.to_numpy(image)
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    np.testing.assert_array_equal(tensor.numpy(), array)
    model = ppim.lvvit_s(depth=1, embed_dim=48, num_heads=2)
    model.eval()
    with paddle.no_grad():
        logits = model(create_transforms("lvvit_s")(image).unsqueeze(0))  # ppim 1.x
    assert logits.shape == [1, 1000] and np.isfinite(logits.numpy()).all()


def test_seeded_runs_repeat_and_differ_across_seeds():
    image = photo(200, 150)
    transforms = create_transforms("lvvit_s", is_training=True, img_size=64)
    runs = {}
    for seed in (1, 2, 1):
        seed_all(seed)
        runs.setdefault(seed, []).append(transforms.to_numpy(image))
    np.testing.assert_array_equal(*runs[1])
    assert not np.array_equal(runs[1][0], runs[2][0])
    clone = pickle.loads(pickle.dumps(transforms))  # data-loader workers get a pickled copy
    seed_all(1)
    np.testing.assert_array_equal(clone.to_numpy(image), runs[1][0])


def test_dataset_and_workers_use_the_numpy_path(tmp_path):
    for index in range(4):
        (tmp_path / f"c{index % 2}").mkdir(exist_ok=True)
        photo(60 + index, 50, seed=index).save(tmp_path / f"c{index % 2}" / f"{index}.png")
    dataset = ImageFolderDataset(tmp_path, create_transforms("lvvit_s", is_training=True, img_size=32))
    array, label = dataset[0]
    assert isinstance(array, np.ndarray) and array.shape == (3, 32, 32) and label == 0
    batches = list(ppim.data.EvalLoader(dataset, batch_size=2, num_workers=2))
    assert [b.images.shape for b in batches] == [(2, 3, 32, 32)] * 2


# ------------------------------------------------------------------------------------------------
# RandomResizedCrop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(96, 80), (40, 300), (500, 60)])
def test_crop_draws_follow_timm_and_pixels_follow_pil(size):
    image = photo(*size)
    transforms = plain(img_size=48, interpolation="bilinear")
    for seed in range(20):
        rng = random.Random(seed)
        top, left, h, w = reference_crop_box(rng, *size)
        seed_all(seed)
        params = transforms.crop.sample(image.size)
        assert (params.top, params.left, params.height, params.width) == (top, left, h, w)
        assert params.coords == (top / size[1], left / size[0], h / size[1], w / size[0])
        seed_all(seed)
        out = transforms.to_numpy(image)
        expected = np.asarray(image.crop((left, top, left + w, top + h)).resize((48, 48), Image.BILINEAR))
        np.testing.assert_allclose(out, expected.transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-6)


def test_crop_falls_back_to_the_ratio_clamped_centre():
    crop = RandomResizedCrop(32, scale=(0.95, 1.0), ratio=(3 / 4, 4 / 3))
    random.seed(0)
    params = crop.sample((400, 50))  # too wide for any 3/4-4/3 crop of 95 % of the area
    assert (params.top, params.left, params.height, params.width) == (0, (400 - 67) // 2, 50, 67)


def test_random_interpolation_picks_bilinear_and_bicubic_after_the_box():
    crop = RandomResizedCrop(32)
    picked = set()
    for seed in range(40):
        rng = random.Random(seed)
        reference_crop_box(rng, 96, 80)
        expected = rng.choice((Image.BILINEAR, Image.BICUBIC))
        random.seed(seed)
        resample = crop.sample((96, 80)).resample
        assert resample == expected
        picked.add(resample)
    assert picked == {Image.BILINEAR, Image.BICUBIC}


# ------------------------------------------------------------------------------------------------
# flips and overrides
# ------------------------------------------------------------------------------------------------


def test_overrides_reach_every_step():
    image = photo(80, 80)
    # scale and ratio 1: the whole image; hflip 1: always flipped; bicubic: the fixed filter
    transforms = plain(img_size=40, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, interpolation="bicubic")
    expected = np.asarray(image.resize((40, 40), Image.BICUBIC))[:, ::-1].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(transforms.to_numpy(image), expected, rtol=0, atol=1e-6)
    vertical = plain(img_size=40, scale=(1.0, 1.0), ratio=(1.0, 1.0), vflip=1.0, interpolation="bicubic")
    np.testing.assert_allclose(vertical.to_numpy(image), expected[:, ::-1, ::-1], rtol=0, atol=1e-6)
    normalized = plain(img_size=40, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, interpolation="bicubic",
                       mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    mean, std = np.array([0.5, 0.4, 0.3]).reshape(3, 1, 1), np.array([0.2, 0.25, 0.5]).reshape(3, 1, 1)
    np.testing.assert_allclose(normalized.to_numpy(image), (expected - mean) / std, rtol=0, atol=1e-5)

    default = create_transforms("lvvit_s", is_training=True)
    assert default.crop.scale == (0.08, 1.0) and default.crop.filters == (Image.BILINEAR, Image.BICUBIC)
    assert [flip.p for flip in default.flips] == [0.5]
    assert default.erasing.probability == 0.25 and default.erasing.mode == "pixel"
    assert [op.name for op in default.augment.ops] == RAND_INCREASING_TRANSFORMS
    op = default.augment.ops[0]
    assert (op.magnitude, op.magnitude_std, op.prob, default.augment.num_layers) == (9, 0.5, 0.5, 2)
    assert op.fill == (124, 116, 104) and op.hparams["translate_const"] == 100  # mean pixel, 0.45 * 224
    fixed = create_transforms("lvvit_s", is_training=True, interpolation="bilinear", auto_augment="rand-m5-n3",
                              re_prob=0.5, re_mode="rand", re_count=3, img_size=96)
    assert fixed.augment.ops[0].resample == Image.BILINEAR and fixed.augment.num_layers == 3
    assert (fixed.erasing.probability, fixed.erasing.mode, fixed.erasing.max_count) == (0.5, "rand", 3)
    assert fixed.augment.ops[0].hparams["translate_const"] == 43
    assert create_transforms("lvvit_s", is_training=True, auto_augment=None, color_jitter=None).augment is None
    with pytest.raises(TypeError, match="crop_pct"):
        create_transforms("lvvit_s", is_training=True, crop_pct=0.9)
    with pytest.raises(ValueError, match="rand"):
        create_transforms("lvvit_s", is_training=True, auto_augment="v0")


def test_colour_jitter_without_auto_augment_follows_torchvision():
    image = photo(40, 30)
    transforms = create_transforms("lvvit_s", is_training=True, auto_augment=None, color_jitter=(0.4, 0.2, 0.0))
    jitter = transforms.augment
    assert repr(jitter) == "ColorJitter(brightness=0.4, contrast=0.2, saturation=0.0)"
    enhancers = {0: ImageEnhance.Brightness, 1: ImageEnhance.Contrast}
    for seed in range(10):
        rng = random.Random(seed)
        order = rng.sample(range(3), 3)  # torchvision: the order, then the factors b, c, s
        factors = {0: rng.uniform(0.6, 1.4), 1: rng.uniform(0.8, 1.2)}  # saturation 0: not drawn
        expected = image
        for index in order:
            if index in factors:
                expected = enhancers[index](expected).enhance(factors[index])
        random.seed(seed)
        np.testing.assert_array_equal(np.asarray(jitter(image)), np.asarray(expected))
    score_map = np.ones((2, 5, 5), dtype=np.float32)
    assert jitter.apply_map(score_map, jitter.sample(), Image.NEAREST, 0.0) is score_map
    assert create_transforms("lvvit_s", is_training=True).augment.__class__.__name__ == "RandAugment"
    with pytest.raises(ValueError, match="color_jitter"):
        create_transforms("lvvit_s", is_training=True, auto_augment=None, color_jitter=(0.1, 0.2))


def test_flip_moves_a_label_map_like_the_image():
    transforms = plain(hflip=1.0)
    flip = transforms.flips[0]
    score_map = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(flip.apply_map(score_map, True), score_map[:, :, ::-1])
    np.testing.assert_array_equal(flip.apply_map(score_map, False), score_map)


# ------------------------------------------------------------------------------------------------
# RandAugment
# ------------------------------------------------------------------------------------------------


def reference_rand_augment_draws(seed, names, size, magnitude=9, std=0.5, num_layers=2):
    """timm's RandAugment draws, from its rules: numpy picks the ops; per op random() > 0.5 skips,
    gauss noise, clip to [0, 10], the level's sign, then bilinear/bicubic for geometric ops."""
    np.random.seed(seed)
    rng = random.Random(seed)
    drawn = []
    for index in np.random.choice(len(names), num_layers, replace=True):
        name = names[index]
        if rng.random() > 0.5:
            continue
        level = min(10.0, max(0.0, rng.gauss(magnitude, std)))
        sign = lambda v: -v if rng.random() > 0.5 else v  # noqa: E731
        rules = {  # level -> arguments, evaluated only for the drawn op (the sign is a draw)
            "AutoContrast": lambda: (), "Equalize": lambda: (), "Invert": lambda: (),
            "Rotate": lambda: (sign(level / 10 * 30),), "PosterizeIncreasing": lambda: (4 - int(level / 10 * 4),),
            "SolarizeIncreasing": lambda: (256 - int(level / 10 * 256),),
            "SolarizeAdd": lambda: (int(level / 10 * 110),),
            "ShearX": lambda: (sign(level / 10 * 0.3),), "ShearY": lambda: (sign(level / 10 * 0.3),),
            "TranslateXRel": lambda: (sign(level / 10 * 0.45),), "TranslateYRel": lambda: (sign(level / 10 * 0.45),),
        }
        # the *Increasing enhancements
        args = rules.get(name, lambda: (1.0 + sign(level / 10 * 0.9),))()
        resample = rng.choice((Image.BILINEAR, Image.BICUBIC)) if name in GEOMETRIC else None
        drawn.append(OpParams(name, args, resample, size))
    return drawn


def test_rand_augment_draws_follow_timm():
    augment = rand_augment_transform("rand-m9-mstd0.5-inc1", {"translate_const": 100, "img_mean": (124, 116, 104)})
    seen = set()
    for seed in range(60):
        expected = reference_rand_augment_draws(seed, RAND_INCREASING_TRANSFORMS, (96, 80))
        seed_all(seed)
        assert augment.sample((96, 80)) == expected
        seen.update(p.name for p in expected)
    assert len(seen) >= 12  # the draws really cover the op list


def test_rand_augment_config_strings():
    augment = rand_augment_transform("rand-m7-n3-mstd0.25", {"translate_const": 10})
    assert augment.num_layers == 3 and augment.ops[0].magnitude == 7 and augment.ops[0].magnitude_std == 0.25
    assert [op.name for op in augment.ops][4] == "Posterize"  # not 'inc': the default list
    weighted = rand_augment_transform("rand-w0", {"translate_const": 10})
    assert weighted.choice_weights is not None and abs(weighted.choice_weights.sum() - 1) < 1e-9
    assert weighted.choice_weights[[op.name for op in weighted.ops].index("Invert")] == 0
    for bad in ("rand-mx", "rand-q3", "rand-w2"):
        with pytest.raises(ValueError):
            rand_augment_transform(bad, {})


def op(name, fill=(0, 0, 0)):
    return AugmentOp(name, prob=1.0, magnitude=9, hparams={"translate_const": 20, "img_mean": fill})


@pytest.mark.parametrize("name,arg", [("ShearX", 0.27), ("ShearX", -0.2), ("ShearY", 0.21), ("TranslateXRel", 0.3),
                                      ("TranslateYRel", -0.4), ("TranslateX", 17.0), ("TranslateY", -9.0)])
def test_geometric_ops_sample_like_pil_by_hand(name, arg):
    image = photo(50, 40)
    array = np.asarray(image)
    out = np.asarray(op(name, fill=(7, 8, 9)).apply(image, OpParams(name, (arg,), Image.NEAREST, image.size)))
    x, y = output_grid(40, 50)
    shift = {"TranslateXRel": arg * 50, "TranslateYRel": arg * 40}.get(name, arg)
    x_in, y_in = {
        "ShearX": (x + arg * y, y), "ShearY": (x, y + arg * x),
        "TranslateXRel": (x + shift, y), "TranslateX": (x + shift, y),
        "TranslateYRel": (x, y + shift), "TranslateY": (x, y + shift),
    }[name]
    expected = pil_sample(array, x_in, y_in)
    outside = (np.floor(x_in) < 0) | (np.floor(x_in) >= 50) | (np.floor(y_in) < 0) | (np.floor(y_in) >= 40)
    expected[outside] = (7, 8, 9)  # RandAugment fills with the mean pixel
    np.testing.assert_array_equal(out, expected)


def test_rotate_like_pil_by_hand():
    square = photo(40, 40)
    rotate = op("Rotate")
    quarter_turn = OpParams("Rotate", (90.0,), Image.NEAREST, (40, 40))
    np.testing.assert_array_equal(np.asarray(rotate.apply(square, quarter_turn)), np.rot90(np.asarray(square)))
    image = photo(50, 40)
    degrees = 23.0
    out = np.asarray(rotate.apply(image, OpParams("Rotate", (degrees,), Image.NEAREST, image.size)))
    x, y = output_grid(40, 50)
    theta = math.radians(degrees)  # counter-clockwise on screen: output -> input turns clockwise
    dx, dy = x - 25, y - 20
    expected = pil_sample(np.asarray(image), math.cos(theta) * dx - math.sin(theta) * dy + 25,
                          math.sin(theta) * dx + math.cos(theta) * dy + 20)
    mismatched = (out != expected).any(axis=-1).mean()
    assert mismatched < 0.01  # only pixels whose source lies on a pixel border may round the other way


def test_colour_ops_by_hand():
    image = photo(30, 20)
    array = np.asarray(image).astype(int)

    def run(name, *args):
        return np.asarray(op(name).apply(image, OpParams(name, args, None, image.size))).astype(int)

    np.testing.assert_array_equal(run("Invert"), 255 - array)
    np.testing.assert_array_equal(run("SolarizeIncreasing", 100), np.where(array >= 100, 255 - array, array))
    np.testing.assert_array_equal(run("SolarizeAdd", 40), np.where(array < 128, np.minimum(array + 40, 255), array))
    np.testing.assert_array_equal(run("PosterizeIncreasing", 3), array & 0b11100000)
    np.testing.assert_array_equal(run("PosterizeIncreasing", 8), array)
    np.testing.assert_array_equal(run("BrightnessIncreasing", 1.4),
                                  np.asarray(ImageEnhance.Brightness(image).enhance(1.4)))
    np.testing.assert_array_equal(run("ColorIncreasing", 0.3), np.asarray(ImageEnhance.Color(image).enhance(0.3)))
    np.testing.assert_array_equal(run("ContrastIncreasing", 1.6),
                                  np.asarray(ImageEnhance.Contrast(image).enhance(1.6)))
    np.testing.assert_array_equal(run("SharpnessIncreasing", 0.5),
                                  np.asarray(ImageEnhance.Sharpness(image).enhance(0.5)))
    low, high = array.min(axis=(0, 1)), array.max(axis=(0, 1))
    stretched = run("AutoContrast")
    assert (stretched.min(axis=(0, 1)) == 0).all() and (stretched.max(axis=(0, 1)) == 255).all()
    assert (low > 0).any() or (high < 255).any() or np.array_equal(stretched, array)


@pytest.mark.parametrize("name,arg", [("Rotate", 17.0), ("ShearX", -0.25), ("ShearY", 0.3), ("TranslateXRel", 0.2),
                                      ("TranslateYRel", -0.3), ("TranslateX", 12.0), ("Invert", None)])
def test_apply_map_moves_a_map_with_the_image(name, arg):
    image = photo(48, 48)
    params = OpParams(name, () if arg is None else (arg,), Image.NEAREST, image.size)
    moved_image = np.asarray(op(name).apply(image, params)).transpose(2, 0, 1).astype(np.float32)
    score_map = np.asarray(image).transpose(2, 0, 1).astype(np.float32)  # the map is the image itself
    moved = RandAugment.apply_map(score_map, [params])
    if name == "Invert":  # colour ops leave label maps alone
        np.testing.assert_array_equal(moved, score_map)
    else:
        np.testing.assert_array_equal(moved, moved_image)
    # at a quarter of the resolution the same geometry holds: a translation by 12 px moves the map 3
    if name == "TranslateX":
        small = np.arange(12 * 12, dtype=np.float32).reshape(1, 12, 12)
        np.testing.assert_array_equal(move_map(small, params)[0, :, :9], small[0, :, 3:])


# ------------------------------------------------------------------------------------------------
# RandomErasing
# ------------------------------------------------------------------------------------------------


def test_random_erasing_area_aspect_and_probability():
    erasing = RandomErasing(probability=1.0, mode="const")
    random.seed(0)
    height, width = 60, 80
    for _ in range(300):
        boxes = erasing.sample(height, width)
        assert len(boxes) == 1
        top, left, h, w = boxes[0]
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h < height and w < width
        # area in [0.02, 1/3] of the image and aspect h/w in [0.3, 1/0.3], up to rounding of the sides
        assert 0.02 * height * width * 0.8 <= h * w <= height * width / 3 * 1.2
        assert 0.3 * 0.7 <= h / w <= 1 / 0.3 * 1.4
    sometimes = RandomErasing(probability=0.25)
    hits = sum(bool(sometimes.sample(height, width)) for _ in range(4000))
    assert abs(hits / 4000 - 0.25) < 0.03


def test_random_erasing_pixel_mode_fills_standard_normal_noise_in_place():
    erasing = RandomErasing(probability=1.0, mode="pixel", min_area=0.3, max_area=0.3)
    seed_all(3)
    boxes = erasing.sample(64, 64)
    seed_all(3)
    array = np.full((3, 64, 64), 7.0, dtype=np.float32)
    assert erasing(array) is array
    top, left, h, w = boxes[0]
    inside = array[:, top:top + h, left:left + w]
    assert not (inside == 7.0).any() and abs(inside.mean()) < 0.1 and abs(inside.std() - 1) < 0.1
    rest = array.copy()
    rest[:, top:top + h, left:left + w] = 7.0
    assert (rest == 7.0).all()
    const = RandomErasing(probability=1.0, mode="const")(np.ones((2, 3, 16, 16), dtype=np.float32))
    assert set(np.unique(const)) == {0.0, 1.0} and all((image == 0).any() for image in const)


def test_erasing_runs_after_normalize():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    transforms = plain(img_size=64, re_prob=1.0, re_mode="const", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    random.seed(0)
    out = transforms.to_numpy(image)
    assert set(np.unique(out)) == {0.0, 1.0}  # erased to 0 in normalized space, the rest (1 - 0.5) / 0.5
    assert isinstance(transforms, TrainTransforms)
