"""Generate token labels of a training set with a teacher model (TokenLabeling's generate_label.py).

    ppim-make-token-labels /data/ILSVRC2012/train --teacher lvvit_l_448 --pretrained --output /data/token_labels
    python -m paddle.distributed.launch --nproc_per_node 4 tools/make_token_labels.py /data/ILSVRC2012/train \\
        --teacher lvvit_l_448 --pretrained --output /data/token_labels

(python tools/make_token_labels.py takes the same arguments.) DATA is a folder of class folders. For
every image the teacher runs at its eval transforms; its per-token scores (the aux head of LV-ViT,
else the classifier on each patch token) are kept as the top-k scores and class indices, float16
[2, k, H, W]. --format packed (default) writes memory-mapped arrays plus an index (fast to read);
official writes OUTPUT/<class>/<stem>.pt files as the official code does (read by either). An
interrupted run resumes where it stopped. Under paddle.distributed.launch each process labels its
share of the images. Convert between the formats with --convert SRC.
"""
from __future__ import annotations

import sys

from .common import BATCH, CLASSES, WORKERS, ArgumentParser, command, create_model, integer


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="ppim-make-token-labels", description=__doc__)
    p.add_argument("data", metavar="DATA", nargs="?", help="training images: a folder of class folders")
    p.add_argument("--teacher", "--model", dest="model",
                   help="teacher model name, e.g. lvvit_l_448 (optional with --checkpoint of a ppim run)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="the teacher's registered weights")
    weights.add_argument("--checkpoint", metavar="PATH",
                         help="teacher weights file or URL; a checkpoint ppim wrote gives the model too")
    p.add_argument("--num-classes", type=CLASSES, help="the teacher's classifier size (default: the checkpoint's or "
                                                   "the model's)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (each reported once) instead of stopping")
    p.add_argument("--model-kwargs", metavar="JSON", help="extra teacher constructor arguments as JSON")
    p.add_argument("--output", required=True, help="folder of the token labels")
    p.add_argument("--format", choices=("packed", "official"), default="packed",
                   help="packed memory-mapped arrays + index (default) or official per-image .pt files")
    p.add_argument("--convert", metavar="SRC", help="instead of generating: copy the labels in SRC (either "
                                                    "format) to --output in --format")
    p.add_argument("--topk", type=integer(1, 64), default=5, help="classes kept per token (default 5, as official)")
    p.add_argument("-b", "--batch-size", type=BATCH, default=64, help="images per teacher batch (default 64)")
    p.add_argument("-j", "--workers", type=WORKERS, help="data-loading processes (default: one per CPU, at most 4)")
    p.add_argument("--relabel", action="store_true",
                   help="label every image again when --output holds labels of another teacher (recorded in "
                        "OUTPUT/teacher.json: name, weights sha256, kwargs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.convert:
        from ..training.token_labels.formats import convert_token_labels

        count = convert_token_labels(args.convert, args.output, args.format, progress=not args.no_progress)
        print(f"{count} token labels written to {args.output} ({args.format})")
        return 0
    if not args.data or not (args.model or args.checkpoint):
        parser.error("DATA and --teacher (or --checkpoint of a ppim run) are required (or --convert SRC)")
    from ..data import ImageFolderDataset
    from ..runtime import dist_info
    from ..training.token_labels.generate import make_token_labels
    from ..transforms import create_transforms

    rank, world = dist_info()
    teacher = create_model(args, warn=rank == 0)
    dataset = ImageFolderDataset(args.data, transforms=create_transforms(teacher))
    done = make_token_labels(teacher, dataset, args.output, fmt=args.format, topk=args.topk,
                             batch_size=args.batch_size, num_workers=args.workers, rank=rank, world_size=world,
                             progress=not args.no_progress, skip_bad=args.skip_bad,
                             log=lambda message: print(message, file=sys.stderr, flush=True), relabel=args.relabel)
    skipped = f", {done['skipped']} unreadable skipped" if done["skipped"] else ""
    print(f"rank {rank}: {done['written']} images labelled{skipped}, {done['kept']} already done; labels in "
          f"{args.output}" if world > 1 else f"{done['written']} images labelled{skipped}, {done['kept']} already "
                                             f"done; labels in {args.output} ({args.format})")
    return 0
