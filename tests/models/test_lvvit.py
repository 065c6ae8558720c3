"""LV-ViT: published layouts and parameter counts, ppim 1.1.0 numerics, eval formula, training mode."""
import json

import numpy as np
import paddle
import pytest

import ppim
from ppim.layers import random_box, swap_box
from det_weights import deterministic_state
from tiny import FIXTURES

LAYOUTS = json.loads((FIXTURES / "ppim110" / "layouts.json").read_text())

# Trainable parameters of the official code (BN running statistics excluded).
OFFICIAL_PARAMS = {
    "lvvit_t": 8_534_720, "lvvit_s": 26_151_824, "lvvit_s_384": 26_297_744, "lvvit_m": 55_830_544,
    "lvvit_m_384": 56_025_104, "lvvit_m_448": 56_131_600, "lvvit_l_448": 150_473_552,
    "lvvit_l_512": 150_657_872,
}


def tiny(**kwargs):
    """A reduced LV-ViT for fast behavioural tests."""
    args = dict(img_size=64, embed_dim=48, depth=3, num_heads=3, num_classes=7, stem_dim=8, skip_lam=2.0)
    args.update(kwargs)
    return ppim.create_model("lvvit_s", **args)


def trainable(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_full_size_parameter_counts_and_ppim110_layout(name):
    with paddle.LazyGuard():  # shapes without allocating or initialising the weights
        model = ppim.create_model(name)
    assert trainable(model) == OFFICIAL_PARAMS[name]
    if name in LAYOUTS:  # ppim 1.1.0 shipped six of the eight
        ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        theirs = [[k, shape] for k, shape, _ in LAYOUTS[name]]
        assert ours == theirs
        assert LAYOUTS["_trainable_params"][name] == OFFICIAL_PARAMS[name]


@pytest.mark.smoke
def test_logits_match_ppim110_with_the_per_sample_aux_max():
    model = ppim.lvvit_s()
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in deterministic_state(LAYOUTS["lvvit_s"]).items()})
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype("float32")
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy()
    recorded = LAYOUTS["_logits"]
    expected = np.asarray(recorded["cls_logits"]) + 0.5 * np.asarray(recorded["aux_max"])
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # ppim 1.1.0's own output adds sample 0's aux maximum to every row (Tensor.max(1)[0] picks a
    # sample in Paddle); row 0 is unaffected, so it must equal ours exactly as recorded.
    ppim110 = np.load(FIXTURES / "ppim110" / "lvvit_s_logits.npy")
    np.testing.assert_allclose(logits[0], ppim110[0], atol=1e-4, rtol=0)
    assert np.abs(logits[1] - ppim110[1]).max() > 1e-2


@pytest.mark.smoke
def test_eval_output_is_cls_plus_half_max_aux(rng):
    model = tiny()
    model.eval()
    x = paddle.to_tensor(rng.standard_normal((3, 3, 64, 64)).astype("float32"))
    with paddle.no_grad():
        tokens = model.forward_features(x)
        cls = model.head(tokens[:, 0]).numpy()
        aux = model.aux_head(tokens[:, 1:]).numpy()
        logits = model(x).numpy()
    assert tokens.shape == [3, 1 + 16, 48]
    np.testing.assert_allclose(logits, cls + 0.5 * aux.max(axis=1), rtol=1e-5, atol=1e-6)


def test_features_and_classifier_reset(rng):
    x = paddle.to_tensor(rng.standard_normal((2, 3, 64, 64)).astype("float32"))
    features = tiny(num_classes=0)
    features.eval()
    assert features(x).shape == [2, 48]
    model = tiny()
    model.reset_classifier(5)
    model.eval()
    assert model(x).shape == [2, 5]
    assert model.aux_head.weight.shape == [48, 5]
    model.reset_classifier(0)
    assert model(x).shape == [2, 48]


def test_class_dim_is_accepted_and_conflicts_are_refused():
    model = ppim.create_model("lvvit_s", img_size=64, embed_dim=48, depth=1, num_heads=3, stem_dim=8,
                              class_dim=10)
    assert model.head.weight.shape == [48, 10] and model.num_classes == 10
    with pytest.raises(ValueError, match="class_dim=10 and num_classes=3"):
        ppim.create_model("lvvit_s", class_dim=10, num_classes=3)


