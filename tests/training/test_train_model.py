"""Fine-tuning the ways users do it without ppim's tools: paddle.Model (no InputSpec) with LV-ViT and
both super models, a plain training loop, and ppim 1.x's README fine-tuning example, unchanged."""
import copy

import numpy as np
import paddle
import pytest

import ppim
from shapes import write_split

TINY = {
    "lvvit_s": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, stem_dim=8),
    "super_lvvit_s": dict(img_size=64, img_sizes=(32, 64), embed_dim=32, depth=10, num_heads=2, stem_dim=8),
    "super_deit_s": dict(img_size=64, img_sizes=(32, 64), embed_dim=32, depth=10, num_heads=2),
}


class RandomImages(paddle.io.Dataset):
    """(image (3, S, S) float32, label (1,) int64) pairs, the layout paddle.Model's examples use."""

    def __init__(self, n, size, classes, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.standard_normal((n, 3, size, size)).astype("float32")
        self.labels = rng.integers(0, classes, (n, 1)).astype("int64")

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self):
        return len(self.images)


def eval_logits(net, images):
    net.eval()
    with paddle.no_grad():
        return net(paddle.to_tensor(images)).numpy()


@pytest.mark.smoke
@pytest.mark.parametrize("name", list(TINY))
def test_paddle_model_fit_evaluate_predict(name):
    paddle.seed(0)
    net = ppim.create_model(name, num_classes=5, **TINY[name])
    before = copy.deepcopy(net.state_dict())
    model = paddle.Model(net)  # no InputSpec: the model takes the image only
    model.prepare(paddle.optimizer.AdamW(1e-3, parameters=net.parameters()), paddle.nn.CrossEntropyLoss(),
                  paddle.metric.Accuracy(topk=(1, 5)))
    size = TINY[name]["img_size"]
    train, val = RandomImages(8, size, 5), RandomImages(6, size, 5, seed=1)
    model.fit(train, val, epochs=1, batch_size=4, verbose=0)
    changed = [k for k, v in net.state_dict().items() if not np.array_equal(v.numpy(), before[k].numpy())]
    assert "head.weight" in changed and any(k.startswith("blocks.0.") for k in changed)

    result = model.evaluate(val, batch_size=3, verbose=0)
    logits = eval_logits(net, val.images)
    assert logits.shape == (6, 5)
    top1 = np.mean(logits.argmax(1) == val.labels[:, 0])
    assert result["acc_top1"] == pytest.approx(top1)  # paddle.Model evaluates what model(x) returns in eval mode
    assert result["acc_top5"] == pytest.approx(1.0)  # 5 classes
    expected_loss = paddle.nn.functional.cross_entropy(paddle.to_tensor(logits[3:]), paddle.to_tensor(val.labels[3:]))
    assert result["loss"][0] == pytest.approx(float(expected_loss), rel=1e-4)  # the last batch's loss

    predicted = np.concatenate(model.predict(RandomImages(6, size, 5, seed=1), batch_size=4, verbose=0)[0])
    np.testing.assert_allclose(predicted, logits, rtol=1e-5, atol=1e-5)


