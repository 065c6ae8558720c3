"""ppim.training's building blocks against references written here: PyTorch from timm 0.4.x's rules
(losses, Mixup/CutMix with the same numpy draws), the schedule's closed form, the EMA in numpy."""
import math

import numpy as np
import paddle
import pytest
from paddle import nn

import ppim
from ppim.training import (CosineLRScheduler, LabelSmoothingCrossEntropy, Mixup, ModelEma, SoftTargetCrossEntropy,
                           create_optimizer, mixup_target, param_groups_weight_decay)

try:
    import torch
except ImportError:  # the Paddle 2.6 smoke environment has no torch: the rest still runs there
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="the reference needs torch")
# paddle.DataParallel outside a multi-process launch runs single-card and says so
single_card = pytest.mark.filterwarnings("ignore:The program will return to single-card")


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------


@needs_torch
def test_losses_match_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, 6)
    soft = rng.random((6, 11)).astype(np.float32)
    soft /= soft.sum(1, keepdims=True)
    t_logits = torch.tensor(logits)
    expected_soft = torch.sum(-torch.tensor(soft) * torch.log_softmax(t_logits, -1), -1).mean()
    got = SoftTargetCrossEntropy()(paddle.to_tensor(logits), paddle.to_tensor(soft))
    assert abs(float(got) - float(expected_soft)) < 1e-5
    for smoothing in (0.0, 0.1, 0.3):
        # torch's label smoothing is timm's: (1 - s) * NLL + s * mean over classes of -log p
        expected = torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels), label_smoothing=smoothing)
        got = LabelSmoothingCrossEntropy(smoothing)(paddle.to_tensor(logits), paddle.to_tensor(labels))
        assert abs(float(got) - float(expected)) < 1e-5
    with pytest.raises(ValueError, match="LabelSmoothingCrossEntropy"):
        SoftTargetCrossEntropy()(paddle.to_tensor(logits), paddle.to_tensor(labels))


@pytest.mark.smoke
def test_losses_by_numpy():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 5)
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    expected = (0.8 * -log_p[np.arange(5), labels] + 0.2 * -log_p.mean(1)).mean()
    got = LabelSmoothingCrossEntropy(0.2)(paddle.to_tensor(logits), paddle.to_tensor(labels))
    assert abs(float(got) - expected) < 1e-5
    soft = mixup_target(paddle.to_tensor(labels), 7, 0.6, 0.1).numpy()
    got = SoftTargetCrossEntropy()(paddle.to_tensor(logits), paddle.to_tensor(soft))
    assert abs(float(got) - (-soft * log_p).sum(1).mean()) < 1e-5


@needs_torch
def test_soft_target_loss_gradient_matches_torch():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 5)).astype(np.float32)
    target = mixup_target(paddle.to_tensor([0, 3, 1, 2]), 5, 0.7, 0.1)
    x = paddle.to_tensor(logits, stop_gradient=False)
    SoftTargetCrossEntropy()(x, target).backward()
    tx = torch.tensor(logits, requires_grad=True)
    torch.sum(-torch.tensor(target.numpy()) * torch.log_softmax(tx, -1), -1).mean().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Mixup / CutMix: torch reference with timm's numpy draws
# ------------------------------------------------------------------------------------------------


def torch_target(target, num_classes, lam, smoothing):
    off = smoothing / num_classes
    on = 1 - smoothing + off
    y1 = torch.full((len(target), num_classes), off).scatter_(1, target.view(-1, 1), on)
    y2 = torch.full((len(target), num_classes), off).scatter_(1, target.flip(0).view(-1, 1), on)
    return y1 * lam + y2 * (1 - lam)


def torch_box(shape, lam, minmax=None):
    """timm's rand_bbox / rand_bbox_minmax, with numpy's global RNG."""
    img_h, img_w = shape[-2:]
    if minmax is not None:
        cut_h = np.random.randint(int(img_h * minmax[0]), int(img_h * minmax[1]))
        cut_w = np.random.randint(int(img_w * minmax[0]), int(img_w * minmax[1]))
        yl, xl = np.random.randint(0, img_h - cut_h), np.random.randint(0, img_w - cut_w)
        return yl, yl + cut_h, xl, xl + cut_w
    cut_h, cut_w = int(img_h * math.sqrt(1 - lam)), int(img_w * math.sqrt(1 - lam))
    cy, cx = np.random.randint(0, img_h), np.random.randint(0, img_w)
    return (np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h),
            np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w))


