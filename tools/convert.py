"""Convert a PyTorch checkpoint (official release, SuperViT file, your fine-tune) to .pdparams.

    python tools/convert.py lvvit_s-26M-224-83.3.pth.tar lvvit_s.pdparams --model lvvit_s
    python tools/convert.py supervit_lvvit_s.pth super_lvvit_s.pdparams --model super_lvvit_s --ema

torch is not needed (except for checkpoints in the pre-1.6 format), and nothing in the file runs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ppim  # noqa: E402
from ppim.weights import CheckpointError, convert_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="PyTorch checkpoint (.pth, .pth.tar, .bin)")
    parser.add_argument("output", help="the .pdparams file to write")
    parser.add_argument("--model", required=True, help="target model, e.g. lvvit_s")
    parser.add_argument("--ema", action="store_true", help="take the EMA weights (state_dict_ema / model_ema)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="convert for another head size: the classifier weights are dropped")
    parser.add_argument("--no-strict", dest="strict", action="store_false",
                        help="write the keys that fit even if some are missing, unexpected or mis-shaped")
    args = parser.parse_args(argv)

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = ppim.create_model(args.model, **kwargs)
    try:
        report = convert_file(args.source, args.output, model, ema=args.ema, strict=args.strict)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
