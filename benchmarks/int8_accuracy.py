"""int8 against fp32 on a task a model has learnt (a benchmark, not a test; no weights can be
downloaded here, so the model learns one): coloured shapes written as real image files
(tests/shapes.py), an LV-ViT trained on them with tools/train.py, then every held-out image
classified by the fp32 and the int8 runner of each engine that runs int8 here, calibrated on the
training images. Reports top-1 of each, the difference, the per-image agreement of the top-1
classes and the logits' largest difference relative to their range.

    python benchmarks/int8_accuracy.py --model lvvit_t --img-size 64 --epochs 12 --output /tmp/int8run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

import ppim  # noqa: E402
from ppim.data import open_dataset  # noqa: E402
from ppim.deploy import create_runner  # noqa: E402
from ppim.deploy.quantize import calibration_images  # noqa: E402
from ppim.deploy.registry import ENGINE_SPECS, unsupported  # noqa: E402
from shapes import write_dataset  # noqa: E402


def predict(runner, dataset, batch_size=32) -> np.ndarray:
    """Logits (N, classes) of every image of ``dataset`` in order."""
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = np.stack([np.asarray(dataset[i][0], dtype=np.float32)
                          for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(runner(batch))
    return np.concatenate(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lvvit_t")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--any-colour", action="store_true",
                        help="shapes in random colours (the shape alone tells the class: a harder task)")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--output", required=True, help="folder for the data and the training run (kept)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    out = Path(args.output)
    data = out / "data"
    if not (data / "val").is_dir():
        write_dataset(data, args.train_per_class, args.val_per_class, args.classes, size=args.img_size,
                      any_colour=args.any_colour)
    run = out / "run"
    checkpoint = run / "best.pdparams"
    if not checkpoint.is_file():
        began = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), str(data), "--model", args.model,
                        "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--recipe", "none",
                        "--lr", "1e-3", "--min-lr", "1e-5", "--warmup-epochs", "1", "--cooldown-epochs", "0",
                        "-b", "32", "-j", "2", "--output", str(run), "--no-progress"], check=True)
        print(f"trained in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    model = ppim.create_model(checkpoint_path=str(checkpoint))
    model.eval()
    dataset = open_dataset(data / "val", transforms=ppim.create_transforms(model), num_classes=model.num_classes)
    labels = np.array(dataset.labels)
    calibration = calibration_images(model, data / "train", limit=args.calibration_images)
    results = {"model": args.model, "img_size": args.img_size, "classes": args.classes, "val_images": len(labels),
               "calibration_images": len(calibration.images), "engines": {}}
    for spec in ENGINE_SPECS:
        if spec.quantizer is None or unsupported(spec.name, "int8"):
            continue
        fp32 = predict(create_runner(model, engine=spec.name), dataset)
        int8 = predict(create_runner(model, engine=spec.name, precision="int8", calibration=calibration), dataset)
        top1 = {name: float((logits.argmax(1) == labels).mean() * 100) for name, logits in
                (("fp32", fp32), ("int8", int8))}
        row = {"top1_fp32": top1["fp32"], "top1_int8": top1["int8"], "top1_change": top1["int8"] - top1["fp32"],
               "agreement": float((fp32.argmax(1) == int8.argmax(1)).mean() * 100),
               "max_logit_diff_over_range": float(np.abs(int8 - fp32).max() / (fp32.max() - fp32.min()))}
        results["engines"][spec.name] = row
        print(f"{spec.name}: top-1 fp32 {row['top1_fp32']:.2f}%, int8 {row['top1_int8']:.2f}% "
              f"({row['top1_change']:+.2f} points); top-1 agreement {row['agreement']:.2f}% of "
              f"{len(labels)} images; largest logit difference {row['max_logit_diff_over_range']:.3f} of the "
              f"logits' range")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
