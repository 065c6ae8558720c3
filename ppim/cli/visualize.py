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

from .common import ArgumentParser, add_model_arguments, command, create_model, writable_file
from ..errors import InputError


@command
def main(argv=None) -> int:
    parser = ArgumentParser(prog="ppim-visualize", description=__doc__)
    parser.add_argument("image", help="an image file")
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    parser.add_argument("--subnets", default=None, metavar="LIST",
                        help="SuperViT sub-networks for kept_tokens.png, e.g. 224x0.5,160x0.7, or all (default: "
                             "the largest input size at every published keep ratio below 1)")
    args = parser.parse_args(argv)
    from .. import visualize
    from ..data import load_image
    from ..models.supervit import parse_subnet_spec
    from ..registry import get_model_cfg

    visualize.require_matplotlib()  # before the model is built: the one thing a user must install
    subnets = None
    if args.subnets is not None:
        if args.model and get_model_cfg(args.model)["architecture"] != "supervit":
            raise InputError(f"--subnets is for SuperViT models; {args.model} has no sub-networks")
        try:
            subnets = parse_subnet_spec(args.subnets)
        except ValueError as error:
            raise InputError(f"--subnets: {error}") from None
    image = load_image(args.image)  # a bad file is reported before the model is built
    writable_file(f"{args.output}/accuracy_vs_gflops.png", "--output")
    model = create_model(args)
    if args.subnets is not None:
        if get_model_cfg(args.model)["architecture"] != "supervit":
            raise InputError(f"--subnets is for SuperViT models; {args.model} has no sub-networks")
        try:  # "all" parses to None: every published sub-network
            subnets = [model.check_subnet(*subnet) for subnet in subnets or model.subnets]
        except ValueError as error:
            raise InputError(f"--subnets: {error}") from None
    for kind, path in visualize.visualize(image, model, args.output, subnets=subnets).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
