"""SuperViT: token-keeping arithmetic, an independent PyTorch reference for every sub-network,
published layouts and counts, static export, errors, LV-ViT training mode, registry cfgs."""
import math

import numpy as np
import paddle
import pytest
import torch

import ppim
from ppim.layers import random_box
from ppim.models.supervit import scale_box
from model_utils import randomize, torch_state
from torch_reference import TorchSuperViT
from tiny import TINY_SUPER

SIZES = (128, 160, 192, 224)
RATIOS = (0.5, 0.7, 1.0)
SUBNETS = [(s, r) for s in SIZES for r in RATIOS]

# The SuperViT paper and the official code.
ARCH = {
    "super_deit_s": dict(deit=True, mlp_ratio=4.0, qkv_bias=True, eps=1e-6, skip_lam=1.0, aux_weight=None),
    "super_lvvit_s": dict(deit=False, mlp_ratio=3.0, qkv_bias=False, eps=1e-5, skip_lam=2.0, aux_weight=0.25),
}
SMALL = dict(TINY_SUPER, num_classes=10)


def small(name, **kwargs):
    args = dict(SMALL, **({"stem_dim": 8} if name == "super_lvvit_s" else {}))
    args.update(kwargs)
    return ppim.create_model(name, **args)


def trainable(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def expected_token_counts(img_size, keep_ratio, depth=12):
    """Tokens after each block as the official code keeps them: n = ceil(r * T) patch tokens kept after cls at 3, 6, 9."""
    tokens, counts = (img_size // 16) ** 2 + 1, []
    for index in range(depth):
        if index in (3, 6, 9) and keep_ratio < 1:
            tokens = 1 + min(math.ceil(keep_ratio * tokens), tokens - 1)
        counts.append(tokens)
    return counts


# ---- the independent PyTorch reference (benchmarks/torch_reference.py) with our weights --------------

def torch_copy(model, name):
    ref = TorchSuperViT(ARCH[name], SMALL["embed_dim"], SMALL["depth"], SMALL["num_heads"], SMALL["num_classes"]).eval()
    state = torch_state(model)
    ref.load_state_dict(state, strict=False)
    missing = set(ref.state_dict()) - set(state)
    assert all(k.endswith("num_batches_tracked") for k in missing), missing  # names are the official ones
    return ref


@pytest.mark.parametrize("name", sorted(ARCH))
def test_every_subnet_matches_an_independent_torch_reference(name):
    paddle.seed(0)
    model = small(name)
    randomize(model, seed=1)
    model.eval()
    ref = torch_copy(model, name)
    x = np.random.default_rng(2).standard_normal((4, 3, 224, 224)).astype("float32")
    xt, xp = torch.from_numpy(x), paddle.to_tensor(x)
    with torch.no_grad(), paddle.no_grad():
        full = None
        for img_size, keep_ratio in SUBNETS:
            expected = ref(xt, img_size, keep_ratio).numpy()
            got = model(xp, img_size=img_size, keep_ratio=keep_ratio).numpy()
            scale = max(1.0, np.abs(expected).max())
            np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0,
                                       err_msg=f"{name} {img_size}x{keep_ratio}")
            if (img_size, keep_ratio) == (224, 1.0):
                full = got
            if keep_ratio < 1:  # the selection depends on the image, so the test can fail
                kept = ref.blocks[3].kept.numpy()
                assert len({tuple(sorted(row)) for row in kept}) == len(kept)
        # Keeping changes the result (it is not a no-op), and the kept order is the reference's.
        assert np.abs(model(xp, img_size=224, keep_ratio=0.5).numpy() - full).max() > 1e-2 * np.abs(full).max()
        np.testing.assert_allclose(model.forward_features(xp, img_size=192, keep_ratio=0.7).numpy(),
                                   ref.tokens(xt, 192, 0.7).numpy(), atol=2e-4, rtol=0)
        # Inputs of another size are resized to the sub-network's size, like 224 crops.
        x256 = np.random.default_rng(3).standard_normal((2, 3, 256, 256)).astype("float32")
        expected = ref(torch.from_numpy(x256), 160, 0.7).numpy()
        np.testing.assert_allclose(model(paddle.to_tensor(x256), img_size=160, keep_ratio=0.7).numpy(), expected,
                                   atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)


@pytest.mark.parametrize("img_size,keep_ratio", [(224, 0.5), (224, 0.7), (128, 0.5), (160, 0.7),
                                                 (192, 1.0), (224, 0.3), (128, 0.99)])
def test_token_counts_after_each_block(img_size, keep_ratio):
    model = small("super_deit_s", depth=12)
    model.eval()
    counts = []
    hooks = [b.register_forward_post_hook(lambda layer, inputs, out: counts.append(out.shape[1]))
             for b in model.blocks]
    with paddle.no_grad():
        model(paddle.randn([2, 3, 224, 224]), img_size=img_size, keep_ratio=keep_ratio)
    for hook in hooks:
        hook.remove()
    assert counts == expected_token_counts(img_size, keep_ratio)
    if (img_size, keep_ratio) == (224, 0.5):
        assert [counts[3], counts[6], counts[9]] == [100, 51, 27]  # the paper's example: 197 -> 100 -> 51 -> 27


def test_subnets_and_default_subnet():
    model = small("super_deit_s")
    model.eval()
    assert model.subnets == SUBNETS
    assert (model.img_size, model.keep_ratio) == (224, 1.0)
    x = paddle.randn([2, 3, 224, 224])
    with paddle.no_grad():
        model.set_subnet(160, 0.5)
        np.testing.assert_array_equal(model(x).numpy(), model(x, img_size=160, keep_ratio=0.5).numpy())
        assert model.forward_features(x).shape == [2, expected_token_counts(160, 0.5)[-1], 48]


@pytest.mark.parametrize("name,count", [("super_deit_s", 22_170_088), ("super_lvvit_s", 26_271_248)])
def test_full_size_parameter_counts_and_names(name, count):
    model = ppim.create_model(name)
    assert trainable(model) == count
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    for k, grid in enumerate((8, 10, 12, 14)):
        assert shapes[f"pos_embed_list.{k}"] == [1, grid * grid + 1, 384]
    assert "pos_embed" not in shapes and shapes["cls_token"] == [1, 1, 384]
    assert shapes["head.weight"] == [384, 1000] and ("aux_head.weight" in shapes) == (name == "super_lvvit_s")
    if name == "super_deit_s":
        assert shapes["patch_embed.proj.weight"] == [384, 3, 16, 16] and "patch_embed.proj.bias" in shapes
        assert shapes["blocks.11.attn.qkv.bias"] == [1152] and shapes["blocks.11.mlp.fc1.weight"] == [384, 1536]
        assert model.norm._epsilon == 1e-6 and len(model.blocks) == 12
    else:
        assert shapes["patch_embed.bn3._variance"] == [64] and "blocks.0.attn.qkv.bias" not in shapes
        assert shapes["blocks.15.mlp.fc1.weight"] == [384, 1152] and model.blocks[0].skip_lam == 2.0
        assert model.norm._epsilon == 1e-5 and model.aux_weight == 0.25


def test_static_export_round_trip(tmp_path):
    model = small("super_lvvit_s")
    randomize(model, seed=4)
    model.eval()
    model.set_subnet(img_size=160, keep_ratio=0.7)
    x = paddle.to_tensor(np.random.default_rng(5).standard_normal((3, 3, 224, 224)).astype("float32"))
    with paddle.no_grad():
        expected = model(x).numpy()
    path = str(tmp_path / "supervit")
    paddle.jit.save(model, path, input_spec=[paddle.static.InputSpec([None, 3, 224, 224], "float32")])
    loaded = paddle.jit.load(path)
    loaded.eval()
    got = loaded(x).numpy()
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(loaded(x[:1]).numpy(), expected[:1], atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_unknown_img_size_and_bad_keep_ratio_are_refused():
    model = small("super_deit_s")
    x = paddle.zeros([1, 3, 224, 224])
    with pytest.raises(ValueError) as err:
        model(x, img_size=200)
    assert all(str(s) in str(err.value) for s in SIZES) and "200" in str(err.value)
    for bad in (0, 0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="keep_ratio"):
            model(x, keep_ratio=bad)
    with pytest.raises(ValueError, match="128, 160, 192, 224"):
        model.set_subnet(img_size=256)
    with pytest.raises(ValueError, match="keep_ratio"):
        model.set_subnet(224, 1.5)
    with pytest.raises(ValueError, match="128, 160, 192, 224"):
        ppim.create_model("super_deit_s", img_size=200)


def test_features_and_classifier_reset():
    x = paddle.randn([2, 3, 224, 224])
    features = small("super_lvvit_s", num_classes=0)
    features.eval()
    assert features(x, img_size=128, keep_ratio=0.5).shape == [2, 48]
    model = small("super_lvvit_s")
    model.reset_classifier(5)
    model.eval()
    assert model(x).shape == [2, 5] and model.aux_head.weight.shape == [48, 5]
    deit = small("super_deit_s")
    deit.reset_classifier(0)
    assert deit(x).shape == [2, 48] and not hasattr(deit, "aux_head")


def test_forward_train_mixtoken(rng):
    model = small("super_lvvit_s")
    randomize(model, seed=6)
    model.train()
    x = paddle.to_tensor(rng.standard_normal((4, 3, 224, 224)).astype("float32"))
    np.random.seed(3)
    cls_logits, aux_logits, box = model.forward_train(x)  # full sub-network (224, 1), box drawn on 14x14
    assert cls_logits.shape == [4, 10] and aux_logits.shape == [4, 196, 10]
    np.random.seed(3)
    assert box == random_box(14, 14)
    # A given box (the official loop passes one per sub-network) is used as it is.
    box = (2, 3, 9, 12)
    cls_logits, aux_logits, got_box = model.forward_train(x, img_size=224, keep_ratio=1.0, bbox=box)
    assert got_box == box
    # Independent recomputation (still in training mode: BN uses the same batch statistics).
    feat = model.patch_embed(x).numpy()
    mixed = feat.copy()
    mixed[:, :, 2:9, 3:12] = feat[::-1][:, :, 2:9, 3:12]
    tokens = model.forward_tokens(paddle.to_tensor(mixed).flatten(2).transpose([0, 2, 1]), 224, 1.0)
    aux = model.aux_head(tokens[:, 1:]).numpy().reshape(4, 14, 14, 10)
    restored = aux.copy()
    restored[:, 2:9, 3:12] = aux[::-1][:, 2:9, 3:12]
    np.testing.assert_allclose(aux_logits.numpy(), restored.reshape(4, 196, 10), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cls_logits.numpy(), model.head(tokens[:, 0]).numpy(), rtol=1e-4, atol=1e-4)
    # Other sub-networks return the cls logits only, as in the official code.
    out = model.forward_train(x, img_size=160, keep_ratio=0.7, bbox=scale_box(box, 10))
    assert isinstance(out, paddle.Tensor) and out.shape == [4, 10]
    assert scale_box((3, 5, 11, 14), 8) == (1, 2, 6, 8) and scale_box(box, 14) == box
    deit = small("super_deit_s")
    deit.train()
    assert deit.forward_train(x, img_size=128, keep_ratio=0.5).shape == [4, 10]


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["super_lvvit_s", "super_deit_s"])
def test_train_mode_returns_the_eval_logits(name, rng):
    """model(x) is logits (B, C) in training mode too (no MixToken), equal to eval mode's when nothing
    random is on; the sub-network arguments are keyword-only, so a label cannot land in img_size."""
    model = small(name)
    randomize(model, seed=2)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 224, 224)).astype("float32"))
    model.eval()
    expected = {subnet: model(x, img_size=subnet[0], keep_ratio=subnet[1]).numpy() for subnet in [(224, 1.0), (160, 0.5)]}
    model.train()
    if name == "super_lvvit_s":  # batch-statistics BN in the stem: compare against eval with the same stats
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.BatchNorm2D):
                layer.eval()
    for (size, ratio), want in expected.items():
        got = model(x, img_size=size, keep_ratio=ratio)
        assert got.shape == [2, 10]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        model(x, paddle.to_tensor([1, 2]))


