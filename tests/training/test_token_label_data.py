"""Token-label data: label-aware augmentation, packing, the target builder and label-map mixup, the
repeated-augmentation order and the teacher's labels, checked against references written here."""

import numpy as np
import paddle
import pytest
import torch
from PIL import Image

import ppim
from model_utils import randomize, torch_state
from torch_reference import TorchLVViT
from ppim.auto_augment import AugmentOp, OpParams, RandAugment, move_map
from ppim.training.mixup import Mixup
from ppim.training.token_labels.dataset import TokenLabelTransforms, pack_label, unpack_labels
from ppim.training.token_labels.generate import teacher_labels
from ppim.training.token_labels.plugin import repeated_augmentation_order
from ppim.training.token_labels.step import TokenLabelMixup, TokenLabelTargets
from ppim.training.token_labels.targets import token_label_target
from ppim.transforms import normalized_chw, train_transforms


def official_affine(label, matrix):
    """random_augment_label.affine_label: scipy.ndimage.affine_transform(order=0) of each (H, W)
    plane, output (y, x) <- input (a y + b x + c, d y + e x + f) rounded, zero outside."""
    a, b, c, d, e, f = matrix
    out = np.zeros_like(label)
    height, width = label.shape[-2:]
    for y in range(height):
        for x in range(width):
            yi, xi = int(np.floor(a * y + b * x + c + 0.5)), int(np.floor(d * y + e * x + f + 0.5))
            if 0 <= yi < height and 0 <= xi < width:
                out[..., y, x] = label[..., yi, xi]
    return out


@pytest.mark.parametrize("name,arg,matrix", [
    ("TranslateXRel", 0.25, (1, 0, 0, 0, 1, 2.0)),
    ("TranslateXRel", -0.45, (1, 0, 0, 0, 1, -3.6)),
    ("TranslateYRel", 0.3, (1, 0, 2.4, 0, 1, 0)),
    ("ShearX", 0.3, (1, 0, 0, 0.3, 1, 0)),  # the official label op swaps the axes' roles on purpose
    ("ShearY", -0.2, (1, -0.2, 0, 0, 1, 0)),
])
def test_geometric_ops_move_label_maps_as_the_official_label_ops(name, arg, matrix):
    label = np.random.default_rng(0).uniform(1, 2, (2, 3, 8, 8)).astype(np.float32)
    moved = RandAugment.apply_map(label.reshape(6, 8, 8), [OpParams(name, (arg,), Image.BILINEAR, (64, 64))])
    np.testing.assert_array_equal(moved.reshape(label.shape), official_affine(label, matrix))


def test_rotation_moves_the_map_the_way_it_turns_the_image():
    cells = np.arange(1, 65, dtype=np.float32).reshape(1, 8, 8)
    image = Image.fromarray(cells[0].astype(np.uint8))
    for degrees in (90, -90, 180):
        turned = np.asarray(image.rotate(degrees, resample=Image.NEAREST)).astype(np.float32)
        np.testing.assert_array_equal(move_map(cells, OpParams("Rotate", (degrees,), 0, (8, 8)))[0], turned)


