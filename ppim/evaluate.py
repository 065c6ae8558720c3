"""ImageNet-style accuracy evaluation: exact top-1/top-5 counts, model throughput, sub-network grids
of super models in one pass over the data, and sharded evaluation under paddle.distributed.launch.

The model side is a *runner*: a callable float32 images (B, 3, S, S) -> logits (B, C) as numpy,
built by ``ppim.deploy.create_runner`` (eager Paddle or Paddle Inference). The data side is
``ppim.data``: datasets and a loader that decodes in worker processes.

    results = evaluate(model, "/data/imagenet/val", batch_size=64, num_workers=2)
    results = evaluate(super_model, subnets="all")          # 12 sub-networks, each image decoded once
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from .data import SAMPLE_DIR, EvalLoader, ImageDataset, open_dataset, shard_indices
from .errors import InputError
from .fileio import check_writable, write_json
from .runtime import dist_info
from .subnet import Subnet, SubnetLike, current_subnet, parse_subnets, subnets_of
from .weights import weights_info

__all__ = ["Counts", "EvalSpec", "evaluate", "topk_correct", "parse_subnets", "subnet_table", "weights_info",
           "write_results", "format_summary"]

Runner = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> Tuple[int, ...]:
    """How many rows have their label among the k highest logits, for each k (exact integers).

    Ranks follow a stable descending sort: a class is ahead of the label if its logit is larger,
    or equal with a smaller class index (so top-1 is ``argmax == label``). NaN logits rank last."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} do not match labels {labels.shape}: expected (B, C) and (B,)")
    if not labels.size:
        return tuple(0 for _ in ks)
    num_classes = logits.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise InputError(f"label {bad} is outside the model's {num_classes} classes: do the dataset's "
                         f"labels match the model (class folders / list file vs num_classes)?")
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    logits = np.where(np.isnan(logits), -np.inf, logits)
    target = logits[np.arange(len(labels)), labels][:, None]
    ahead = (logits > target) | ((logits == target) & (np.arange(num_classes)[None, :] < labels[:, None]))
    rank = ahead.sum(axis=1)
    return tuple(int((rank < k).sum()) for k in ks)


@dataclass
class Counts:
    """Exact counts of one (sub-)network; ``forward_seconds`` times ``timed_images`` (batches after
    the first, the warm-up)."""
    correct1: int = 0
    correct5: int = 0
    num_images: int = 0
    timed_images: int = 0
    forward_seconds: float = 0.0

    @property
    def top1(self) -> Optional[float]:
        return 100.0 * self.correct1 / self.num_images if self.num_images else None

    @property
    def top5(self) -> Optional[float]:
        return 100.0 * self.correct5 / self.num_images if self.num_images else None

    @property
    def images_per_sec(self) -> Optional[float]:
        return self.timed_images / self.forward_seconds if self.forward_seconds > 0 else None


# ----------------------------------------------------------------------------------------------
# Sub-networks (parsed and checked by ppim.subnet.parse_subnets)
# ----------------------------------------------------------------------------------------------


def subnet_table(entries: Sequence[Dict[str, Any]], value: str = "top1", patch_size: int = 16,
                 title: str = "top-1 (%)") -> str:
    """The SuperViT paper's table layout: rows token grid (8x8 10x10 12x12 14x14), columns keep ratio (0.5 0.7 1).
    ``entries`` have img_size, keep_ratio and ``value``; cells not evaluated show "-"."""
    sizes = sorted({int(e["img_size"]) for e in entries})
    ratios = sorted({float(e["keep_ratio"]) for e in entries})
    cell = {(int(e["img_size"]), float(e["keep_ratio"])): e.get(value) for e in entries}
    ratio_label = [f"{r:g}" for r in ratios]
    lines = [f"{title:<12}" + "".join(f"{label:>8}" for label in ratio_label)]
    for size in sizes:
        grid = size // patch_size
        row = f"{grid}x{grid} ({size})"
        values = [cell.get((size, r)) for r in ratios]
        lines.append(f"{row:<12}" + "".join(f"{v:8.2f}" if v is not None else f"{'-':>8}" for v in values))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------------------------


def _all_reduce(values: Sequence[Union[int, float]], dtype: str, op: str) -> List:
    import paddle
    import paddle.distributed as dist

    tensor = paddle.to_tensor(np.asarray(values, dtype=dtype))
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor.numpy().tolist()


