"""Classify images with a ppim model and print the top-5 classes.

    ppim-predict IMAGE... --model lvvit_s --pretrained
    ppim-predict --model lvvit_s --checkpoint lvvit_s.pdparams   # the shipped sample
    ppim-predict --model lvvit_s --pretrained --engine inference --precision bf16
    ppim-predict photos/*.jpg --checkpoint runs/flowers/best.pdparams    # a fine-tune: its class names
    ppim-predict cat.jpg --model super_lvvit_s --pretrained --latency-ms 20   # SuperViT within 20 ms here

(python tools/predict.py takes the same arguments.) An unreadable image is reported (one `error:` line)
and the others are classified; the exit status is then 1 (0 with --skip-bad, which reports it as skipped).
"""
from __future__ import annotations

import sys

from .common import (ArgumentParser, add_model_arguments, add_precision_arguments, check_calibration, check_engine,
                     command, create_model, integer, number)


@command
def main(argv=None) -> int:
    from ..deploy.registry import DEVICES, ENGINE_CHOICES

    parser = ArgumentParser(prog="ppim-predict", description=__doc__)
    parser.add_argument("images", nargs="*", help="image files (default: the sample shipped with ppim)")
    add_model_arguments(parser)
    parser.add_argument("--topk", type=integer(1, 1000), default=5)
    parser.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                        help="auto (default): the fastest installed engine on the cached export, eager if the "
                             "model cannot be exported; eager: the Paddle model; inference: Paddle Inference; "
                             "openvino, onnxruntime: the optional extras")
    add_precision_arguments(parser, "bf16 on CPUs with avx512_bf16/amx_bf16, fp16 on GPU, int8 with --calibration "
                                    "(python -m ppim env lists what runs here)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--skip-bad", action="store_true",
                        help="report unreadable images as skipped and exit 0 (default: report them as errors, "
                             "classify the others, exit 1)")
    parser.add_argument("--latency-ms", type=number(above=0), metavar="MS",
                        help="SuperViT: run the sub-network with the best published accuracy among those "
                             "measured within MS ms per image on this machine and engine (measured once, "
                             "then cached in PPIM_HOME; the fastest, with a note, when none fits)")
    args = parser.parse_args(argv)
    check_engine(args.engine, args.precision, args.device)  # before images, weights or exports
    check_calibration(args)
    from ..builder import class_names_of
    from ..data import BadImageError, imagenet_class_names, load_image, sample_images
    from ..deploy import classify
    from ..deploy.quantize import as_calibration

    if args.images:
        paths, labels = args.images, [None] * len(args.images)
    else:
        sample = sample_images()
        paths, labels = [str(path) for path, _ in sample], [label for _, label in sample]
    readable, failed = [], 0
    for path, label in zip(paths, labels):  # bad files are reported before the model is built
        try:
            readable.append((path, label, load_image(path)))
        except BadImageError as error:
            failed += 1
            message = f"skipped {error.path}" if args.skip_bad else f"error: cannot read image {error.path}"
            print(f"{message}: {error.reason}", file=sys.stderr, flush=True)
    if not readable:
        return 0 if args.skip_bad else 1
    model = create_model(args)
    calibration = as_calibration(model, args.calibration, args.precision)  # read once: None unless int8
    if args.latency_ms is not None:
        _pick_subnet(model, args, calibration)
    names = class_names_of(model) or []
    truths = imagenet_class_names()
    top_k = classify(model, [image for _, _, image in readable], topk=min(args.topk, len(names) or args.topk),
                     engine=args.engine, precision=args.precision, device=args.device,
                     calibration=calibration)
    for (path, label, _), top in zip(readable, top_k):
        truth = f"  (true class: {label} {truths[label]})" if label is not None else ""
        print(f"{path}{truth}")
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"  {rank}. {prob:7.2%}  {index:4d}  {name}")
    return 1 if failed and not args.skip_bad else 0


def _pick_subnet(model, args, calibration) -> None:
    """Set the sub-network --latency-ms picks and say which, with its measured latency."""
    from ..deploy.registry import resolve_engine
    from ..deploy.subnet_choice import pick_subnet
    from ..errors import ParameterError
    from ..registry import model_name
    from ..subnet import subnets_of

    if not subnets_of(model):
        raise ParameterError("{latency_ms:name} picks a SuperViT sub-network; " + model_name(model) +
                             " has none (use a super_* model)", latency_ms=args.latency_ms)
    engine = resolve_engine(args.engine, args.device, args.precision)
    choice = pick_subnet(model, args.latency_ms, batch=1, engine=engine, precision=args.precision,
                         calibration=calibration)
    print(f"sub-network {choice.describe(f'batch 1, {engine} {args.precision}')}", flush=True)
    model.set_subnet(*choice.subnet)


if __name__ == "__main__":
    raise SystemExit(main())