def position_image(width=40, height=30):
    """Each pixel's colour encodes its column (R) and row (G)."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x * 6, y * 8, np.full_like(x, 90)], -1).astype(np.uint8))


def test_flip_moves_the_map_and_the_crop_coordinates_travel_with_the_sample():
    base = train_transforms(16, scale=(0.3, 0.6), interpolation="bilinear", hflip=1.0, auto_augment=None,
                            color_jitter=None, re_prob=0.0)
    label = np.random.default_rng(1).uniform(0, 1, (2, 3, 5, 5)).astype(np.float16)
    image = position_image()
    chw, moved, coords = TokenLabelTransforms(base)(image, label)
    np.testing.assert_array_equal(moved, label[..., ::-1])
    top, left, h, w = coords
    assert 0 <= top < 1 and 0 <= left < 1 and top + h <= 1 + 1e-9 and left + w <= 1 + 1e-9 and h * w < 0.7
    box = np.round([left * 40, top * 30, (left + w) * 40, (top + h) * 30]).astype(int)
    flipped = image.transpose(Image.FLIP_LEFT_RIGHT)
    expected = normalized_chw(flipped.crop(tuple(box)).resize((16, 16), Image.BILINEAR), base.mean, base.std)
    np.testing.assert_array_equal(chw, expected)


def test_randaugment_moves_image_and_map_with_the_same_draw():
    op = AugmentOp("TranslateXRel", prob=1.0, magnitude=10, hparams={"img_mean": (0, 0, 0),
                                                                      "interpolation": Image.NEAREST})
    base = train_transforms(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation="bilinear", hflip=0.0,
                            auto_augment=None, color_jitter=None, re_prob=0.0)
    base.augment = RandAugment([op], num_layers=1)
    label = np.random.default_rng(2).uniform(1, 2, (2, 1, 8, 8)).astype(np.float32)
    _, moved, coords = TokenLabelTransforms(base)(position_image(8, 8), label)
    assert coords == (0.0, 0.0, 1.0, 1.0)
    shift = -3.6 if moved[0, 0, 0, 0] == 0 else 3.6  # the sign is drawn
    np.testing.assert_array_equal(moved, official_affine(label, (1, 0, 0, 0, 1, shift)))


def test_packing_round_trips_and_the_target_builder_unpacks_it():
    rng = np.random.default_rng(3)
    maps = np.stack([rng.normal(size=(2, 5, 6)), rng.integers(0, 7, (2, 5, 6))], 1).astype(np.float16)
    maps = maps.transpose(1, 0, 2, 3)[None].repeat(4, 0)[:, :, :, :, :6]  # (4, 2, 5, 6, 6)
    maps = np.ascontiguousarray(maps)
    coords = rng.uniform(0, 0.5, (4, 4))
    packed = np.stack([pack_label(i, coords[i], maps[i]) for i in range(4)])
    truth, got_coords, got_maps = unpack_labels(paddle.to_tensor(packed), maps.shape[1:])
    assert truth.numpy().tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(got_maps.numpy(), maps.astype(np.float32))
    np.testing.assert_allclose(got_coords.numpy(), coords, rtol=1e-7)
    targets = TokenLabelTargets(7, maps.shape[1:], label_size=3, smoothing=0.1)
    expected = token_label_target(got_maps, got_coords, truth, 7, 3, 0.1)
    np.testing.assert_array_equal(targets(paddle.to_tensor(packed)).numpy(), expected.numpy())
    hot = targets(paddle.to_tensor(np.array([1, 6])))  # plain labels: smoothed one-hot
    np.testing.assert_allclose(hot.numpy()[1], [0.1 / 7] * 6 + [0.9 + 0.1 / 7], rtol=1e-6)


def test_label_map_mixup_mixes_images_and_every_target_column_by_one_lam():
    rng = np.random.default_rng(4)
    images = paddle.to_tensor(rng.normal(size=(4, 3, 8, 8)).astype(np.float32))
    target = paddle.to_tensor(rng.dirichlet(np.ones(5), (4, 11)).transpose(0, 2, 1).astype(np.float32))
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=5)
    np.random.seed(7)
    expected_images, lam, box = mixup.mix(images)
    np.random.seed(7)
    mixed, mixed_target = TokenLabelMixup(mixup, TokenLabelTargets(5))(images, target)
    np.testing.assert_array_equal(mixed.numpy(), expected_images.numpy())
    t = target.numpy()
    np.testing.assert_allclose(mixed_target.numpy(), lam * t + (1 - lam) * t[::-1], rtol=1e-6)
    assert box is not None and 0 < lam < 1


def test_repeated_augmentation_order_follows_deits_sampler():
    order = repeated_augmentation_order(600, 4, seed=0)
    epoch = order(0)
    assert len(epoch) == 512  # 600 // 256 * 256 images per epoch over all processes
    assert all(epoch[i] == epoch[i + 1] == epoch[i + 2] for i in range(0, 510, 3))
    ranks = [epoch[r::4] for r in range(4)]
    assert all(len(set(shard)) == len(shard) for shard in ranks)  # an image's copies go to different ranks
    assert set(ranks[0]) & set(ranks[1])  # ... and the ranks share images
    assert order(1) != epoch and order(0) == epoch
    assert len(repeated_augmentation_order(10, 1, seed=0)(0)) == 10  # tiny sets: one pass


def test_teacher_labels_are_the_top_k_of_the_aux_head_per_token():
    model = ppim.create_model("lvvit_s", img_size=64, embed_dim=48, depth=2, num_heads=3, stem_dim=8,
                              num_classes=10)
    randomize(model, seed=5)
    ref = TorchLVViT(img_size=64, dim=48, depth=2, heads=3, stem=8, classes=10)
    ref.load_state_dict(torch_state(model), strict=False)
    ref.eval()
    images = np.random.default_rng(5).normal(size=(2, 3, 64, 64)).astype(np.float32)
    labels = teacher_labels(model, paddle.to_tensor(images), topk=5)
    with torch.no_grad():
        x = ref.patch_embed(torch.tensor(images)).flatten(2).transpose(1, 2)
        x = torch.cat([ref.cls_token.expand(2, -1, -1), x], 1) + ref.pos_embed
        for block in ref.blocks:
            x = block(x)
        scores = ref.aux_head(ref.norm(x)[:, 1:]).reshape(2, 4, 4, 10)
        values, indices = scores.topk(5, dim=-1)
    expected = torch.stack([values.half(), indices.half()]).permute(1, 0, 4, 2, 3).numpy()
    assert labels.shape == (2, 2, 5, 4, 4) and labels.dtype == np.float16
    np.testing.assert_array_equal(labels[:, 1], expected[:, 1])
    np.testing.assert_allclose(labels[:, 0].astype(np.float32), expected[:, 0].astype(np.float32), rtol=2e-3,
                               atol=2e-3)
