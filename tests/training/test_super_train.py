"""SuperViT training step: the four sub-network losses and the accumulated gradients equal a
PyTorch reference step written from the official loops (SuperViT main_lvvit.py, deit/engine.py)
with the same weights, batch, sub-networks and MixToken box."""

import random

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as TF

import ppim
from model_utils import randomize, torch_state
from token_label_reference import reference_soft_ce, reference_token_label_ce
from torch_reference import SUPERVIT_SIZES, TorchSuperViT

from ppim.training.losses import TokenLabelCrossEntropy, soft_target_cross_entropy
from ppim.training.supervit_step import SuperStep, mixtoken_boxes, training_subnets

ARCH = {
    "super_deit_s": dict(deit=True, mlp_ratio=4.0, qkv_bias=True, eps=1e-6, skip_lam=1.0, aux_weight=None),
    "super_lvvit_s": dict(deit=False, mlp_ratio=3.0, qkv_bias=False, eps=1e-5, skip_lam=2.0, aux_weight=0.25),
}
DIM, DEPTH, HEADS, CLASSES = 48, 5, 3, 10  # block 3 keeps tokens, block 4 sees the kept set


class TrainReference(TorchSuperViT):
    """The official SuperViT training forward: MixToken on the stem's grid with the given box, and
    for LV-ViT's (224, 1) the triple (cls, aux with the box swapped back, box)."""

    def train_forward(self, x, img_size, keep_ratio, box):
        x = TF.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=True)
        feat = self.patch_embed(x)
        lvvit = self.arch["aux_weight"] is not None
        r1, c1, r2, c2 = box
        if lvvit:
            feat = feat.clone()
            feat[:, :, r1:r2, c1:c2] = feat.flip(0)[:, :, r1:r2, c1:c2]
        grid = feat.shape[2]
        x = feat.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = x + self.pos_embed_list[SUPERVIT_SIZES.index(img_size)]
        for index, block in enumerate(self.blocks):
            x = block(x, keep_ratio if index in (3, 6, 9) else 1)
        x = self.norm(x)
        cls = self.head(x[:, 0])
        if not (lvvit and img_size == 224 and keep_ratio == 1):
            return cls
        aux = self.aux_head(x[:, 1:]).reshape(x.shape[0], grid, grid, -1).clone()
        aux[:, r1:r2, c1:c2] = aux.flip(0)[:, r1:r2, c1:c2].clone()
        return cls, aux.reshape(x.shape[0], grid * grid, -1), box


def reference_step(ref, name, images, target, subnets, boxes):
    """main_lvvit.py / deit/engine.py's inner loop: one backward per sub-network."""
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    losses = []
    for index, (img_size, keep_ratio) in enumerate(subnets):
        out = ref.train_forward(images, img_size, keep_ratio, boxes.get(img_size, (0, 0, 0, 0)))
        if name == "super_lvvit_s":
            if index == 0:
                loss, new_target = reference_token_label_ce(*out, target, 1.0, 1.0, False)
                teacher = TF.softmax(out[0].detach(), dim=1)
            elif index == 2:
                loss = reference_soft_ce(out, new_target)
            else:
                loss = kl(TF.log_softmax(out, dim=1), teacher)
        else:
            if index % 2 == 0:
                loss = reference_soft_ce(out, target)
                teacher = TF.softmax(out.detach(), dim=1)
            else:
                loss = kl(TF.log_softmax(out, dim=1), teacher)
        loss.backward()
        losses.append(float(loss.detach()))
    return losses


def linear_names(model):
    return {f"{n}.weight" for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}


