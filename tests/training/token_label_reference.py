"""PyTorch/numpy references of the official token-labeling rules (TokenLabeling tlt/data/mixup.py,
tlt/loss/cross_entropy.py, torchvision's roi_align), written from their definitions for the tests."""
import math

import numpy as np
import torch
import torch.nn.functional as TF


def _bilinear(image, y, x):
    """torchvision roi_align's bilinear sample of image (C, H, W) at (y, x)."""
    height, width = image.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(image.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * image[:, y0, x0] + (1 - ly) * lx * image[:, y0, x1]
            + ly * (1 - lx) * image[:, y1, x0] + ly * lx * image[:, y1, x1])


def reference_roi_align(image, box, size):
    """torchvision.ops.roi_align(aligned=False, sampling_ratio=-1, spatial_scale=1) of one box
    (x1, y1, x2, y2) on image (C, H, W), from its definition: bins averaged over an adaptive grid."""
    x1, y1, x2, y2 = (float(v) for v in box)
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_w, grid_h = math.ceil(roi_w / size), math.ceil(roi_h / size)
    out = np.zeros((image.shape[0], size, size))
    for ph in range(size):
        for pw in range(size):
            acc = 0
            for iy in range(grid_h):
                for ix in range(grid_w):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    acc = acc + _bilinear(image, y, x)
            out[:, ph, pw] = acc / max(grid_h * grid_w, 1)
    return out


def reference_target(labels, coords, truth, classes, size, smoothing):
    """The official mixup.get_labelmaps_with_coords, in torch: scatter, transposed box, roi_align,
    softmax, smoothing, [ground truth, cls, tokens]."""
    off = smoothing / classes
    on = 1 - smoothing + off
    labels = torch.from_numpy(labels.astype(np.float32))
    batch, _, _, height, width = labels.shape
    maps = torch.zeros(batch, classes, height, width).scatter_(1, labels[:, 1].long(), labels[:, 0])
    box = torch.from_numpy(coords).double()
    box = torch.cat([box[:, :2], box[:, :2] + box[:, 2:]], 1) * width - 0.5
    cls = torch.tensor(np.stack([reference_roi_align(m, b, 1) for m, b in zip(maps.double().numpy(),
                                                                               box.numpy())]))
    tokens = torch.tensor(np.stack([reference_roi_align(m, b, size) for m, b in
                                    zip(maps.double().numpy(), box.numpy())]))
    soft = cls.reshape(batch, classes, 1)
    if size > 1:  # the official code adds the token columns only for a token grid
        soft = torch.cat([soft, tokens.reshape(batch, classes, -1)], 2)
    soft = TF.softmax(soft, 1) * on + off
    gt = torch.full((batch, classes), off, dtype=torch.float64).scatter_(1, torch.tensor(truth)[:, None], on)
    return torch.cat([gt[:, :, None], soft], 2).numpy()


def reference_soft_ce(x, target):
    if target.shape[0] != x.shape[0]:
        target = target.repeat(x.shape[0] // target.shape[0], 1)
    return torch.sum(-target * TF.log_softmax(x, dim=-1), dim=-1).mean()


def reference_token_label_ce(cls, aux, box, target, dense_weight, cls_weight, ground_truth):
    """Official TokenLabelCrossEntropy semantics, in torch: (loss, the mixed cls target) as
    SuperViT's variant returns them."""
    (r1, c1, r2, c2), (batch, tokens, classes) = box, aux.shape
    if target.ndim == 2:
        t_cls, t_aux = target, target.repeat(1, tokens).reshape(batch * tokens, classes)
    else:
        t_cls = target[:, :, 1]
        if ground_truth:
            gt = target[:, :, 0]
            ratio = (0.9 - 0.4 * (gt.max(-1)[1] == t_cls.max(-1)[1])).unsqueeze(-1)
            t_cls = t_cls * ratio + gt * (1 - ratio)
        t_aux = target[:, :, 2:].transpose(1, 2).reshape(-1, classes)
    lam = 1 - (r2 - r1) * (c2 - c1) / tokens
    if lam < 1:
        t_cls = lam * t_cls + (1 - lam) * t_cls.flip(0)
    return (cls_weight * reference_soft_ce(cls, t_cls)
            + dense_weight * reference_soft_ce(aux.reshape(-1, classes), t_aux)), t_cls
