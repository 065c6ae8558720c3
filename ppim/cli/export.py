"""Export a ppim model for Paddle Inference (paddle.jit.save + ppim.json), e.g.

    ppim-export --model lvvit_s --pretrained --output exported/lvvit_s
    ppim-export --model super_lvvit_s --checkpoint super_lvvit_s.pth --output exported/s160 \\
        --img-size 160 --keep-ratio 0.7          # a SuperViT sub-network (input stays the 224 crop)
    ppim-export --model lvvit_s --img-size 288 --output exported/lvvit_s_288   # other size

(python tools/export.py takes the same arguments.) Then: ppim.deploy.Predictor(DIR)(batch) or
ppim-predict --engine inference.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from ..errors import InputError
from .common import (BATCH, IMG_SIZE, ArgumentParser, add_model_arguments, command, create_model, number,
                     refuse_same_file)


def build(args) -> Any:
    """The model to export: super models get the sub-network (--img-size, --keep-ratio); other models
    are built for --img-size (pretrained positional embeddings resized)."""
    from ..subnet import subnets_of

    model = create_model(args)
    subnets = subnets_of(model)
    if subnets:
        full = max(subnets)
        try:
            model.set_subnet(args.img_size or full.img_size, full.keep_ratio if args.keep_ratio is None else args.keep_ratio)
        except ValueError as error:
            raise InputError(f"--img-size/--keep-ratio: {error}") from None
        return model
    if args.keep_ratio not in (None, 1.0):
        raise InputError(f"--keep-ratio applies to SuperViT models only, not {args.model}: drop it")
    if args.img_size and args.img_size != model.pretrained_cfg["crop"]:
        return create_model(args, img_size=args.img_size)
    return model


@command
def main(argv=None) -> int:
    parser = ArgumentParser(prog="ppim-export", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="directory to write (replaced if it is a previous export)")
    parser.add_argument("--img-size", type=IMG_SIZE, help="SuperViT: sub-network size; others: the input size")
    parser.add_argument("--keep-ratio", type=number(high=1.0, above=0.0), help="SuperViT: the sub-network's token keep ratio")
    parser.add_argument("--batch-size", type=BATCH, help="fix the batch size (default: any)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="export the model's own graph (no fused-attention layout)")
    parser.add_argument("--verify", action="store_true",
                        help="run the export through Paddle Inference and compare with the eager model")
    args = parser.parse_args(argv)
    import numpy as np

    from ..deploy import Predictor, create_runner, export, load_manifest

    if args.checkpoint:
        refuse_same_file(args.checkpoint, args.output, "--output")
    model = build(args)
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
        expected = create_runner(model, engine="eager")(batch)
        got = Predictor(out)(batch)
        error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
        print(f"  verify: Paddle Inference vs eager, max relative difference {error:.2e}")
        if error > 1e-4:
            print("error: the export does not match the eager model (a bug: please report it)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
