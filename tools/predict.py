"""Classify images with a ppim model and print the top-5 classes.

    python tools/predict.py IMAGE... --model lvvit_s --pretrained
    python tools/predict.py --model lvvit_s --checkpoint lvvit_s.pdparams   # the shipped sample
    python tools/predict.py --model lvvit_s --pretrained --engine inference --precision bf16
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ppim  # noqa: E402
from ppim.data import imagenet_class_names, sample_images  # noqa: E402
from ppim.deploy import classify, create_runner  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files (default: the sample shipped with ppim)")
    parser.add_argument("--model", required=True, help="model name, e.g. lvvit_s (see ppim.list_models())")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="use the registered weights")
    weights.add_argument("--checkpoint", help="weights file or URL (.pdparams, or a PyTorch checkpoint)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--engine", default="eager", choices=["eager", "inference"],
                        help="eager: the Paddle model; inference: exported and run by Paddle Inference")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="inference engine: bf16 on CPUs with avx512_bf16/amx_bf16, fp16 on GPU")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args(argv)

    model = ppim.create_model(args.model, pretrained=args.checkpoint or args.pretrained)
    if not (args.checkpoint or args.pretrained):
        print("warning: random weights (pass --pretrained or --checkpoint)", file=sys.stderr)
    if args.images:
        images, labels = args.images, [None] * len(args.images)
    else:
        sample = sample_images()
        images, labels = [str(path) for path, _ in sample], [label for _, label in sample]
    names = imagenet_class_names()
    runner = create_runner(model, engine=args.engine, precision=args.precision, device=args.device)
    for image, label, top in zip(images, labels, classify(model, images, topk=args.topk, runner=runner)):
        truth = f"  (true class: {label} {names[label]})" if label is not None else ""
        print(f"{image}{truth}")
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"  {rank}. {prob:7.2%}  {index:4d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
