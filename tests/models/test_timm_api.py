"""timm's model conventions on ppim models, checked against an independent PyTorch reference
(benchmarks/torch_reference.py) and plain numpy: forward_head, pooling, forward_intermediates, SuperViT's
kept tokens, group_matcher, gradient checkpointing, get_classifier, default_cfg, and the errors
for the usual input mistakes."""
import re

import numpy as np
import paddle
import pytest
import torch

import ppim
from model_utils import randomize, torch_state
from torch_reference import TorchLVViT, TorchSuperViT
from tiny import TINY_SUPER

TINY = dict(img_size=64, embed_dim=48, depth=3, num_heads=3, stem_dim=8, num_classes=10)
SUPER = dict(TINY_SUPER, stem_dim=8, num_classes=10)
SUPER_ARCH = dict(deit=False, mlp_ratio=3.0, qkv_bias=False, eps=1e-5, skip_lam=2.0, aux_weight=0.25)


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def lvvit_pair():
    model = randomize(ppim.lvvit_s(**TINY), seed=1)
    ref = TorchLVViT(img_size=64, dim=48, depth=3, heads=3, skip_lam=2.0, stem=8, classes=10).eval()
    ref.load_state_dict(torch_state(model), strict=False)
    return model, ref


def supervit_pair():
    model = randomize(ppim.super_lvvit_s(**SUPER), seed=1)
    ref = TorchSuperViT(SUPER_ARCH, 48, 10, 3, 10).eval()
    ref.load_state_dict(torch_state(model), strict=False)
    return model, ref


def torch_lvvit_blocks(ref, x):
    """The reference's tokens after every block (before the final norm)."""
    t = ref.patch_embed(x).flatten(2).transpose(1, 2)
    t = torch.cat([ref.cls_token.expand(len(t), -1, -1), t], 1) + ref.pos_embed
    out = []
    for block in ref.blocks:
        t = block(t)
        out.append(t)
    return out


