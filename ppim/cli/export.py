"""Export a ppim model for Paddle Inference (paddle.jit.save + ppim.json), e.g.

    ppim-export --model lvvit_s --pretrained --output exported/lvvit_s
    ppim-export --model super_lvvit_s --checkpoint super_lvvit_s.pth --output exported/s160 \\
        --img-size 160 --keep-ratio 0.7          # a SuperViT sub-network (input stays the 224 crop)
    ppim-export --model lvvit_s --img-size 288 --output exported/lvvit_s_288   # other size
    ppim-export --model lvvit_s --checkpoint best.pdparams --output exported/int8 \\
        --engine openvino --precision int8 --calibration photos/   # int8 (post-training quantization)

(python tools/export.py takes the same arguments.) Then: ppim.deploy.Predictor(DIR)(batch) or
ppim-predict --engine inference; an int8 export: the engine's predictor with precision="int8"
(ppim.deploy.OpenVINOPredictor or Predictor).
"""
from __future__ import annotations

import sys
import time
from typing import Any

from ..errors import InputError
from .common import (BATCH, IMG_SIZE, ArgumentParser, add_model_arguments, add_precision_arguments, check_calibration,
                     command, create_model, number, refuse_same_file)


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
    from ..deploy.registry import ENGINE_SPECS

    parser = ArgumentParser(prog="ppim-export", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="directory to write (replaced if it is a previous export)")
    parser.add_argument("--img-size", type=IMG_SIZE, help="SuperViT: sub-network size; others: the input size")
    parser.add_argument("--keep-ratio", type=number(high=1.0, above=0.0), help="SuperViT: the sub-network's token keep ratio")
    parser.add_argument("--batch-size", type=BATCH, help="fix the batch size (default: any)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="export the model's own graph (no fused-attention layout)")
    parser.add_argument("--engine", default="inference", choices=[spec.name for spec in ENGINE_SPECS if spec.exported],
                        help="the engine the export is laid out for (default inference: Paddle Inference)")
    add_precision_arguments(parser, "fp32 (default), bf16, fp16, or int8 with --calibration")
    parser.add_argument("--verify", action="store_true",
                        help="run the export through its engine and compare with the eager model")
    args = parser.parse_args(argv)
    import numpy as np

    from ..deploy import create_runner, export, load_manifest
    from ..deploy.registry import check_supported, create_predictor

    check_supported(args.engine, args.precision)
    check_calibration(args)
    if args.checkpoint:
        refuse_same_file(args.checkpoint, args.output, "--output")
    model = build(args)
    start = time.perf_counter()
    out = export(model, args.output, batch_size=args.batch_size, optimize=not args.no_optimize,
                 precision=args.precision, engine=args.engine, calibration=args.calibration)
    manifest = load_manifest(out)
    subnet = manifest.get("subnet")
    print(f"exported {manifest['model']} to {out} in {time.perf_counter() - start:.1f}s")
    print(f"  files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"  input {manifest['input_name']}: float32 {manifest['input_shape']} (-1: any batch)"
          + (f"; sub-network {subnet['img_size']}x{subnet['keep_ratio']:g}" if subnet else ""))
    if "int8" in manifest:
        calibration = manifest["int8"]["calibration"]
        print(f"  int8 ({manifest['int8']['method']}), calibrated on {calibration['images']} images from "
              f"{calibration['source']}")
    if args.verify:
        size = manifest["input_shape"][2]
        batch = np.random.default_rng(0).standard_normal((args.batch_size or 2, 3, size, size), dtype=np.float32)
        expected = create_runner(model, engine="eager")(batch)
        got = create_predictor(args.engine, out, precision=args.precision)(batch)
        error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
        print(f"  verify: {args.engine} {args.precision} vs eager fp32, max relative difference {error:.2e}")
        if args.precision == "int8":  # approximate by design: judge it on labelled images (ppim-eval)
            print(f"  int8 is approximate: compare its top-1 with fp32's on your labelled images (ppim-eval "
                  f"--engine {args.engine} --precision int8 --calibration DIR)")
        elif error > (1e-4 if args.precision == "fp32" else 5e-2):
            print("error: the export does not match the eager model (a bug: please report it)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
