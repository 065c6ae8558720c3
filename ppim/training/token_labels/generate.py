"""Generate token labels with a teacher model (TokenLabeling's generate_label.py): for every training
image, the teacher's per-token class scores at its eval transforms, top-k per token, saved as float16
[2, k, H, W] (scores, class indices) in the official or the packed layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import paddle

from ...data import BatchLoader, ImageDataset
from ...fileio import remove_quietly, write_json
from .formats import PACKED_META, TokenLabelError, label_key, open_label_writer

__all__ = ["TEACHER_FILE", "dense_scores", "teacher_labels", "teacher_record", "make_token_labels"]

#: What made the labels in an output folder: teacher name, weights sha256, constructor kwargs, top-k.
TEACHER_FILE = "teacher.json"


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


def teacher_record(model: paddle.nn.Layer, topk: int = 5) -> Dict[str, Any]:
    """What identifies the labels a teacher makes: its registered name, the sha256 of its weights
    (None: random weights), the constructor kwargs it was built with (num_classes included) and top-k."""
    from ...builder import describe_model

    described = describe_model(model)
    info = getattr(model, "pretrained_info", None) or {}
    return {"teacher": described["name"], "weights_sha256": info.get("sha256"),
            "kwargs": {**described["kwargs"], "num_classes": described["num_classes"]}, "topk": int(topk)}


def _claim_output(output: Path, record: Dict[str, Any], fmt: str, relabel: bool, rank: int, world_size: int) -> bool:
    """Refuse an output holding labels of another teacher unless ``relabel`` (then this rank's old
    labels are set to be redone); record the teacher. Returns whether every label is to be redone."""
    path = output / TEACHER_FILE
    record = json.loads(json.dumps(record))
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        old = "unreadable"
    has_labels = (output / PACKED_META).is_file() or any(output.glob("*/*.pt"))
    if has_labels and old != record and not relabel:
        made_by = (f"teacher {old.get('teacher')!r} (weights sha256 {str(old.get('weights_sha256'))[:12]}, "
                   f"kwargs {old.get('kwargs')}, top-{old.get('topk')})" if isinstance(old, dict)
                   else f"a teacher it does not record ({path} is {'missing' if old is None else 'unreadable'})")
        raise TokenLabelError(f"{output} holds token labels made by {made_by}, not by {record['teacher']} with these "
                              f"weights and arguments: pass --relabel to label every image again, or choose "
                              f"a new --output")
    redo = has_labels and old != record
    if redo and fmt == "packed":  # this rank's part is made again (its files are ours: the record says so)
        part = f"part-{rank:05d}-of-{world_size:05d}"
        for name in (f"{part}.npy", f"{part}.keys.txt", f"{part}.done.npy") + ((PACKED_META,) if rank == 0 else ()):
            remove_quietly(output / name)
    if rank == 0:
        write_json(path, record)
    return redo


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
                      log: Optional[Callable[[str], None]] = None, teacher: Optional[Dict[str, Any]] = None,
                      relabel: bool = False) -> Dict[str, int]:
    """Write token labels of every image of ``dataset`` (its transforms: the teacher's eval ones)
    to ``output`` in ``fmt`` ('packed' or 'official'). Resumable: labels already written are
    kept. Under several processes, rank r labels images r, r + W, ... (packed: its own part).
    ``skip_bad``: unreadable images get no labels and are reported once each through ``log``
    instead of stopping the run. ``output/teacher.json`` records the teacher (``teacher``:
    teacher_record(model, topk) by default); labels of another teacher there are refused
    unless ``relabel`` (then redone). Returns {"images": this rank's images, "written": labelled
    now, "kept": found done, "skipped": unreadable}."""
    from tqdm import tqdm

    model.eval()
    shard = list(range(rank, len(dataset), world_size))
    keys = [label_key(dataset.samples[i][0]) for i in shard]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{dataset.root}: two images share a label key (class folder / name up to the "
                         f"first dot); rename one")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    redo = _claim_output(output, teacher or teacher_record(model, topk=topk), fmt, relabel, rank, world_size)
    probe = BatchLoader(dataset, 1, 0, indices=shard, skip_bad=skip_bad)._probe_shape()
    if probe is None:
        raise ValueError(f"{dataset.root}: no readable image to label")
    shape = teacher_labels(model, paddle.zeros([1, *probe], dtype="float32"), topk).shape[1:]
    writer = open_label_writer(fmt, output, keys, shape, rank, world_size)
    pending = list(range(len(keys))) if redo else writer.pending()
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