def torch_mix_batch(x, target, mixup_alpha, cutmix_alpha, prob, switch_prob, minmax, num_classes, smoothing):
    """timm 0.4.x Mixup, mode 'batch', correct_lam: the reference."""
    x = x.clone()
    lam, use_cutmix, box = 1.0, False, None
    if np.random.rand() < prob:
        if mixup_alpha > 0 and cutmix_alpha > 0:
            use_cutmix = np.random.rand() < switch_prob
            lam = np.random.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else np.random.beta(mixup_alpha, mixup_alpha)
        elif mixup_alpha > 0:
            lam = np.random.beta(mixup_alpha, mixup_alpha)
        else:
            use_cutmix, lam = True, np.random.beta(cutmix_alpha, cutmix_alpha)
        lam = float(lam)
    if lam != 1.0:
        if use_cutmix:
            box = yl, yh, xl, xh = torch_box(x.shape, lam, minmax)
            lam = 1 - (yh - yl) * (xh - xl) / float(x.shape[-2] * x.shape[-1])
            x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
        else:
            x = x * lam + x.flip(0) * (1 - lam)
    return x, torch_target(target, num_classes, lam, smoothing), lam, box


@needs_torch
@pytest.mark.parametrize("kwargs", [
    dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0),
    dict(mixup_alpha=0.8, cutmix_alpha=0.0, switch_prob=0.5, prob=0.7),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0, cutmix_minmax=(0.2, 0.8)),
])
def test_batch_mixup_matches_the_torch_reference(kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 20, 24)).astype(np.float32)
    target = np.array([3, 0, 7, 3])
    mixup = Mixup(label_smoothing=0.1, num_classes=9, **kwargs)
    kinds = set()
    for seed in range(25):
        np.random.seed(seed)
        reference = torch_mix_batch(torch.tensor(x), torch.tensor(target), kwargs["mixup_alpha"],
                                    kwargs["cutmix_alpha"] if "cutmix_minmax" not in kwargs else 1.0, kwargs["prob"],
                                    kwargs["switch_prob"], kwargs.get("cutmix_minmax"), 9, 0.1)
        np.random.seed(seed)
        mixed, lam, box = mixup.mix(paddle.to_tensor(x))
        np.random.seed(seed)
        mixed_again, soft = mixup(paddle.to_tensor(x), paddle.to_tensor(target))
        np.testing.assert_allclose(mixed.numpy(), reference[0].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(mixed_again.numpy(), reference[0].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(soft.numpy(), reference[1].numpy(), rtol=0, atol=1e-6)
        assert abs(lam - reference[2]) < 1e-12
        if reference[3] is None:
            assert box is None
        else:  # timm's (yl, yh, xl, xh), field by field
            yl, yh, xl, xh = (int(v) for v in reference[3])
            assert (box.top, box.bottom, box.left, box.right) == (yl, yh, xl, xh)
        np.testing.assert_allclose(soft.numpy().sum(1), 1.0, atol=1e-6)
        kinds.add("cutmix" if box else "none" if lam == 1 else "mixup")
    expected_kinds = {"mixup", "cutmix"} if kwargs["mixup_alpha"] and kwargs["cutmix_alpha"] else set()
    assert expected_kinds <= kinds
    assert ("none" in kinds) == (kwargs["prob"] < 1)


def torch_mix_elem(x, lam_batch, use_cutmix, pairs):
    """timm's _mix_elem / _mix_pair given the per-image draws (boxes from numpy's RNG)."""
    x_orig, x = x.clone(), x.clone()
    batch_size = len(x)
    lam_batch = lam_batch.copy()
    for i in range(batch_size // 2 if pairs else batch_size):
        j = batch_size - i - 1
        lam = lam_batch[i]
        if lam == 1:
            continue
        if use_cutmix[i]:
            yl, yh, xl, xh = torch_box(x[i].shape, lam)
            x[i][:, yl:yh, xl:xh] = x_orig[j][:, yl:yh, xl:xh]
            if pairs:
                x[j][:, yl:yh, xl:xh] = x_orig[i][:, yl:yh, xl:xh]
            lam_batch[i] = 1 - (yh - yl) * (xh - xl) / float(x.shape[-2] * x.shape[-1])
        else:
            x[i] = x_orig[i] * lam + x_orig[j] * (1 - lam)
            if pairs:
                x[j] = x_orig[j] * lam + x_orig[i] * (1 - lam)
    if pairs:
        lam_batch = np.concatenate([lam_batch, lam_batch[::-1]])
    return x, lam_batch


@needs_torch
@pytest.mark.parametrize("mode", ["elem", "pair"])
def test_elem_and_pair_mixup_match_the_torch_reference(mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 10, 12)).astype(np.float32)
    target = np.array([0, 1, 2, 3, 4, 5])
    mixup = Mixup(mode=mode, num_classes=6, label_smoothing=0.0)
    for seed in range(10):
        np.random.seed(seed)
        drawn = 3 if mode == "pair" else 6
        use_cutmix = np.random.rand(drawn) < 0.5  # timm's per-element draws, in its order
        lam_mix = np.where(use_cutmix, np.random.beta(1.0, 1.0, size=drawn), np.random.beta(0.8, 0.8, size=drawn))
        lam = np.where(np.random.rand(drawn) < 1.0, lam_mix.astype(np.float32), np.ones(drawn, np.float32))
        expected_x, expected_lam = torch_mix_elem(torch.tensor(x), lam, use_cutmix, mode == "pair")
        np.random.seed(seed)
        mixed, soft = mixup(paddle.to_tensor(x), paddle.to_tensor(target))
        np.testing.assert_allclose(mixed.numpy(), expected_x.numpy(), rtol=0, atol=1e-6)
        lam_column = torch.tensor(expected_lam, dtype=torch.float32)[:, None]
        expected_soft = torch_target(torch.tensor(target), 6, lam_column, 0)
        np.testing.assert_allclose(soft.numpy(), expected_soft.numpy(), rtol=0, atol=1e-6)


def test_mixup_rejects_odd_batches_and_can_be_switched_off():
    mixup = Mixup(num_classes=3)
    with pytest.raises(ValueError, match="even"):
        mixup(paddle.zeros([3, 3, 4, 4]), paddle.to_tensor([0, 1, 2]))
    mixup.mixup_enabled = False
    x = paddle.randn([2, 3, 4, 4])
    mixed, soft = mixup(x, paddle.to_tensor([0, 2]))
    np.testing.assert_array_equal(mixed.numpy(), x.numpy())
    np.testing.assert_allclose(soft.numpy(), [[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], [0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]],
                               atol=1e-6)


# ------------------------------------------------------------------------------------------------
# schedule
# ------------------------------------------------------------------------------------------------


def closed_form(t, base=1e-3, total=20, warmup=5, warmup_lr=1e-6, min_lr=1e-5):
    if t < warmup:
        return warmup_lr + t * (base - warmup_lr) / warmup
    if t >= total:
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / total))


