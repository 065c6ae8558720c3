"""Convert a PyTorch checkpoint (official release, SuperViT file, your fine-tune) to .pdparams.

    ppim-convert lvvit_s-26M-224-83.3.pth.tar lvvit_s.pdparams --model lvvit_s
    ppim-convert supervit_lvvit_s.pth super_lvvit_s.pdparams --model super_lvvit_s   # its EMA weights, as published

(python tools/convert.py takes the same arguments.) torch is not needed (except for checkpoints in
the pre-1.6 format), and nothing in the file runs. The output is written atomically and never over
the source, and describes its model (name, kwargs, classes, transforms), so --checkpoint OUTPUT needs
no other flag in the other tools.
"""
from __future__ import annotations

import os

from .common import (ArgumentParser, add_ema_arguments, add_model_arguments, command, create_model, refuse_same_file,
                     writable_file)


@command
def main(argv=None) -> int:
    parser = ArgumentParser(prog="ppim-convert", description=__doc__)
    parser.add_argument("source", help="PyTorch checkpoint (.pth, .pth.tar, .bin)")
    parser.add_argument("output", help="the .pdparams file to write")
    add_model_arguments(parser, weights=False)  # --num-classes: convert for another head size (heads dropped)
    add_ema_arguments(parser)
    parser.add_argument("--no-strict", dest="strict", action="store_false",
                        help="write the keys that fit even if some are missing, unexpected or mis-shaped")
    args = parser.parse_args(argv)
    from ..weights import convert_file

    refuse_same_file(args.source, args.output)
    writable_file(args.output, "output")
    from ..builder import describe_model

    model = create_model(args, warn=False)
    description = describe_model(model, {"source": os.path.abspath(args.source), "ema": args.ema})
    print(convert_file(args.source, args.output, model, ema=args.ema, strict=args.strict, description=description))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