@pytest.mark.parametrize("name,subnets", [
    ("super_lvvit_s", [(224, 1.0), (224, 0.5), (160, 1.0), (160, 0.7)]),
    ("super_deit_s", [(224, 1.0), (224, 0.7), (128, 1.0), (128, 0.5)]),
])
def test_super_step_losses_and_gradients_equal_a_torch_reference_step(name, subnets):
    extra = {"stem_dim": 8} if name == "super_lvvit_s" else {}
    model = ppim.create_model(name, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES, **extra)
    randomize(model, seed=3)
    ref = TrainReference(ARCH[name], DIM, DEPTH, HEADS, CLASSES)
    ref.load_state_dict(torch_state(model), strict=False)
    model.train()
    ref.train()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    if name == "super_lvvit_s":
        target = np.moveaxis(rng.dirichlet(np.ones(CLASSES), (4, 2 + 196)), -1, 1).astype(np.float32)
        boxes = {224: (2, 3, 9, 11), 160: (1, 2, 6, 7)}
        criterion = TokenLabelCrossEntropy(classes=CLASSES)
    else:
        target = rng.dirichlet(np.ones(CLASSES), 4).astype(np.float32)  # a mixup target
        boxes = {}
        criterion = soft_target_cross_entropy
    step = SuperStep(criterion)
    step(model, paddle.to_tensor(images), paddle.to_tensor(target), lambda loss: loss.backward(), subnets,
         boxes or None)
    losses = step.last_losses
    expected = reference_step(ref, name, torch.tensor(images), torch.tensor(target), subnets, boxes)
    np.testing.assert_allclose([float(v) for v in losses], expected, rtol=1e-4)
    assert expected[1] > 0 and expected[3] > 0  # the KL terms are live, not zero

    grads = {n: p.grad for n, p in ref.named_parameters()}
    linear = linear_names(model)
    checked = 0
    for pname, param in model.named_parameters():
        if param.stop_gradient:  # BN running statistics
            continue
        if grads[pname] is None:  # positional embeddings of sizes this step did not use
            assert param.grad is None or not np.any(param.grad.numpy()), pname
            continue
        got = param.grad.numpy()
        want = grads[pname].numpy()
        if pname in linear:
            want = want.T
        scale = np.abs(want).max()
        assert scale > 0, pname
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=pname)
        checked += 1
    assert checked == sum(g is not None for g in grads.values()) >= len(grads) - 2


def test_training_subnets_follow_the_official_draws():
    sizes, ratios = (128, 160, 192, 224), (0.5, 0.7, 1.0)
    seen = set()
    for seed in range(200):
        a, b = random.Random(seed), random.Random(seed)
        subnets = training_subnets(sizes, ratios, a)
        r1, s, r2 = b.choice([0.5, 0.7]), b.choice([128, 160, 192]), b.choice([0.5, 0.7])
        assert subnets == [(224, 1.0), (224, r1), (s, 1.0), (s, r2)]
        seen.add(subnets[2][0])
    assert seen == {128, 160, 192}
    assert training_subnets((32,), ratios, random.Random(0))[0] == (32, 1.0)  # one size: the full-size pair
    assert len(training_subnets((32,), ratios, random.Random(0))) == 2
    assert training_subnets((32, 64), (1.0,), random.Random(0)) == [(64, 1.0), (32, 1.0)]


def test_super_step_draws_resume_from_its_state():
    step = SuperStep(soft_target_cross_entropy, rng=random.Random(3))
    model = ppim.create_model("super_deit_s", embed_dim=DIM, depth=1, num_heads=HEADS, num_classes=CLASSES)
    step.draw(model)
    state = step.state_dict()
    ahead = [step.draw(model)[0] for _ in range(5)]
    resumed = SuperStep(soft_target_cross_entropy, rng=random.Random(99))
    resumed.set_state_dict({"rng": list(state["rng"])})  # as a checkpoint may hand it back
    assert [resumed.draw(model)[0] for _ in range(5)] == ahead


def test_mixtoken_boxes_scale_one_box_per_grid():
    np.random.seed(5)
    boxes = mixtoken_boxes((128, 160, 192, 224))
    np.random.seed(5)
    lam = np.random.beta(1, 1)
    cut = int(14 * np.sqrt(1 - lam))
    cy, cx = np.random.randint(14), np.random.randint(14)  # official: rows from the first draw
    full = tuple(int(np.clip(v, 0, 14)) for v in (cy - cut // 2, cx - cut // 2, cy + cut // 2, cx + cut // 2))
    assert boxes[224] == full
    for size, grid in ((128, 8), (160, 10), (192, 12)):
        assert boxes[size] == tuple(int(v // (14 / grid)) for v in full)
