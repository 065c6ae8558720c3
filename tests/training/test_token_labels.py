"""Token labels: file formats, targets (roi_align alignment, smoothing, mixing) and the losses,
against PyTorch/numpy references written here from the official TokenLabeling rules."""

import pickle
import sys

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as TF

from ppim.training.losses import (TokenLabelCrossEntropy, TokenLabelSoftTargetCrossEntropy,
                                  kl_div_batchmean, soft_target_cross_entropy)
from ppim.training.token_labels.formats import (PACKED_META, PackedLabelWriter, TokenLabelError,
                                                convert_token_labels, label_key, open_token_labels,
                                                read_official_label, write_official_label)
from ppim.training.token_labels.targets import align_label_maps, token_label_target
from token_label_reference import (reference_roi_align, reference_soft_ce, reference_target,
                                   reference_token_label_ce)


def random_label(rng, k=5, side=6, classes=20):
    scores = rng.standard_normal((k, side, side)) * 3
    index = np.stack([rng.choice(classes, k, replace=False) for _ in range(side * side)], 1)
    return np.stack([scores, index.reshape(k, side, side)]).astype(np.float16)


# --- formats -----------------------------------------------------------------------------------
@pytest.mark.smoke
def test_official_file_reads_without_torch_exactly_as_torch_load(tmp_path, monkeypatch):
    label = random_label(np.random.default_rng(0), side=18, classes=1000)
    path = tmp_path / "n01440764" / "n01440764_10026.pt"
    path.parent.mkdir()
    torch.save(torch.from_numpy(label), path)
    expected = torch.load(path).numpy()
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    got = read_official_label(path)
    assert got.dtype == np.float16 and got.shape == (2, 5, 18, 18)
    assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))
    assert np.array_equal(open_token_labels(tmp_path)["n01440764/n01440764_10026"], expected)


def test_official_file_written_without_torch_reads_with_torch_load(tmp_path):
    label = random_label(np.random.default_rng(1))
    write_official_label(tmp_path / "a" / "b.pt", label)
    loaded = torch.load(tmp_path / "a" / "b.pt", weights_only=True)
    assert loaded.dtype == torch.float16 and np.array_equal(loaded.numpy(), label)


def test_packed_and_official_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(2)
    labels = {f"c{c}/img_{i}": random_label(rng) for c in range(2) for i in range(3)}
    labels["c0/img_0"][0, 0, 0, 0] = np.float16(-0.0)  # bit-exact, signed zero included
    for key, label in labels.items():
        (tmp_path / "src" / key).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(label), tmp_path / "src" / f"{key}.pt")
    assert convert_token_labels(tmp_path / "src", tmp_path / "packed", "packed") == 6
    packed = open_token_labels(tmp_path / "packed")
    assert packed.format == "packed" and sorted(labels) == packed.keys()
    assert len(pickle.dumps(packed)) < 1000  # workers re-map the arrays, nothing is copied
    assert np.array_equal(pickle.loads(pickle.dumps(packed))["c1/img_2"], labels["c1/img_2"])
    convert_token_labels(tmp_path / "packed", tmp_path / "back", "official")
    for key, label in labels.items():
        assert np.array_equal(packed[key].view(np.uint16), label.view(np.uint16))
        back = torch.load(tmp_path / "back" / f"{key}.pt", weights_only=True).numpy()
        assert np.array_equal(back.view(np.uint16), label.view(np.uint16))


def test_packed_writer_resumes_and_reader_refuses_an_unfinished_part(tmp_path):
    rng = np.random.default_rng(3)
    keys = ["a/x", "a/y", "b/z"]
    labels = [random_label(rng) for _ in keys]
    writer = PackedLabelWriter(tmp_path, keys, labels[0].shape)
    writer.write([1], labels[1][None])
    writer.close()
    with pytest.raises(TokenLabelError, match="incomplete"):
        open_token_labels(tmp_path)
    writer = PackedLabelWriter(tmp_path, keys, labels[0].shape)  # resume: row 1 is kept
    assert writer.pending() == [0, 2]
    writer.write([0, 2], np.stack([labels[0], labels[2]]))
    writer.close()
    reader = open_token_labels(tmp_path)
    assert all(np.array_equal(reader[k], v) for k, v in zip(keys, labels))
    with pytest.raises(TokenLabelError, match="other run"):
        PackedLabelWriter(tmp_path, keys, labels[0].shape, part=0, num_parts=2)


