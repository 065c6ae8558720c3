"""Fine-tune or train a ppim model on an image folder, on one process or many.

    ppim-train /data/flowers --model lvvit_s --recipe finetune --output runs/flowers
    python -m paddle.distributed.launch --nproc_per_node 4 tools/train.py /data/ILSVRC2012 --model lvvit_s \\
        -b 256 --drop-path 0.1 --model-ema --amp --output runs/lvvit_s
    ppim-train --resume runs/flowers/last.pdparams                  # continues the run, its settings
    ppim-eval /data/flowers --checkpoint runs/flowers/best.pdparams  # its val split, its model and classes

(python tools/train.py takes the same arguments.) DATA holds train/ and val/ class folders (ImageNet
layout) or train_list.txt and val_list.txt ("relative/path label" lines, PaddleClas). Flags follow
timm's train.py. Each epoch writes OUTPUT/last.pdparams, OUTPUT/best.pdparams (by validation top-1,
of the EMA weights with --model-ema), summary.csv and curves.png (with matplotlib); both checkpoints
hold everything --resume needs and describe their model (name, kwargs, classes, transforms), so every
tool's --checkpoint builds it with no other flag. --resume alone continues the run in its folder with its
settings; flags given as well override them (printed). -b is per process: under
paddle.distributed.launch the global batch is -b times the number of processes. A warm-up and cooldown
that do not fit --epochs are scaled (said in one line). --recipe finetune: the usual settings to
fine-tune a pretrained model (see ppim.training.recipes); super_deit_s trains its official recipe.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

from .common import (BATCH, EPOCHS, IMG_SIZE, PROBABILITY, RATE, THREADS, WORKERS, ArgumentParser,
                     add_model_arguments, command, integer, model_kwargs, number, number_pair)


def build_parser() -> ArgumentParser:
    from ..training.recipes import RECIPES
    from ..training.run import TrainConfig

    d = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    p = ArgumentParser(prog="ppim-train", description=__doc__)
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="folder with train/ and val/ (or train_list.txt and val_list.txt); with --resume: the run's")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="let list files name images outside DATA (absolute or ../ paths)")
    add_model_arguments(p)
    model = p.add_argument_group("model")
    model.add_argument("--img-size", type=IMG_SIZE, help="input size (default: the model's)")
    model.add_argument("--drop", type=PROBABILITY, default=d["drop"], help="dropout rate (default 0)")
    model.add_argument("--drop-path", type=PROBABILITY, help="stochastic depth rate (default: the model's)")
    model.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights, evaluated too")
    model.add_argument("--model-ema-decay", type=number(0.0, 1.0), default=d["model_ema_decay"],
                       help=f"EMA decay per step (default {d['model_ema_decay']})")
    run = p.add_argument_group("run")
    run.add_argument("--output", default=d["output"], help=f"folder for checkpoints and records (default {d['output']})")
    run.add_argument("--resume", metavar="CKPT",
                     help="continue the run of a last.pdparams / best.pdparams in its folder, with its settings")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the records (checkpoints, summary.csv) of another run in --output")
    run.add_argument("--recipe", choices=RECIPES,
                     help="preset filling the flags not given: official (default: the model's published recipe), "
                          "finetune (from a pretrained model: lr 1e-4 per 64 images, 1 warm-up epoch, 30 epochs) "
                          "or none")
    run.add_argument("--skip-bad", action="store_true",
                     help="skip unreadable images (each reported once) instead of stopping")
    run.add_argument("-b", "--batch-size", type=BATCH, default=d["batch_size"],
                     help=f"images per step and process (default {d['batch_size']})")
    run.add_argument("-j", "--workers", type=WORKERS, help="data-loading processes (default: one per CPU, at most 4)")
    run.add_argument("--epochs", type=EPOCHS, default=d["epochs"], help=f"epochs to train (default {d['epochs']})")
    run.add_argument("--seed", type=integer(0, 2**32 - 1), default=d["seed"], help=f"random seed (default {d['seed']})")
    run.add_argument("--eval-interval", type=integer(1), default=d["eval_interval"],
                     help="evaluate every N epochs (and after the last; default 1)")
    run.add_argument("--no-val", action="store_true", help="train without a val split (no evaluation, no best)")
    run.add_argument("--device", choices=("cpu", "gpu"), help="default: gpu when there is one")
    run.add_argument("--amp", action="store_true", help="mixed precision (paddle.amp O1)")
    run.add_argument("--amp-dtype", choices=("float16", "bfloat16"),
                     help="default: float16 on GPUs (loss scaling), bfloat16 on CPUs")
    run.add_argument("--threads", type=THREADS, help="CPU math threads (default: every CPU)")
    run.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across GPUs")
    run.add_argument("--visualdl", action="store_true", help="log to OUTPUT/visualdl (pip install visualdl)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    opt = p.add_argument_group("optimizer and schedule")
    opt.add_argument("--opt", default=d["opt"], help=f"optimizer (default {d['opt']})")
    opt.add_argument("--lr", type=number(above=0.0), default=d["lr"], help=f"peak learning rate (default {d['lr']})")
    opt.add_argument("--weight-decay", type=RATE, default=d["weight_decay"],
                     help=f"weight decay, not on biases, norms and embeddings (default {d['weight_decay']})")
    opt.add_argument("--momentum", type=PROBABILITY, default=d["momentum"], help="SGD momentum (default 0.9)")
    opt.add_argument("--clip-grad", type=number(above=0.0), help="clip the gradients' global norm to this (default: no clipping)")
    opt.add_argument("--sched", default=d["sched"], choices=("cosine",), help="learning rate schedule")
    opt.add_argument("--warmup-epochs", type=integer(0), default=d["warmup_epochs"],
                     help=f"linear warm-up epochs (default {d['warmup_epochs']})")
    opt.add_argument("--warmup-lr", type=RATE, default=d["warmup_lr"], help=f"warm-up start (default {d['warmup_lr']})")
    opt.add_argument("--min-lr", type=RATE, default=d["min_lr"], help=f"cosine floor (default {d['min_lr']})")
    opt.add_argument("--cooldown-epochs", type=integer(0), default=d["cooldown_epochs"],
                     help=f"epochs at --min-lr after the cosine (default {d['cooldown_epochs']})")
    aug = p.add_argument_group("augmentation and regularisation")
    aug.add_argument("--smoothing", type=PROBABILITY, default=d["smoothing"], help=f"label smoothing (default {d['smoothing']})")
    aug.add_argument("--mixup", type=RATE, default=d["mixup"], help="Mixup alpha (e.g. 0.8; default off)")
    aug.add_argument("--cutmix", type=RATE, default=d["cutmix"], help="CutMix alpha (e.g. 1.0; default off)")
    aug.add_argument("--cutmix-minmax", type=number_pair(0.0, 1.0), help="CutMix box ratio bounds, e.g. 0.2,0.8")
    aug.add_argument("--mixup-prob", type=PROBABILITY, default=d["mixup_prob"], help="chance of mixing a batch")
    aug.add_argument("--mixup-switch-prob", type=PROBABILITY, default=d["mixup_switch_prob"],
                     help="chance of CutMix instead of Mixup when both are on (default 0.5)")
    aug.add_argument("--mixup-mode", choices=("batch", "pair", "elem"), default=d["mixup_mode"])
    aug.add_argument("--aa", default=d["aa"], help=f"RandAugment policy, or 'none' (default {d['aa']})")
    aug.add_argument("--reprob", type=PROBABILITY, default=d["reprob"], help=f"random erasing chance (default {d['reprob']})")
    aug.add_argument("--scale", type=number_pair(high=1.0, above=0.0), default=d["scale"], help="random-resized-crop area range (default 0.08,1)")
    aug.add_argument("--ratio", type=number_pair(above=0.0), default=d["ratio"], help="random-resized-crop aspect range (default 3/4,4/3)")
    aug.add_argument("--hflip", type=PROBABILITY, default=d["hflip"], help="horizontal flip chance (default 0.5)")
    aug.add_argument("--train-interpolation", default=d["train_interpolation"],
                     help="resize filter of the random crop: random, bilinear, bicubic (default random)")
    tl = p.add_argument_group("token labeling and SuperViT")
    tl.add_argument("--token-label", action="store_true",
                    help="train the aux head on every token (TokenLabelCrossEntropy with MixToken; LV-ViT models)")
    tl.add_argument("--token-label-data", metavar="DIR",
                    help="token labels of the train images: official <class>/<stem>.pt files or packed "
                         "(tools/make_token_labels.py)")
    tl.add_argument("--token-label-size", type=integer(1, 1024), default=d["token_label_size"],
                    help="token grid the labels are aligned to (14 for LV-ViT at 224; default 1: cls only)")
    tl.add_argument("--dense-weight", type=RATE, default=d["dense_weight"], help="weight of the token loss")
    tl.add_argument("--cls-weight", type=RATE, default=d["cls_weight"], help="weight of the cls loss")
    tl.add_argument("--ground-truth", action="store_true",
                    help="lean the cls target towards the ground truth where the labels disagree with it")
    tl.add_argument("--repeated-aug", action=argparse.BooleanOptionalAction, default=d["repeated_aug"],
                    help="DeiT's repeated-augmentation sampler (default: on for super_deit_s)")
    return p


def _given(parser: ArgumentParser, argv) -> set:
    """The destinations the command line sets explicitly."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


#: Parser destinations that set a TrainConfig field of another name.
_FIELDS = {"no_val": "val", "no_progress": "progress"}


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of parsed arguments."""
    from ..training.run import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(model_kwargs=model_kwargs(args), val=not args.no_val, progress=not args.no_progress,
                  aa=None if (args.aa or "").lower() in ("", "none") else args.aa)
    return TrainConfig(**values)


@command
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {_FIELDS.get(name, name) for name in _given(parser, argv)}
    from ..training.run import train

    result = train(config_from_args(args), given=given)
    best = result["best"]
    if best:
        print(f"best {best['metric_name'].replace('_', ' ')} {best['metric']:.2f} at epoch {best['epoch']}; "
              f"checkpoints in {result['output']}")
    return 0
