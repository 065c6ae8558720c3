"""Token labeling and SuperViT training throughput (a benchmark, not a test).

1. SuperViT step: images/s of one SuperStep (four sub-networks, one backward each, one optimizer
   step) against four separate steps of the same sub-networks (forward, backward, optimizer step
   each), interleaved round by round; medians.
2. Token-label data loading: the share of a token-label training step spent waiting for the next
   batch (TrainLoader over a TokenLabelDataset with -j workers), on generated images and labels.

    python benchmarks/token_label_training.py --rounds 5 -b 16 -j 2
Figures drift with the machine and its load: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from PIL import Image  # noqa: E402

import ppim  # noqa: E402
from ppim.data import ImageFolderDataset, TrainLoader  # noqa: E402
from ppim.training.losses import TokenLabelCrossEntropy, kl_div_batchmean, soft_target_cross_entropy  # noqa: E402
from ppim.training.supervit_step import SuperStep  # noqa: E402
from ppim.training.token_labels import formats  # noqa: E402
from ppim.training.token_labels.dataset import TokenLabelDataset, TokenLabelTransforms  # noqa: E402
from ppim.training.token_labels.step import TokenLabelStep, TokenLabelTargets  # noqa: E402
from ppim.transforms import train_transforms  # noqa: E402


def super_vs_separate(args) -> dict:
    model = ppim.create_model("super_lvvit_s", num_classes=100, **json.loads(args.model_kwargs))
    model.train()
    optimizer = paddle.optimizer.AdamW(1e-4, parameters=model.parameters())
    images = paddle.randn([args.batch_size, 3, 224, 224])
    target = paddle.nn.functional.softmax(paddle.randn([args.batch_size, 100]), axis=-1)
    criterion = TokenLabelCrossEntropy(classes=100)
    subnets = [(224, 1.0), (224, 0.7), (160, 1.0), (160, 0.5)]
    boxes = {s: (0, 0, 0, 0) for s in model.img_sizes}
    step = SuperStep(criterion, rng=None)

    def fused():
        step(model, images, target, lambda loss: loss.backward(), subnets, boxes)
        optimizer.step()
        optimizer.clear_grad()

    def separate():
        teacher = None
        for index, (size, keep) in enumerate(subnets):  # the same losses, one optimizer step each
            out = model.forward_train(images, img_size=size, keep_ratio=keep, bbox=boxes[size])
            if index == 0:
                loss = criterion(out, target)
                teacher = paddle.nn.functional.softmax(out[0].detach(), axis=-1)
            elif keep == 1:
                loss = soft_target_cross_entropy(out, target)
            else:
                loss = kl_div_batchmean(out, teacher)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()

    times = {"super_step": [], "four_separate_steps": []}
    fused(), separate()  # warm-up
    for _ in range(args.rounds):
        for name, work in (("super_step", fused), ("four_separate_steps", separate)):
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    result = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    result["ratio"] = result["super_step"] / result["four_separate_steps"]
    return {"images_per_sec": result, "batch_size": args.batch_size, "rounds": args.rounds}


def loading_share(args, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    for c in range(4):
        (folder / "train" / f"c{c}").mkdir(parents=True)
        for i in range(args.images // 4):
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(
                folder / "train" / f"c{c}" / f"img{i}.jpg", quality=90)
    dataset = ImageFolderDataset(folder / "train")
    keys = [formats.label_key(path) for path, _ in dataset.samples]
    shape = (2, 5, 18, 18)  # the released NFNet-F6 labels
    writer = formats.PackedLabelWriter(folder / "labels", keys, shape)
    labels = np.stack([np.stack([rng.normal(size=shape[1:]), rng.integers(0, 100, shape[1:])])
                       for _ in keys]).astype(np.float16)
    writer.write(list(range(len(keys))), labels)
    writer.close()
    transforms = TokenLabelTransforms(train_transforms(224))
    train_set = TokenLabelDataset(dataset, formats.open_token_labels(folder / "labels"), transforms, 100)
    model = ppim.create_model("lvvit_s", num_classes=100, **json.loads(args.model_kwargs))
    model.train()
    optimizer = paddle.optimizer.AdamW(1e-4, parameters=model.parameters())
    step = TokenLabelStep(TokenLabelCrossEntropy(classes=100), TokenLabelTargets(100, shape, 14, 0.1))
    loader = TrainLoader(train_set, args.batch_size, args.workers, seed=0)
    waiting = computing = 0.0
    batches = 0
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        mark = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            step(model, paddle.to_tensor(batch.images), paddle.to_tensor(batch.labels), lambda loss: loss.backward())
            optimizer.step()
            optimizer.clear_grad()
            done = time.perf_counter()
            if batches:  # the first batch includes starting the workers
                waiting += got - mark
                computing += done - got
            batches += 1
            mark = done
    return {"loading_share": waiting / (waiting + computing), "steps_timed": batches - 1, "workers": args.workers,
            "batch_size": args.batch_size, "label_shape": list(shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-b", "--batch-size", type=int, default=16)
    parser.add_argument("-j", "--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=96, help="generated training images (loading share)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model-kwargs", default='{"depth": 6, "embed_dim": 192, "num_heads": 3}',
                        help="model size (JSON; default a reduced LV-ViT-S so a CPU finishes)")
    parser.add_argument("--threads", type=int, default=None, help="CPU math threads")
    args = parser.parse_args()
    if args.threads:
        from ppim.runtime import set_cpu_threads

        set_cpu_threads(args.threads)
    report = {"super_vs_separate": super_vs_separate(args)}
    with tempfile.TemporaryDirectory() as folder:
        report["token_label_loading"] = loading_share(args, Path(folder))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