def test_bad_label_files_give_one_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    torch.save(torch.zeros(3, 5, 4, 4, dtype=torch.float16), tmp_path / "c" / "shape.pt")
    torch.save({"x": torch.zeros(2)}, tmp_path / "c" / "dict.pt")
    negative = torch.zeros(2, 5, 4, 4, dtype=torch.float16)
    negative[1, 0, 0, 0] = -3
    torch.save(negative, tmp_path / "c" / "neg.pt")
    (tmp_path / "c" / "junk.pt").write_bytes(b"PK\x03\x04 truncated")
    labels = open_token_labels(tmp_path)
    for stem, message in [("shape", r"\[2, k, H, W\]"), ("dict", "one tensor"),
                          ("neg", "non-negative integers"), ("junk", "unreadable"),
                          ("missing", "no token label")]:
        with pytest.raises(TokenLabelError, match=message):
            labels[f"c/{stem}"]
    (tmp_path / PACKED_META).write_text('{"format": "something else"}')
    with pytest.raises(TokenLabelError, match="not a ppim packed"):
        open_token_labels(tmp_path)


def test_label_key_follows_the_official_rule():
    assert label_key("/data/train/n01440764/n01440764_10026.JPEG") == "n01440764/n01440764_10026"
    assert label_key("root/cls/a.b.png") == "cls/a"


# --- roi_align and the target ------------------------------------------------------------------
def test_roi_align_alignment_matches_torchvision_definition_with_the_official_box_order():
    rng = np.random.default_rng(4)
    maps = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    coords = np.array([[0.1, 0.3, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.55, 0.05, 0.2, 0.9]], np.float32)
    cls, tokens = align_label_maps(paddle.to_tensor(maps), paddle.to_tensor(coords), 5)
    for i in range(3):
        top, left, h, w = coords[i].astype(np.float64)
        # (top, left, bottom, right) read as (x1, y1, x2, y2): the box is transposed on purpose
        box = np.array([top, left, top + h, left + w]) * 9 - 0.5
        np.testing.assert_allclose(tokens.numpy()[i], reference_roi_align(maps[i], box, 5).reshape(4, 25),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cls.numpy()[i], reference_roi_align(maps[i], box, 1)[:, 0, 0],
                                   rtol=1e-5, atol=1e-5)
    # the transposition is real: a non-square crop differs from the (y, x)-ordered reading
    box_yx = np.array([0.3, 0.1, 0.9, 0.6]) * 9 - 0.5
    assert not np.allclose(tokens.numpy()[0], reference_roi_align(maps[0], box_yx, 5).reshape(4, 25))


@pytest.mark.parametrize("size", [1, 3])
def test_token_label_target_matches_the_official_pipeline(size):
    rng = np.random.default_rng(5)
    classes, batch = 20, 4
    labels = np.stack([random_label(rng, side=7, classes=classes) for _ in range(batch)])
    coords = rng.uniform(0.05, 0.5, (batch, 4)).astype(np.float32)
    truth = rng.integers(0, classes, batch)
    got = token_label_target(paddle.to_tensor(labels), paddle.to_tensor(coords),
                             paddle.to_tensor(truth), classes, size, smoothing=0.1).numpy()
    expected = reference_target(labels, coords, truth, classes, size, 0.1)
    assert got.shape == (batch, classes, 2 + (size * size if size > 1 else 0))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    mixed = token_label_target(paddle.to_tensor(labels), paddle.to_tensor(coords),
                               paddle.to_tensor(truth), classes, size, smoothing=0.1, lam=0.3).numpy()
    np.testing.assert_allclose(mixed, 0.3 * expected + 0.7 * expected[::-1], rtol=1e-5, atol=1e-6)