@pytest.mark.smoke
def test_wrong_input_size_names_the_size_and_the_fix():
    model = tiny()
    with pytest.raises(ValueError) as err:
        model(paddle.zeros([1, 3, 96, 96]))
    message = str(err.value)
    assert "64x64" in message and "96x96" in message and "img_size=96" in message


def test_unknown_model_lists_closest_names():
    with pytest.raises(KeyError) as err:
        ppim.create_model("lvvit_ss")
    assert "lvvit_s" in str(err.value) and "Did you mean" in str(err.value)
    with pytest.raises(KeyError, match="lvvit_m_384"):
        ppim.get_model_cfg("lvvit_m384")


def test_drop_path_rate_is_linear_over_depth():
    model = tiny(depth=5, drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.2, 5))


@pytest.mark.smoke
def test_forward_train_mixtoken_swaps_and_restores_the_box(rng):
    np.random.seed(3)
    model = tiny(drop_path_rate=0.0)
    model.train()
    x = paddle.to_tensor(rng.standard_normal((4, 3, 64, 64)).astype("float32"))
    cls_logits, aux_logits, box = model.forward_train(x)
    assert cls_logits.shape == [4, 7] and aux_logits.shape == [4, 16, 7]
    np.random.seed(3)
    assert box == random_box(4, 4)
    r1, c1, r2, c2 = box
    assert 0 <= r1 <= r2 <= 4 and 0 <= c1 <= c2 <= 4
    # Independent recomputation: mix the stem features by hand, run the transformer, un-mix.
    feat = model.patch_embed(x).numpy()
    mixed = feat.copy()
    mixed[:, :, r1:r2, c1:c2] = feat[::-1][:, :, r1:r2, c1:c2]
    tokens = model.forward_tokens(paddle.to_tensor(mixed).flatten(2).transpose([0, 2, 1]))
    aux = model.aux_head(tokens[:, 1:]).numpy().reshape(4, 4, 4, 7)
    restored = aux.copy()
    restored[:, r1:r2, c1:c2] = aux[::-1][:, r1:r2, c1:c2]
    np.testing.assert_allclose(aux_logits.numpy(), restored.reshape(4, 16, 7), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cls_logits.numpy(), model.head(tokens[:, 0]).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.smoke
def test_model_returns_logits_in_training_mode_without_mixtoken(rng):
    """model(x) in train mode is the eval formula (ppim 1.x), so CrossEntropyLoss(model(x), y) trains on the
    images as given: equal to eval mode once BN uses the same statistics and drop-path is off."""
    model = tiny(drop_path_rate=0.0)
    model.train()
    x = paddle.to_tensor(rng.standard_normal((4, 3, 64, 64)).astype("float32"))
    np.random.seed(0)
    logits = model(x)
    assert isinstance(logits, paddle.Tensor) and logits.shape == [4, 7]
    # Independent recomputation from the parts: cls head + 0.5 * max over tokens of the aux head.
    tokens = model.forward_tokens(model.patch_embed(x).flatten(2).transpose([0, 2, 1]))
    expected = model.head(tokens[:, 0]).numpy() + 0.5 * model.aux_head(tokens[:, 1:]).numpy().max(axis=1)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-5)
    loss = paddle.nn.CrossEntropyLoss()(logits, paddle.to_tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.head.weight.grad is not None and model.aux_head.weight.grad is not None
    # No box given and mix_token off: forward_train mixes nothing.
    model.mix_token = False
    cls_logits, _, box = model.forward_train(x)
    assert box == (0, 0, 0, 0)
    np.testing.assert_allclose(cls_logits.numpy(), model.head(tokens[:, 0]).numpy(), rtol=1e-5, atol=1e-5)
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}


def test_swap_box_is_an_involution_and_touches_only_the_box(rng):
    x = paddle.to_tensor(rng.standard_normal((3, 2, 5, 6)).astype("float32"))
    y = swap_box(x, (1, 2, 4, 5))
    expected = x.numpy().copy()
    expected[:, :, 1:4, 2:5] = x.numpy()[::-1, :, 1:4, 2:5]
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(swap_box(y, (1, 2, 4, 5)).numpy(), x.numpy())
