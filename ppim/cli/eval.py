"""Top-1/top-5 accuracy and throughput of a ppim model on an ImageNet-style validation set.

    ppim-eval --model lvvit_s --pretrained                        # the shipped sample
    ppim-eval /data/ILSVRC2012/val --model lvvit_s --pretrained -b 64 -j 2
    ppim-eval /data/ILSVRC2012 --val-list val_list.txt --model lvvit_m --checkpoint m.pdparams
    ppim-eval /data/val --model super_lvvit_s --pretrained --subnets all --results-file r.json
    python -m paddle.distributed.launch --nproc_per_node 2 tools/eval.py /data/val --model lvvit_s --pretrained

(python tools/eval.py takes the same arguments.) DATA is a folder of class subfolders (sorted names =
class index; WordNet-id folders of an ImageNet subset get their ImageNet ids), or the root of the
paths in --val-list ("relative/path label" lines, PaddleClas format; a val_list.txt inside DATA is
used by itself; a root holding train/ and val/ is evaluated on val/, said in a note). Without DATA: the
sample shipped in ppim/assets/sample. With --checkpoint of a ppim run, the model, its classes and its
transforms come from the checkpoint (--model and --num-classes, if given, must agree with it), and the
class folders are matched to the model's classes by name. Under
paddle.distributed.launch each process takes every W-th image and the counts are summed: the result
is exactly the single-process one; rank 0 prints and writes the file. --results-file is checked
writable before anything runs.
"""
from __future__ import annotations

import sys

from ..errors import InputError
from .common import (BATCH, IMG_SIZE, THREADS, WORKERS, ArgumentParser, add_model_arguments, add_precision_arguments,
                     add_subnets_argument, check_calibration, check_engine, check_offers_subnets, command, create_model,
                     weights_of, writable_file)


def build_parser() -> ArgumentParser:
    from ..deploy.registry import DEVICES, ENGINE_CHOICES

    parser = ArgumentParser(prog="ppim-eval", description=__doc__)
    parser.add_argument("data", nargs="?", metavar="DATA",
                        help="validation folder, or the root of --val-list paths (default: the shipped sample)")
    add_model_arguments(parser)
    parser.add_argument("-b", "--batch-size", type=BATCH, default=64, help="images per batch (default 64)")
    parser.add_argument("-j", "--workers", type=WORKERS, default=None,
                        help="data-loading processes (default: one per CPU, at most 4; 0 decodes in the "
                             "main process)")
    parser.add_argument("--val-list", metavar="FILE", help='list file of "relative/path label" lines')
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="let the list name images outside DATA (absolute or ../ paths)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES,
                        default="eager", help="eager Paddle (default); inference, openvino, onnxruntime: the "
                        "exported model (the last two: optional extras); auto: the fastest that runs here "
                        "(python -m ppim env lists what runs here)")
    add_precision_arguments(parser, "fp32 (default); bf16 on CPUs with avx512_bf16/amx_bf16; fp16 on GPU; int8 "
                                    "with --calibration")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="default: gpu when Paddle has CUDA and sees a GPU, else cpu")
    parser.add_argument("--threads", type=THREADS, default=None, help="CPU math threads (default: the engine's)")
    parser.add_argument("--workdir", metavar="DIR", help="where an exported engine keeps the model (default: the export cache)")
    add_subnets_argument(parser, "super models: 'all' or e.g. 224x1.0,128x0.5; all in one pass over the data")
    parser.add_argument("--img-size", type=IMG_SIZE, default=None,
                        help="build the model for this input size (crop; resize keeps the cfg's ratio)")
    parser.add_argument("--crop-pct", default=None, metavar="PCT|official",
                        help="resize the shorter side to floor(crop / PCT) before the centre crop, or "
                             "'official': the official code's crop where it differs (lvvit_m: 1.0, "
                             "lvvit_s_384: 0.9; default: the cfg's transforms, which the published ppim "
                             "figures were measured with)")
    parser.add_argument("--results-file", metavar="FILE", help="write the results as JSON (atomically)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images (reported, not counted) instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def crop_pct(value: str, cfg: dict) -> float:
    """--crop-pct: a fraction in (0, 1], or "official" (the cfg's official_crop_pct, else its own)."""
    if value == "official":
        return cfg.get("official_crop_pct", cfg["crop_pct"])
    try:
        pct = float(value)
    except ValueError:
        pct = float("nan")
    if not 0 < pct <= 1:
        raise InputError(f"--crop-pct {value}: give a fraction in (0, 1], e.g. 0.9 or 1.0, or 'official'")
    return pct


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..runtime import default_device, dist_info
    from ..data import eval_root, open_dataset
    from ..evaluate import evaluate
    from ..registry import get_model_cfg
    from ..subnet import parse_subnets
    from ..transforms import create_transforms

    device = args.device or default_device()
    engine = check_engine(args.engine, args.precision, device)  # before data, weights or export
    check_calibration(args)
    rank, world = dist_info()  # joins the process group when started by paddle.distributed.launch

    def log(message: str) -> None:
        if rank == 0:
            print(message, file=sys.stderr, flush=True)
    if args.results_file and rank == 0:
        writable_file(args.results_file, "--results-file")  # now, not after an hour of evaluation
    extra = {"img_size": args.img_size} if args.img_size else {}
    # The data first: a wrong folder is reported before weights are fetched.
    data = eval_root(args.data, log) if args.data is not None and args.val_list is None else args.data
    check_offers_subnets(args)
    if args.model and args.crop_pct is not None:
        crop_pct(args.crop_pct, get_model_cfg(args.model))
    model = create_model(args, warn=False, **extra)
    cfg = model.pretrained_cfg
    dataset = open_dataset(data, args.val_list, num_classes=cfg["num_classes"], class_names=cfg.get("class_names"),
                           allow_outside_root=args.allow_outside_root)
    if not weights_of(args):
        log("warning: random weights (pass --pretrained or --checkpoint)")
    transforms = None if args.crop_pct is None else create_transforms(model, crop_pct=crop_pct(args.crop_pct, cfg))
    evaluate(model, dataset, transforms=transforms, batch_size=args.batch_size, num_workers=args.workers,
             engine=engine, precision=args.precision, device=device, calibration=args.calibration,
             threads=args.threads, workdir=args.workdir, subnets=parse_subnets(args.subnets, model, "--subnets"),
             skip_bad=args.skip_bad,
             distributed=world > 1, progress=not args.no_progress, pretrained=weights_of(args),
             results_file=args.results_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