def _reduce_counts(counts: List[Counts], skipped: List[Tuple[int, str, str]], seconds: float
                   ) -> Tuple[List[Counts], List[Tuple[int, str, str]], float]:
    """Sum the counts of every rank (int64 all_reduce), the slowest rank's times (max), and gather
    the skipped images' names."""
    import paddle.distributed as dist

    ints = [v for c in counts for v in (c.correct1, c.correct5, c.num_images, c.timed_images)]
    ints = _all_reduce(ints + [len(skipped)], "int64", "SUM")
    times = _all_reduce([c.forward_seconds for c in counts] + [seconds], "float64", "MAX")
    total = [Counts(*ints[4 * i:4 * i + 4], forward_seconds=times[i]) for i in range(len(counts))]
    gathered: List[Any] = []
    dist.all_gather_object(gathered, list(skipped))
    every = sorted({tuple(item) for part in gathered for item in part})
    if len(every) != ints[-1]:
        raise RuntimeError(f"ranks disagree on skipped images: {ints[-1]} counted, {len(every)} gathered")
    return total, every, times[-1]


# ----------------------------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------------------------


def _build_runners(model: Any, subnets: Optional[List[Subnet]], spec: "EvalSpec"
                   ) -> List[Tuple[Optional[Subnet], Runner]]:
    """One runner per sub-network (set_subnet, then create_runner: an exported engine bakes the
    sub-network in), or one for the model as it is. int8's calibration images are read once."""
    from .deploy import create_runner
    from .deploy.quantize import as_calibration

    calibration = as_calibration(model, spec.calibration, spec.precision)

    def runner(workdir: Optional[str]) -> Runner:
        return create_runner(model, engine=spec.engine, precision=spec.precision, device=spec.device,
                             threads=spec.threads, workdir=workdir, calibration=calibration)

    if subnets is None:
        return [(None, runner(spec.workdir))]
    runners = []
    for subnet in subnets:
        with model.using_subnet(*subnet):
            runners.append((subnet, runner(os.path.join(spec.workdir, subnet.key) if spec.workdir else None)))
    return runners


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _run(runners: List[Tuple[Optional[Subnet], Runner]], loader: EvalLoader, headline: int, progress: bool,
         desc: str) -> Tuple[List[Counts], List[Tuple[int, str, str]], float]:
    """One pass over ``loader``; every batch goes through every runner. Returns per-runner counts
    (this process), the skipped images, and the wall time of the pass."""
    counts = [Counts() for _ in runners]
    skipped: List[Tuple[int, str, str]] = []
    warmed = [False] * len(runners)
    last = None
    bar = tqdm(total=loader.num_images, desc=desc, unit="img", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    start = time.perf_counter()
    batches = iter(loader)
    try:
        for batch in batches:
            skipped.extend(batch.bad)
            if len(batch.labels):
                for k, (_, runner) in enumerate(runners):  # each bound to its sub-network
                    tick = time.perf_counter()
                    logits = np.asarray(runner(batch.images))
                    elapsed = time.perf_counter() - tick
                    if warmed[k]:
                        counts[k].forward_seconds += elapsed
                        counts[k].timed_images += len(batch.labels)
                    warmed[k] = True
                    c1, c5 = topk_correct(logits[batch.counted], batch.labels[batch.counted])
                    counts[k].correct1 += c1
                    counts[k].correct5 += c5
                    counts[k].num_images += int(batch.counted.sum())
                last = batch
            bar.update(int(batch.counted.sum()) + len(batch.bad))
            head = counts[headline]
            postfix = {"top1": f"{head.top1:.2f}%" if head.num_images else "-"}
            if head.images_per_sec:
                postfix["model"] = f"{head.images_per_sec:.1f} img/s"
            if skipped:
                postfix["skipped"] = len(skipped)
            bar.set_postfix(postfix, refresh=False)
        seconds = time.perf_counter() - start
        # One batch only (a small set): everything ran in the warm-up, so time one more forward of it.
        # (Its images are intact: a later batch with images would have been timed; empty ones write nothing.)
        for k, (_, runner) in enumerate(runners):
            if counts[k].timed_images == 0 and last is not None:
                tick = time.perf_counter()
                runner(last.images)
                counts[k].forward_seconds = time.perf_counter() - tick
                counts[k].timed_images = len(last.labels)
    finally:
        batches.close()  # stops the loader's workers now, also on Ctrl-C or an error
        bar.close()
    return counts, skipped, seconds


@dataclass(frozen=True)
class EvalSpec:
    """How to evaluate (every keyword of :func:`evaluate` but the model and the data).

    batch_size, num_workers, skip_bad: the loader (skip_bad: unreadable images are skipped, reported
        and excluded from the counts instead of raising ppim.data.BadImageError).
    engine, precision, device, threads, workdir, calibration: the runners (``ppim.deploy.create_runner``;
        calibration: precision int8's calibration images, a folder or a ppim.deploy.quantize.Calibration).
    subnets: super models: "all", "224x1.0,128x0.5" or [Subnet(224, 1.0), ...] (ppim.subnet): every
        sub-network in one pass (each image decoded once, each batch run through each). Default: the
        current one.
    val_list, transforms: how a folder is read (see ppim.data.open_dataset); transforms default to the
        model's cfg.
    distributed: None = automatic under paddle.distributed.launch: rank r takes images r, r+W, ...,
        counts are summed across ranks, and every rank returns the same (whole-set) results; only
        rank 0 prints and writes ``results_file``.
    pretrained: what the model's weights came from (False / True / path / URL), for the results'
        ``weights`` (path and sha256). name: the model's name in the results (default: its cfg's).
    progress, verbose: the progress bar and the printed summary.
    """
    val_list: Optional[str] = None
    batch_size: int = 64
    num_workers: Optional[int] = None
    engine: str = "eager"
    precision: str = "fp32"
    device: str = "cpu"
    threads: Optional[int] = None
    workdir: Optional[str] = None
    calibration: Any = None
    subnets: Union[str, Sequence[SubnetLike], None] = None
    skip_bad: bool = False
    transforms: Optional[Callable] = None
    distributed: Optional[bool] = None
    progress: bool = True
    verbose: bool = True
    pretrained: Any = None
    name: Optional[str] = None
    results_file: Optional[str] = None


@dataclass
class _Pass:
    """What one pass over the data gave: per-runner counts, the skipped images, the wall time, and
    the runners (with their sub-networks) with the index of the one the top-level numbers report."""
    counts: List[Counts]
    skipped: List[Tuple[int, str, str]]
    seconds: float
    runners: List[Tuple[Optional[Subnet], Runner]]
    headline: int


def evaluate(model: Any, data: Any = None, spec: Optional[EvalSpec] = None, **settings: Any) -> Dict[str, Any]:
    """Top-1/top-5 accuracy and model throughput of ``model`` on a labelled image set.

    model: a ppim model (runners are built with ``ppim.deploy.create_runner(model, engine,
        precision, device, threads, workdir)``), or any runner: images float32 (B, 3, S, S) ->
        logits (B, C) numpy (then ``transforms`` is required, and ``name`` names it).
    data: None (the sample shipped with ppim), an ImageNet-style folder or a root for ``val_list``
        (see ppim.data.open_dataset), a dataset (``dataset[i]`` -> (array, label)), or an EvalLoader
        (its dataset and settings are used).
    spec: an EvalSpec; ``settings``: its fields as keywords (``batch_size=32, subnets="all"``), which
        override the spec's.

    Returns the results dict (see README): model, weights, num_images, top1, top5 (percent),
    correct1, correct5, images_per_sec (model throughput: forward calls after the first batch),
    engine, precision, and for super models ``subnets`` (one entry per sub-network).
    """
    spec = dataclasses.replace(spec or EvalSpec(), **settings)
    rank, world = dist_info(spec.distributed)
    if spec.results_file and rank == 0:
        check_writable(spec.results_file)  # now, not after the whole evaluation
    is_layer = _is_paddle_layer(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = spec.name or cfg.get("name") or type(model).__name__
    super_model = is_layer and bool(subnets_of(model))
    subnet_list = parse_subnets(spec.subnets, model) if spec.subnets is not None and is_layer else None
    if not is_layer and spec.subnets is not None:
        raise ValueError("subnets= needs a ppim super model, not a runner")

    dataset, data_desc, loader = _open_loader(spec, data, cfg, rank, world)

    # Model
    workdir = spec.workdir
    if workdir and world > 1:
        workdir = os.path.join(workdir, f"rank{rank}")  # ranks export side by side, not over each other
    if is_layer:
        if super_model and subnet_list is None:
            subnet_list = [current_subnet(model)]
        runners = _build_runners(model, subnet_list if super_model else None, dataclasses.replace(spec, workdir=workdir))
    else:
        runners = [(None, model)]
    headline = _headline(subnet_list, model) if super_model else 0

    desc = f"{name}" + (f" rank {rank}/{world}" if world > 1 else "")
    counts, skipped, seconds = _run(runners, loader, headline, spec.progress and rank == 0, desc)
    if world > 1:
        counts, skipped, seconds = _reduce_counts(counts, skipped, seconds)

    results = _results(spec, name, cfg, data_desc, getattr(dataset, "list_file", None),
                       _Pass(counts, skipped, seconds, runners, headline), loader.num_workers, world,
                       getattr(dataset, "transforms", spec.transforms), model if super_model else None)
    if rank == 0:
        if spec.verbose:
            print(format_summary(results), flush=True)
        if spec.results_file:
            write_results(results, spec.results_file)
    return results


def _open_loader(spec: EvalSpec, data: Any, cfg: Dict[str, Any], rank: int, world: int
                 ) -> Tuple[Any, str, EvalLoader]:
    """(dataset, its description, this rank's loader) for ``data`` (see evaluate)."""
    transforms = spec.transforms
    selection = None  # the dataset indices to evaluate (an EvalLoader's), default all
    loader_opts = dict(batch_size=spec.batch_size, num_workers=spec.num_workers, skip_bad=spec.skip_bad)
    if isinstance(data, EvalLoader):
        loader_opts = dict(batch_size=data.batch_size, num_workers=data.num_workers, skip_bad=data.skip_bad,
                           prefetch=data.prefetch)
        dataset, data_desc, selection = data.dataset, _describe(data.dataset), data.indices
    elif data is None or isinstance(data, (str, os.PathLike)):
        if transforms is None:
            if not cfg:
                raise ValueError("pass transforms= when evaluating a runner")
            from .transforms import create_transforms

            transforms = create_transforms(cfg)
        dataset = open_dataset(data, spec.val_list, transforms, num_classes=cfg.get("num_classes"),
                               class_names=cfg.get("class_names"),
                               log=(lambda message: print(message, file=sys.stderr)) if spec.verbose and rank == 0 else None)
        data_desc = _describe(dataset)
    else:
        dataset, data_desc = data, _describe(data)
        if isinstance(dataset, ImageDataset) and dataset.transforms is None:
            if transforms is None and cfg:
                from .transforms import create_transforms

                transforms = create_transforms(cfg)
            dataset = copy.copy(dataset)
            dataset.transforms = transforms
    if selection is None:
        selection = list(range(len(dataset)))
    if not selection:
        raise InputError(f"{data_desc}: no images")
    positions, counted = shard_indices(len(selection), rank, world)
    indices = [selection[i] for i in positions]
    return dataset, data_desc, EvalLoader(dataset, indices=indices, counted=counted, copy=False, **loader_opts)


def _is_paddle_layer(model: Any) -> bool:
    try:
        import paddle
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, paddle.nn.Layer)


def _headline(subnets: List[Subnet], model: Any) -> int:
    """The sub-network the top-level numbers report: the model's current one if evaluated, else the
    largest (biggest input, then highest keep ratio)."""
    current = current_subnet(model)
    if current in subnets:
        return subnets.index(current)
    return max(range(len(subnets)), key=lambda i: subnets[i])


def _describe(dataset: Any) -> str:
    root = getattr(dataset, "root", None)
    if root is not None and Path(root).resolve() == SAMPLE_DIR.resolve():
        return "ppim sample"
    return str(root) if root is not None else type(dataset).__name__


def _results(spec: EvalSpec, name: str, cfg: Dict[str, Any], data_desc: str, list_file: Optional[str],
             run: _Pass, num_workers: int, world: int, transforms: Any, super_model: Any) -> Dict[str, Any]:
    import paddle

    from .version import __version__

    pretrained, counts, skipped = spec.pretrained, run.counts, run.skipped
    head = counts[run.headline]
    published = (cfg.get("weights") or {}) if pretrained is True else {}  # the registered weights
    results: Dict[str, Any] = {
        "model": name,
        "weights": weights_info(pretrained, cfg) if pretrained is not None else None,
        "data": data_desc,
        "val_list": str(list_file) if list_file else None,
        "num_images": head.num_images,
        "skipped": len(skipped),
        "skipped_images": [{"path": path, "reason": reason} for _, path, reason in skipped],
        "top1": head.top1,
        "top5": head.top5,
        "correct1": head.correct1,
        "correct5": head.correct5,
        "images_per_sec": head.images_per_sec,
        "end_to_end_images_per_sec": (head.num_images + len(skipped)) / run.seconds if run.seconds > 0 else None,
        "seconds": run.seconds,
        "engine": spec.engine,
        "precision": spec.precision,
        "device": spec.device,
        "batch_size": spec.batch_size,
        "workers": num_workers,
        "world_size": world,
        "transforms": repr(transforms),
        "published_top1": published.get("top1"),
        "published_top5": published.get("top5"),
        "paddle": paddle.__version__,
        "ppim": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if super_model is not None:
        subnet_top1 = published.get("subnet_top1") or {}
        results["subnet"] = run.runners[run.headline][0].key
        results["subnets"] = [{
            **subnet.as_dict(), "top1": c.top1, "top5": c.top5, "correct1": c.correct1, "correct5": c.correct5,
            "images_per_sec": c.images_per_sec, "published_top1": subnet_top1.get(subnet.key),
        } for (subnet, _), c in zip(run.runners, counts)]
        results["patch_size"] = int(getattr(super_model, "patch_size", 16))
    return results


def format_summary(results: Dict[str, Any]) -> str:
    """The human-readable summary evaluate prints."""
    lines = []
    weights = results.get("weights")
    if weights:
        digest = (weights.get("sha256") or "")[:12]
        lines.append(f"{results['model']}: weights {weights.get('path') or weights.get('url')}"
                     + (f" (sha256 {digest}...)" if digest else ""))
    else:
        lines.append(f"{results['model']}: no weights file (random initialisation, or pretrained= not given)")
    skipped = results.get("skipped", 0)
    lines.append(f"data {results['data']}: {results['num_images']} images"
                 + (f", {skipped} unreadable skipped (not counted)" if skipped else "")
                 + f"; {results['engine']} {results['precision']} on {results['device']}, batch "
                 f"{results['batch_size']}, {results['workers']} workers"
                 + (f", {results['world_size']} processes" if results['world_size'] > 1 else ""))
    for item in results.get("skipped_images", [])[:20]:
        lines.append(f"  skipped {item['path']}: {item['reason']}")
    if skipped > 20:
        lines.append(f"  ... and {skipped - 20} more (all in the results file)")
    if results["num_images"]:
        line = (f"top-1 {results['top1']:.3f}%  top-5 {results['top5']:.3f}%  "
                f"({results['correct1']}/{results['num_images']}, {results['correct5']}/{results['num_images']})")
        if results.get("subnet"):
            line += f"  sub-network {results['subnet']}"
        lines.append(line)
        if results.get("published_top1") is not None:
            top5 = results.get("published_top5")
            lines.append(f"published: top-1 {results['published_top1']}%"
                         + (f", top-5 {top5}%" if top5 is not None else "") + " (full ImageNet val)")
    else:
        lines.append("no image could be evaluated")
    ips, e2e = results.get("images_per_sec"), results.get("end_to_end_images_per_sec")
    lines.append(f"model throughput {ips:.1f} img/s" if ips else "model throughput -")
    if e2e:
        lines[-1] += f"; end to end {e2e:.1f} img/s ({results['seconds']:.1f} s)"
    entries = results.get("subnets") or []
    if len(entries) > 1:
        patch = results.get("patch_size", 16)
        lines.append(subnet_table(entries, "top1", patch, "top-1 (%)"))
        lines.append(subnet_table(entries, "top5", patch, "top-5 (%)"))
        if any(e.get("published_top1") is not None for e in entries):
            lines.append(subnet_table(entries, "published_top1", patch, "published"))
    return "\n".join(lines)


def write_results(results: Dict[str, Any], path: "str | os.PathLike[str]") -> None:
    """Write ``results`` as JSON atomically (a temp file in the same folder, then a rename)."""
    write_json(path, results)