def test_plain_training_loop_learns_in_train_mode():
    """CrossEntropyLoss()(model(x), y) in train mode: logits, no MixToken (x is not mixed behind the
    labels' back), so a fixed batch can be fitted."""
    paddle.seed(0)
    net = ppim.create_model("lvvit_s", num_classes=4, **TINY["lvvit_s"])
    data = RandomImages(8, 32, 4, seed=2)
    x, y = paddle.to_tensor(data.images), paddle.to_tensor(data.labels[:, 0])
    optimizer = paddle.optimizer.AdamW(3e-3, parameters=net.parameters())
    net.train()
    out = net(x)
    assert out.shape == [8, 4]
    cls, aux, _ = net.forward_train(x, bbox=(0, 0, 0, 0))  # the dense output with an empty MixToken box
    expected = cls.numpy() + net.aux_weight * aux.numpy().max(axis=1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)  # the eval formula, unmixed
    losses = []
    for _ in range(30):
        loss = paddle.nn.CrossEntropyLoss()(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    assert (eval_logits(net, data.images).argmax(1) == data.labels[:, 0]).all()


def test_ppim_1x_readme_finetuning_runs_unchanged(tmp_path):
    """ppim 1.1.0's README "Classification (PaddleHapi)" example with a local folder instead of Cifar100
    (paddle.vision.datasets.DatasetFolder), an LV-ViT (the example's model was rexnet_1_0, not in this
    zoo) made tiny by constructor arguments, sizes 256/224 -> 40/32, no download (pretrained=False)
    and a small batch; every API call is the README's."""
    write_split(tmp_path / "train", per_class=4, classes=3, seed=3)
    write_split(tmp_path / "val", per_class=2, classes=3, seed=4)
    import paddle.nn as nn
    import paddle.vision.transforms as T
    from paddle.vision.datasets import DatasetFolder

    from ppim import lvvit_s

    # Load the model
    model, val_transforms = lvvit_s(pretrained=False, return_transforms=True, class_dim=3, **TINY["lvvit_s"])

    # Use the PaddleHapi Model
    model = paddle.Model(model)

    # Set the optimizer
    opt = paddle.optimizer.Adam(learning_rate=0.001, parameters=model.parameters())

    # Set the loss function
    loss = nn.CrossEntropyLoss()

    # Set the evaluate metric
    metric = paddle.metric.Accuracy(topk=(1, 5))

    # Prepare the model
    model.prepare(optimizer=opt, loss=loss, metrics=metric)

    # Set the data preprocess
    train_transforms = T.Compose([
        T.Resize(40, interpolation='bicubic'),
        T.RandomCrop(32),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    ])

    # Load the dataset (a local folder instead of Cifar100)
    train_dataset = DatasetFolder(str(tmp_path / "train"), transform=train_transforms)
    val_dataset = DatasetFolder(str(tmp_path / "val"), transform=val_transforms)

    # Finetune the model
    model.fit(
        train_data=train_dataset,
        eval_data=val_dataset,
        batch_size=4,
        epochs=2,
        eval_freq=1,
        log_freq=1,
        save_dir=str(tmp_path / 'save_models'),
        save_freq=1,
        verbose=0,
        drop_last=False,
        shuffle=True,
        num_workers=0
    )
    assert (tmp_path / "save_models" / "final.pdparams").is_file()
    assert set(model.evaluate(val_dataset, batch_size=3, verbose=0)) == {"loss", "acc_top1", "acc_top5"}


def test_dense_logits_gradient_is_the_max_gradient():
    """Training takes the max over tokens by a gather (Paddle's max_grad kernel is very slow on CPU):
    the same values and the max's gradient (1 at each class's arg-max token), against numpy."""
    from ppim.layers import dense_logits

    rng = np.random.default_rng(0)
    cls_np, aux_np = rng.standard_normal((2, 3)), rng.standard_normal((2, 5, 3))
    cls = paddle.to_tensor(cls_np.astype("float32"), stop_gradient=False)
    aux = paddle.to_tensor(aux_np.astype("float32"), stop_gradient=False)
    out = dense_logits(cls, aux, 0.5)
    np.testing.assert_allclose(out.numpy(), cls_np + 0.5 * aux_np.max(axis=1), rtol=1e-6)
    (out * paddle.to_tensor([[1.0, 2.0, 3.0]])).sum().backward()
    expected = np.zeros_like(aux_np)
    for b in range(2):
        for c in range(3):
            expected[b, aux_np[b, :, c].argmax(), c] = 0.5 * (c + 1)
    np.testing.assert_allclose(aux.grad.numpy(), expected, rtol=1e-6)
    with paddle.no_grad():
        np.testing.assert_allclose(dense_logits(cls, aux, 0.5).numpy(), out.numpy())