# --- losses ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dense_weight,cls_weight,ground_truth,box,dense_target", [
    (1.0, 1.0, False, (1, 0, 3, 2), True),
    (0.5, 2.0, True, (0, 0, 0, 0), True),
    (1.0, 0.5, True, (0, 1, 3, 3), True),
    (1.0, 1.0, False, (2, 2, 3, 3), False),
])
def test_token_label_cross_entropy_matches_official_semantics(dense_weight, cls_weight, ground_truth,
                                                              box, dense_target):
    rng = np.random.default_rng(6)
    batch, grid, classes = 4, 3, 7
    cls = rng.standard_normal((batch, classes)).astype(np.float32)
    aux = rng.standard_normal((batch, grid * grid, classes)).astype(np.float32)
    shape = (batch, classes, 2 + grid * grid) if dense_target else (batch, classes)
    target = rng.dirichlet(np.ones(classes), shape[:1] + shape[2:]).astype(np.float32)
    target = np.moveaxis(target, -1, 1) if dense_target else target
    if dense_target:  # make ground truth and cls target disagree for one sample
        target[0, :, 0] = np.eye(classes)[np.argmin(target[0, :, 1])]
        target[1, :, 0] = np.eye(classes)[np.argmax(target[1, :, 1])]
    loss_fn = TokenLabelCrossEntropy(dense_weight, cls_weight, classes=classes, ground_truth=ground_truth)
    p_cls, p_aux = paddle.to_tensor(cls, stop_gradient=False), paddle.to_tensor(aux, stop_gradient=False)
    loss = loss_fn((p_cls, p_aux, box), paddle.to_tensor(target))
    loss.backward()
    t_cls, t_aux = torch.tensor(cls, requires_grad=True), torch.tensor(aux, requires_grad=True)
    expected, _ = reference_token_label_ce(t_cls, t_aux, box, torch.tensor(target), dense_weight,
                                           cls_weight, ground_truth)
    expected.backward()
    np.testing.assert_allclose(float(loss), float(expected.detach()), rtol=1e-5)
    np.testing.assert_allclose(p_cls.grad.numpy(), t_cls.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(p_aux.grad.numpy(), t_aux.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_mixtoken_mixes_the_cls_target_by_the_box_area():
    batch, classes = 4, 5
    target = np.zeros((batch, classes, 2 + 16), np.float32)
    target[:, :, 1] = np.eye(classes)[:batch]
    cls_target, _ = TokenLabelCrossEntropy(classes=classes).targets(paddle.to_tensor(target), (0, 1, 2, 4), 16)
    lam = 1 - 2 * 3 / 16
    expected = lam * np.eye(classes)[:batch] + (1 - lam) * np.eye(classes)[:batch][::-1]
    np.testing.assert_allclose(cls_target.numpy(), expected, rtol=1e-6)


def test_soft_target_losses_and_kl_match_torch():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    target = rng.dirichlet(np.ones(9), 3).astype(np.float32)  # repeated twice, the official rule
    np.testing.assert_allclose(float(soft_target_cross_entropy(paddle.to_tensor(x), paddle.to_tensor(target))),
                               float(reference_soft_ce(torch.tensor(x), torch.tensor(target))), rtol=1e-5)
    pair = np.stack([target, target[::-1]], -1)  # (B, C, 2): the cls target is column 1
    got = TokenLabelSoftTargetCrossEntropy()(paddle.to_tensor(x[:3]), paddle.to_tensor(pair))
    np.testing.assert_allclose(float(got), float(reference_soft_ce(torch.tensor(x[:3]),
                                                                   torch.tensor(target[::-1].copy()))), rtol=1e-5)
    probs = rng.dirichlet(np.ones(9), 6).astype(np.float32)
    probs[0, 0] = 0
    kl = torch.nn.KLDivLoss(reduction="batchmean")(TF.log_softmax(torch.tensor(x), 1), torch.tensor(probs))
    np.testing.assert_allclose(float(kl_div_batchmean(paddle.to_tensor(x), paddle.to_tensor(probs))),
                               float(kl), rtol=1e-5)


def test_hostile_packed_index_is_refused_without_allocating_or_escaping(tmp_path):
    label = random_label(np.random.default_rng(8))
    writer = PackedLabelWriter(tmp_path, ["a/x"], label.shape)
    writer.write([0], label[None])
    writer.close()
    keys = tmp_path / "part-00000-of-00001.keys.txt"
    keys.write_text("../escape\n")
    with pytest.raises(TokenLabelError, match="not a '<class folder>/<image stem>' label key"):
        open_token_labels(tmp_path)
    meta = tmp_path / PACKED_META
    meta.write_text(meta.read_text().replace("[\n    2,\n    5,", "[\n    2,\n    5000000000,"))
    with pytest.raises(TokenLabelError, match="implausible token-label shape"):
        open_token_labels(tmp_path)
