"""Draw what a model does with an image, as PNG files in --output:

    kept_tokens.png         SuperViT: the tokens a sub-network keeps after blocks 3, 6 and 9
    token_classes.png       LV-ViT and super_lvvit_s: the aux head's class of every token
    accuracy_vs_gflops.png  published top-1 against cost, SuperViT's 12 sub-networks and LV-ViT

    ppim-visualize photo.jpg --model super_lvvit_s --pretrained --output pictures/
    ppim-visualize photo.jpg --model super_deit_s --pretrained --subnets 224x0.5,160x0.7 --output pictures/
    ppim-visualize photo.jpg --model lvvit_s --checkpoint lvvit_s.pdparams --output pictures/

Needs matplotlib: pip install "ppim[plot]". (python tools/visualize.py takes the same arguments.)
"""
from __future__ import annotations

from .common import (ArgumentParser, add_model_arguments, add_subnets_argument, check_offers_subnets, command,
                     create_model, writable_file)


@command
def main(argv=None) -> int:
    parser = ArgumentParser(prog="ppim-visualize", description=__doc__)
    parser.add_argument("image", help="an image file")
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    add_subnets_argument(parser, "SuperViT sub-networks for kept_tokens.png, e.g. 224x0.5,160x0.7, or all "
                                 "(default: the largest input size at every published keep ratio below 1)")
    args = parser.parse_args(argv)
    from .. import visualize
    from ..data import load_image
    from ..subnet import parse_subnets

    visualize.require_matplotlib()  # before the model is built: the one thing a user must install
    check_offers_subnets(args)
    image = load_image(args.image)  # a bad file is reported before the model is built
    writable_file(f"{args.output}/accuracy_vs_gflops.png", "--output")
    model = create_model(args)
    subnets = parse_subnets(args.subnets, model, "--subnets")
    for kind, path in visualize.visualize(image, model, args.output, subnets=subnets).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