@pytest.mark.smoke
def test_cosine_schedule_matches_the_closed_form_and_drives_the_optimizer():
    model = nn.Linear(4, 3)
    scheduler = CosineLRScheduler(1e-3, epochs=20, warmup_epochs=5, cooldown_epochs=3)
    optimizer = create_optimizer(model, "adamw", lr_scheduler=scheduler, weight_decay=0.05)
    assert scheduler.total_epochs == 23
    seen = []
    for epoch in range(scheduler.total_epochs):
        seen.append(optimizer.get_lr())
        for update in range(4):  # per-epoch schedules ignore updates
            scheduler.step_update(epoch * 4 + update + 1)
        scheduler.step_epoch(epoch + 1)
    np.testing.assert_allclose(seen, [closed_form(t) for t in range(23)], rtol=1e-12)
    assert seen[0] == 1e-6 and seen[-1] == 1e-5 and max(seen) == seen[5]


def test_per_update_schedule_and_exact_resume():
    scheduler = CosineLRScheduler(2e-3, epochs=4, steps_per_epoch=10, warmup_epochs=1, warmup_lr=0.0, min_lr=0.0,
                                  cooldown_epochs=0, t_in_epochs=False)
    values = []
    for update in range(1, 41):
        scheduler.step_epoch(update // 10)  # ignored per update
        scheduler.step_update(update)
        values.append(scheduler())
        if update == 17:
            state = scheduler.state_dict()
    expected = [closed_form(u, base=2e-3, total=40, warmup=10, warmup_lr=0.0, min_lr=0.0) for u in range(1, 41)]
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-15)
    resumed = CosineLRScheduler(2e-3, epochs=4, steps_per_epoch=10, warmup_epochs=1, warmup_lr=0.0, min_lr=0.0,
                                cooldown_epochs=0, t_in_epochs=False)
    resumed.set_state_dict(state)
    assert resumed() == values[16]
    resumed.step_update(18)
    assert resumed() == values[17]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        CosineLRScheduler(1e-3, 10, t_in_epochs=False)


