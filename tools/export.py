"""Export a ppim model for Paddle Inference (paddle.jit.save + ppim.json), e.g.

    python tools/export.py --model lvvit_s --pretrained --output exported/lvvit_s
    python tools/export.py --model super_lvvit_s --checkpoint super_lvvit_s.pth --output exported/s160 \
        --img-size 160 --keep-ratio 0.7          # a SuperViT sub-network (input stays the 224 crop)
    python tools/export.py --model lvvit_s --img-size 288 --output exported/lvvit_s_288   # other size

Then: ppim.deploy.Predictor(DIR)(batch) or python tools/predict.py --engine inference.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

import ppim  # noqa: E402
from ppim.deploy import Predictor, export, load_manifest  # noqa: E402


def build(name: str, weights, img_size=None, keep_ratio=None):
    """The model to export: super models get the sub-network (img_size, keep_ratio); other models are
    built for img_size (pretrained positional embeddings resized)."""
    is_super = ppim.get_model_cfg(name).get("architecture") == "supervit"
    if is_super:
        model = ppim.create_model(name, pretrained=weights)
        model.set_subnet(img_size or max(model.img_sizes), 1.0 if keep_ratio is None else keep_ratio)
        return model
    if keep_ratio not in (None, 1.0):
        raise SystemExit(f"error: --keep-ratio applies to SuperViT models only, not {name}")
    kwargs = {"img_size": img_size} if img_size else {}
    return ppim.create_model(name, pretrained=weights, **kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model name, e.g. lvvit_s (see ppim.list_models())")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="use the registered weights")
    weights.add_argument("--checkpoint", help="weights file or URL (.pdparams, or a PyTorch checkpoint)")
    parser.add_argument("--output", required=True, help="directory to write (replaced if it is a previous export)")
    parser.add_argument("--img-size", type=int, help="SuperViT: sub-network size; others: the input size")
    parser.add_argument("--keep-ratio", type=float, help="SuperViT: the sub-network's token keep ratio")
    parser.add_argument("--batch-size", type=int, help="fix the batch size (default: any)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="export the model's own graph (no fused-attention layout)")
    parser.add_argument("--verify", action="store_true",
                        help="run the export through Paddle Inference and compare with the eager model")
    args = parser.parse_args(argv)

    weights = args.checkpoint or args.pretrained
    if not weights:
        print("warning: random weights (pass --pretrained or --checkpoint)", file=sys.stderr)
    model = build(args.model, weights, args.img_size, args.keep_ratio)
    start = time.perf_counter()
    out = export(model, args.output, batch_size=args.batch_size, optimize=not args.no_optimize)
    manifest = load_manifest(out)
    subnet = manifest.get("subnet")
    print(f"exported {manifest['model']} to {out} in {time.perf_counter() - start:.1f}s")
    print(f"  files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"  input {manifest['input_name']}: float32 {manifest['input_shape']} (-1: any batch)"
          + (f"; sub-network {subnet['img_size']}x{subnet['keep_ratio']:g}" if subnet else ""))
    if args.verify:
        size = manifest["input_shape"][2]
        batch = np.random.default_rng(0).standard_normal((args.batch_size or 2, 3, size, size), dtype=np.float32)
        from ppim.deploy import create_runner

        expected = create_runner(model, engine="eager")(batch)
        got = Predictor(out)(batch)
        error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
        print(f"  verify: Paddle Inference vs eager, max relative difference {error:.2e}")
        if error > 1e-4:
            print("error: the export does not match the eager model", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
