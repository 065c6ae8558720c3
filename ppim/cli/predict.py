"""Classify images with a ppim model and print the top-5 classes.

    ppim-predict IMAGE... --model lvvit_s --pretrained
    ppim-predict --model lvvit_s --checkpoint lvvit_s.pdparams   # the shipped sample
    ppim-predict --model lvvit_s --pretrained --engine inference --precision bf16

(python tools/predict.py takes the same arguments.)
"""
from __future__ import annotations

from .common import ArgumentParser, add_model_arguments, check_engine, command, create_model


def _read(path: str):
    from ..data import BadImageError, load_image

    try:
        return load_image(path)
    except BadImageError as error:  # its default hint names --skip-bad, which predict has not
        raise BadImageError(error.path, error.reason, hint="check the path, or leave the file out") from None


@command
def main(argv=None) -> int:
    from ..deploy.registry import DEVICES, ENGINE_CHOICES, PRECISIONS

    parser = ArgumentParser(prog="ppim-predict", description=__doc__)
    parser.add_argument("images", nargs="*", help="image files (default: the sample shipped with ppim)")
    add_model_arguments(parser)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                        help="auto (default): the fastest installed engine on the cached export, eager if the "
                             "model cannot be exported; eager: the Paddle model; inference: Paddle Inference; "
                             "openvino, onnxruntime: the optional extras")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="inference engine: bf16 on CPUs with avx512_bf16/amx_bf16, fp16 on GPU "
                             "(python -m ppim env lists what runs here)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    args = parser.parse_args(argv)
    check_engine(args.engine, args.precision, args.device)  # before images, weights or exports
    from ..data import imagenet_class_names, sample_images
    from ..deploy import classify

    if args.images:
        paths, labels = args.images, [None] * len(args.images)
    else:
        sample = sample_images()
        paths, labels = [str(path) for path, _ in sample], [label for _, label in sample]
    images = [_read(path) for path in paths]  # a bad file is reported before the model is built
    model = create_model(args)
    names = imagenet_class_names()
    top_k = classify(model, images, topk=args.topk, engine=args.engine, precision=args.precision, device=args.device)
    for path, label, top in zip(paths, labels, top_k):
        truth = f"  (true class: {label} {names[label]})" if label is not None else ""
        print(f"{path}{truth}")
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"  {rank}. {prob:7.2%}  {index:4d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