# ------------------------------------------------------------------------------------------------
# optimizer groups, weight decay, clipping
# ------------------------------------------------------------------------------------------------


@single_card
def test_weight_decay_groups_follow_timm():
    model = ppim.lvvit_s(depth=1, embed_dim=48, num_heads=2, num_classes=10)
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=("head.weight",))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    assert {"cls_token", "pos_embed", "head.weight", "head.bias", "norm.weight", "norm.bias"} <= no_decay
    assert "aux_head.weight" in decay and all(not n.endswith(".bias") for n in decay)
    assert all(len(p.shape) > 1 for p in groups[1]["params"])
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}  # not BN running statistics
    assert decay | no_decay == trainable and not decay & no_decay
    wrapped = param_groups_weight_decay(paddle.DataParallel(model), 0.05, no_weight_decay_list=("head.weight",))
    assert [len(group["params"]) for group in wrapped] == [len(group["params"]) for group in groups]
    supernet = ppim.super_deit_s(depth=1, embed_dim=48, num_heads=2, num_classes=10)
    names = {id(p): n for n, p in supernet.named_parameters()}
    skipped = {names[id(p)] for p in param_groups_weight_decay(supernet, 0.05)[0]["params"]}
    assert {f"pos_embed_list.{i}" for i in range(len(supernet.img_sizes))} <= skipped


@pytest.mark.smoke
@pytest.mark.parametrize("opt", ["adamw", "momentum"])
def test_weight_decay_reaches_only_the_decay_group(opt):
    paddle.seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model[0].bias.set_value(paddle.ones([4]))
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    optimizer = create_optimizer(model, opt, lr=0.1, weight_decay=0.5, momentum=0.9)
    (model(paddle.zeros([1, 3])) * 0).sum().backward()  # zero gradients: only weight decay moves weights
    optimizer.step()
    after = {n: p.numpy() for n, p in model.named_parameters()}
    np.testing.assert_allclose(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5), rtol=1e-6)
    for name in ("0.bias", "1.weight", "1.bias"):
        np.testing.assert_array_equal(after[name], before[name])


def test_gradient_clipping_by_global_norm():
    model = nn.Linear(5, 3)
    before = [p.numpy().copy() for p in model.parameters()]
    optimizer = create_optimizer(model, "momentum", lr=1.0, momentum=0.0, weight_decay=0.0, clip_grad=0.5)
    (model(paddle.ones([2, 5]) * 100) ** 2).sum().backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert norm > 0.5
    optimizer.step()
    for p, b, g in zip(model.parameters(), before, grads):  # plain SGD at lr 1: the step is the clipped gradient
        np.testing.assert_allclose(b - p.numpy(), g * 0.5 / norm, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="lamb"):
        create_optimizer(model, "lamb")


# ------------------------------------------------------------------------------------------------
# EMA
# ------------------------------------------------------------------------------------------------


@pytest.mark.smoke
@single_card
def test_model_ema_matches_numpy_for_parameters_and_batchnorm_statistics():
    paddle.seed(0)
    model = nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    ema = ModelEma(model, decay=0.9)
    assert not ema.module.training and all(p.stop_gradient for p in ema.module.parameters())
    expected = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    for step in range(4):
        model.train()
        model(paddle.randn([4, 3, 8, 8])).sum().backward()  # moves BN running stats too
        optimizer.step()
        optimizer.clear_grad()
        ema.update(model)
        for k, v in model.state_dict().items():
            expected[k] = 0.9 * expected[k] + 0.1 * v.numpy()
    got = ema.state_dict()
    assert set(got) == set(expected) and any("_mean" in k for k in got)
    for k, v in got.items():
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert not np.allclose(v.numpy(), model.state_dict()[k].numpy())  # really an average, not a copy
    wrapped = ModelEma(paddle.DataParallel(model), decay=0.5)  # multi-GPU training wraps the model
    wrapped.update(paddle.DataParallel(model))
    assert set(wrapped.state_dict()) == set(model.state_dict())
    restored = ModelEma(model, decay=0.9)
    restored.set_state_dict(got)
    for k, v in restored.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), got[k].numpy())
    restored.set(model)
    for k, v in restored.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), model.state_dict()[k].numpy())
