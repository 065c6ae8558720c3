"""Generate token labels with a teacher model (TokenLabeling's generate_label.py): for every training
image, the teacher's per-token class scores at its eval transforms, top-k per token, saved as float16
[2, k, H, W] (scores, class indices) in the official or the packed layout."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import paddle

from ...data import BatchLoader, ImageDataset
from .formats import label_key, open_label_writer

__all__ = ["dense_scores", "teacher_labels", "make_token_labels"]


def dense_scores(model: paddle.nn.Layer, images: paddle.Tensor) -> paddle.Tensor:
    """Per-token class scores (B, H, W, C) of a ViT-style teacher: its aux (token) head on the
    final-norm patch tokens, or the classifier head when it has none (as the official
    TokenLabelHead). The token grid must be square."""
    tokens = model.forward_features(images)[:, 1:]
    head = model.aux_head if getattr(model, "aux_head", None) is not None else model.head
    scores = head(tokens)
    side = int(round(scores.shape[1] ** 0.5))
    if side * side != scores.shape[1]:
        raise ValueError(f"{scores.shape[1]} patch tokens do not form a square grid")
    return scores.reshape([scores.shape[0], side, side, scores.shape[2]])


@paddle.no_grad()
def teacher_labels(model: paddle.nn.Layer, images: paddle.Tensor, topk: int = 5) -> np.ndarray:
    """Token labels (B, 2, k, H, W) float16: top-k scores and their class indices per token (k at
    most the number of classes)."""
    scores = dense_scores(model, images).astype("float32")
    values, indices = paddle.topk(scores, k=min(topk, scores.shape[-1]), axis=-1)
    stacked = paddle.stack([values, indices.astype("float32")], axis=1)  # (B, 2, H, W, k)
    return stacked.transpose([0, 1, 4, 2, 3]).numpy().astype(np.float16)


def make_token_labels(model: paddle.nn.Layer, dataset: ImageDataset, output: "str | Path", *,
                      fmt: str = "packed", topk: int = 5, batch_size: int = 64,
                      num_workers: Optional[int] = None, rank: int = 0, world_size: int = 1,
                      progress: bool = True, skip_bad: bool = False,
                      log: Optional[Callable[[str], None]] = None) -> Dict[str, int]:
    """Write token labels of every image of ``dataset`` (its transforms: the teacher's eval ones)
    to ``output`` in ``fmt`` ('packed' or 'official'). Resumable: labels already written are
    kept. Under several processes, rank r labels images r, r + W, ... (packed: its own part).
    ``skip_bad``: unreadable images get no labels and are reported once each through ``log``
    instead of stopping the run. Returns {"images": this rank's images, "written": labelled now,
    "kept": found done, "skipped": unreadable}."""
    from tqdm import tqdm

    model.eval()
    shard = list(range(rank, len(dataset), world_size))
    keys = [label_key(dataset.samples[i][0]) for i in shard]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{dataset.root}: two images share a label key (class folder / name up to the "
                         f"first dot); rename one")
    probe = BatchLoader(dataset, 1, 0, indices=shard, skip_bad=skip_bad)._probe_shape()
    if probe is None:
        raise ValueError(f"{dataset.root}: no readable image to label")
    shape = teacher_labels(model, paddle.zeros([1, *probe], dtype="float32"), topk).shape[1:]
    writer = open_label_writer(fmt, output, keys, shape, rank, world_size)
    pending = writer.pending()
    position = {index: p for p, index in enumerate(shard)}
    loader = BatchLoader(dataset, batch_size, num_workers, indices=[shard[i] for i in pending], skip_bad=skip_bad)
    written, skipped = 0, 0
    with tqdm(total=len(keys), initial=len(keys) - len(pending), unit="img", desc="token labels",
              disable=not progress or rank != 0, dynamic_ncols=True) as bar:
        for batch in loader:
            for _, path, reason in batch.bad:
                skipped += 1
                if log is not None:
                    log(f"skipped {path}: {reason}")
            if len(batch.labels):
                labels = teacher_labels(model, paddle.to_tensor(batch.images), topk)
                writer.write([position[int(i)] for i in batch.indices], labels)
                written += len(labels)
            bar.update(len(batch.labels) + len(batch.bad))
    writer.close()
    return {"images": len(keys), "written": written, "kept": len(keys) - len(pending), "skipped": skipped}