def test_registry_cfgs():
    assert {"super_deit_s", "super_lvvit_s"} <= set(ppim.list_models("super_*"))
    for name, resize, top1, table in [("super_deit_s", 256, 80.62, {"128x0.5": 73.75, "160x0.7": 78.31}),
                                      ("super_lvvit_s", 248, 83.47, {"192x1.0": 82.94, "224x0.5": 82.11})]:
        cfg = ppim.get_model_cfg(name)
        assert (cfg["resize"], cfg["crop"], cfg["interpolation"]) == (resize, 224, "bicubic")
        assert cfg["architecture"] == "supervit" and "2205.11397" in cfg["paper"]
        weights = cfg["weights"]
        assert weights["format"] == "pth" and weights["top1"] == top1 and weights["top5"] is None
        assert weights["url"].startswith("https://drive.google.com/uc?export=download&id=")
        assert weights["file_name"] == f"{name}.pth"
        assert sorted(weights["subnet_top1"]) == sorted(f"{s}x{r}" for s, r in SUBNETS)
        assert all(weights["subnet_top1"][k] == v for k, v in table.items())
        assert weights["subnet_top1"]["224x1.0"] == top1


@pytest.mark.parametrize("name", sorted(ARCH))
def test_official_checkpoint_converts_strictly(tmp_path, name):
    """A DeiT-style training checkpoint with the official names loads through pretrained=."""
    paddle.seed(0)
    source_model = small(name)
    randomize(source_model, seed=4)
    ref = torch_copy(source_model, name)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": ref.state_dict(), "epoch": 299, "args": None}, path)
    model = small(name, pretrained=str(path))
    model.eval()
    x = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype("float32")
    with torch.no_grad(), paddle.no_grad():
        expected = ref(torch.from_numpy(x), 160, 0.7).numpy()
        got = model(paddle.to_tensor(x), img_size=160, keep_ratio=0.7).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)