def torch_supervit_blocks(ref, x, img_size, keep_ratio):
    """The reference's tokens after every block and the grid positions of its patch tokens, composed
    from each block's kept indices (relative to the tokens that block received)."""
    t = torch.nn.functional.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=True)
    t = ref.patch_embed(t).flatten(2).transpose(1, 2)
    t = torch.cat([ref.cls_token.expand(len(t), -1, -1), t], 1) + ref.pos_embed_list[(img_size - 128) // 32]
    positions = np.tile(np.arange(t.shape[1] - 1), (len(t), 1))
    out = []
    for index, block in enumerate(ref.blocks):
        t = block(t, keep_ratio if index in (3, 6, 9) else 1)
        if index in (3, 6, 9) and keep_ratio < 1:
            positions = np.take_along_axis(positions, block.kept.numpy(), axis=1)
        out.append((t, positions.copy()))
    return out


# ---- heads and pooling ---------------------------------------------------------------------------

def test_forward_head_and_pooling_match_the_reference():
    model, ref = lvvit_pair()
    x = images((2, 3, 64, 64))
    with paddle.no_grad(), torch.no_grad():
        tokens = model.forward_features(paddle.to_tensor(x))
        expected = ref(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.forward_head(tokens).numpy(), expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(model(paddle.to_tensor(x)).numpy(), expected, atol=1e-4, rtol=1e-4)
        t = tokens.numpy()
        np.testing.assert_allclose(model.forward_head(tokens, pre_logits=True).numpy(), t[:, 0], rtol=1e-6)
        # The official code built with num_classes=0 returns cls + 0.5 * max over the patch tokens.
        model.reset_classifier(0, global_pool="dense")
        dense = t[:, 0] + 0.5 * t[:, 1:].max(axis=1)
        np.testing.assert_allclose(model(paddle.to_tensor(x)).numpy(), dense, atol=1e-5, rtol=1e-5)
        model.reset_classifier(0, global_pool="token")
        np.testing.assert_allclose(model(paddle.to_tensor(x)).numpy(), t[:, 0], atol=1e-5, rtol=1e-5)


def test_dense_pool_needs_an_aux_head():
    with pytest.raises(ValueError, match="no aux head"):
        ppim.super_deit_s(**TINY_SUPER, num_classes=0, global_pool="dense")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        ppim.lvvit_s(**TINY, global_pool="avg")


def test_get_classifier_covers_head_and_aux_head_and_default_cfg_is_the_cfg():
    model = ppim.lvvit_s(**TINY)
    names = {id(p) for p in model.get_classifier().parameters()}
    expected = {id(p) for p in [*model.head.parameters(), *model.aux_head.parameters()]}
    assert names == expected and len(expected) == 4
    deit = ppim.super_deit_s(**TINY_SUPER, num_classes=10)
    assert deit.get_classifier() is deit.head
    assert model.default_cfg is model.pretrained_cfg and model.default_cfg["name"] == "lvvit_s"


# ---- intermediate features -----------------------------------------------------------------------

def test_lvvit_intermediates_are_the_reference_tokens_as_maps():
    model, ref = lvvit_pair()
    x = images((2, 3, 64, 64), seed=2)
    with paddle.no_grad(), torch.no_grad():
        final, maps = model.forward_intermediates(paddle.to_tensor(x))
        blocks = [t.numpy() for t in torch_lvvit_blocks(ref, torch.from_numpy(x))]
        normed = ref.norm(torch.from_numpy(blocks[-1])).numpy()
    assert len(maps) == 3 and all(m.shape == [2, 48, 4, 4] for m in maps)
    for got, tokens in zip(maps, blocks):
        # map[b, d, r, c] is patch token r * 4 + c
        expected = tokens[:, 1:].reshape(2, 4, 4, 48).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(final.numpy(), normed, atol=1e-4, rtol=1e-4)
    only = model.forward_intermediates(paddle.to_tensor(x), [-1], norm=True, output_fmt="NHWC",
                                       intermediates_only=True)
    np.testing.assert_allclose(only[0].numpy(), normed[:, 1:].reshape(2, 4, 4, 48), atol=1e-4, rtol=1e-4)
    assert len(model.forward_intermediates(paddle.to_tensor(x), 2, intermediates_only=True)) == 2
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(paddle.to_tensor(x), [3])


def test_supervit_kept_tokens_and_intermediates_match_the_reference():
    model, ref = supervit_pair()
    x = images((2, 3, 224, 224), seed=3)
    xp, xt = paddle.to_tensor(x), torch.from_numpy(x)
    for img_size, keep_ratio in [(224, 0.5), (160, 0.7)]:
        with paddle.no_grad(), torch.no_grad():
            kept = [k.numpy() for k in model.kept_tokens(xp, img_size=img_size, keep_ratio=keep_ratio)]
            maps = model.forward_intermediates(xp, [2, 3, 6, 9], img_size=img_size, keep_ratio=keep_ratio,
                                               intermediates_only=True)
            reference = torch_supervit_blocks(ref, xt, img_size, keep_ratio)
        grid = img_size // 16
        for block, got in zip((3, 6, 9), kept):
            # Same kept sets (the order too, away from exact ties, which random weights do not hit).
            np.testing.assert_array_equal(got, reference[block][1], err_msg=f"{img_size}x{keep_ratio} block {block}")
        assert kept[0].shape[1] < grid * grid  # tokens were dropped: the check can fail
        for block, got in zip((2, 3, 6, 9), maps):
            tokens, positions = reference[block]
            expected = np.zeros((2, grid * grid, 48), dtype="float32")
            np.put_along_axis(expected, positions[..., None], tokens.numpy()[:, 1:], axis=1)
            expected = expected.reshape(2, grid, grid, 48).transpose(0, 3, 1, 2)
            np.testing.assert_allclose(got.numpy(), expected, atol=2e-4, rtol=1e-4, err_msg=f"block {block}")


# ---- training conveniences -------------------------------------------------------------------------

def layer_groups(model, matcher):
    """timm's group_with_matcher rule, written here: the first regex that matches a name gives its
    group (stem 0, block i -> i + 1, a fixed ordinal tuple as given); unmatched names are heads."""
    groups = {}
    for name, _ in model.named_parameters():
        group = None
        for key, spec in matcher.items():
            for pattern, ordinal in (spec if isinstance(spec, list) else [(spec, None)]):
                match = re.match(pattern, name)
                if match:
                    group = ordinal[0] if ordinal else (int(match.group(1)) + 1 if match.groups() else 0)
                    break
            if group is not None:
                break
        groups[name] = group
    return groups


@pytest.mark.parametrize("name", ["lvvit_s", "super_lvvit_s"])
def test_group_matcher_orders_parameters_by_depth(name):
    model = ppim.create_model(name, **(TINY if name == "lvvit_s" else SUPER))
    groups = layer_groups(model, model.group_matcher())
    heads = {n for n, g in groups.items() if g is None}
    assert heads == {"head.weight", "head.bias", "aux_head.weight", "aux_head.bias"}
    assert groups["cls_token"] == 0 and groups["patch_embed.conv1.weight"] == 0
    assert groups["blocks.0.attn.qkv.weight"] == 1 and groups["blocks.2.mlp.fc2.bias"] == 3
    assert groups["norm.weight"] > max(g for n, g in groups.items() if n.startswith("blocks."))
    coarse = layer_groups(model, model.group_matcher(coarse=True))
    assert coarse["blocks.1.norm1.weight"] == 2 and coarse["norm.weight"] is None


@pytest.mark.parametrize("name", ["lvvit_s", "super_lvvit_s"])
def test_grad_checkpointing_recomputes_blocks_and_keeps_the_gradients(name):
    kwargs = dict(TINY if name == "lvvit_s" else SUPER, drop_path_rate=0.2)
    x = paddle.to_tensor(images((2, 3, 64, 64) if name == "lvvit_s" else (2, 3, 128, 128), seed=4))

    def gradients(checkpointing):
        paddle.seed(0)
        model = ppim.create_model(name, **kwargs)
        model.train()
        model.set_grad_checkpointing(checkpointing)
        calls = []
        model.blocks[4 if name != "lvvit_s" else 1].register_forward_pre_hook(lambda *_: calls.append(1))
        paddle.seed(1)  # the same drop-path draws in both runs (recompute replays the RNG state)
        out = model(x, keep_ratio=0.7) if name != "lvvit_s" else model(x)
        out.square().mean().backward()
        return {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = gradients(False)
    checkpointed, recomputed_calls = gradients(True)
    assert (plain_calls, recomputed_calls) == (1, 2)  # forward, then again in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for key in plain:
        np.testing.assert_allclose(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5, err_msg=key)


def test_no_weight_decay_names_are_parameters():
    for name, kwargs in [("lvvit_s", TINY), ("super_lvvit_s", SUPER)]:
        model = ppim.create_model(name, **kwargs)
        assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}


# ---- input mistakes ----------------------------------------------------------------------------------

@pytest.mark.smoke
@pytest.mark.parametrize("name", ["lvvit_s", "super_lvvit_s"])
def test_input_mistakes_say_what_was_passed_and_the_fix(name):
    model = ppim.create_model(name, **(TINY if name == "lvvit_s" else SUPER))
    model.eval()  # (Paddle 2.6's eval() returns None: not chained)
    size = 64 if name == "lvvit_s" else 224
    chw = images((3, size, size))
    with pytest.raises(TypeError, match=r"numpy array of shape \(1, 3, .*paddle\.to_tensor"):
        model(chw[None])
    with pytest.raises(ValueError, match=r"without the batch dimension: pass x\.unsqueeze\(0\)"):
        model(paddle.to_tensor(chw))
    with pytest.raises(ValueError, match=r"channels last \(NHWC\): pass x\.transpose\(\[0, 3, 1, 2\]\)"):
        model(paddle.to_tensor(chw.transpose(1, 2, 0)[None]))
    with pytest.raises(ValueError, match=r"channels last \(HWC\)"):
        model(paddle.to_tensor(chw.transpose(1, 2, 0)))
    with pytest.raises(TypeError, match="uint8 pixels: t = ppim.create_transforms"):
        model(paddle.zeros([1, 3, size, size], dtype="uint8"))
    with pytest.raises(TypeError, match="got list"):
        model([chw])
    # The right input still works.
    assert model(paddle.to_tensor(chw[None])).shape == [1, 10]


def test_features_only_returns_the_intermediate_maps(tmp_path):
    source = randomize(ppim.lvvit_s(**TINY), seed=5)
    checkpoint = tmp_path / "tiny.pdparams"
    paddle.save(source.state_dict(), str(checkpoint))
    backbone = ppim.create_model("lvvit_s", features_only=True, out_indices=(0, -1), checkpoint_path=str(checkpoint),
                                 **TINY)
    backbone.eval()
    assert [info["module"] for info in backbone.feature_info] == ["blocks.0", "blocks.2"]
    assert {info["num_chs"] for info in backbone.feature_info} == {48}
    x = paddle.to_tensor(images((2, 3, 64, 64), seed=6))
    with paddle.no_grad():
        maps = backbone(x)
        expected = source.forward_intermediates(x, [0, 2], intermediates_only=True)
    assert [m.shape for m in maps] == [[2, 48, 4, 4]] * 2
    for got, want in zip(maps, expected):  # the loaded weights, not random ones
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert len(ppim.create_model("lvvit_s", features_only=True, **TINY)(x)) == 3  # default: the last 3 blocks
    assert ppim.create_transforms(backbone).crop == 64
