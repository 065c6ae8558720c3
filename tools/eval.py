"""Top-1/top-5 accuracy and throughput of a ppim model on an ImageNet-style validation set.

    python tools/eval.py --model lvvit_s --pretrained                        # the shipped sample
    python tools/eval.py /data/ILSVRC2012/val --model lvvit_s --pretrained -b 64 -j 2
    python tools/eval.py /data/ILSVRC2012 --val-list val_list.txt --model lvvit_m --checkpoint m.pdparams
    python tools/eval.py /data/val --model super_lvvit_s --pretrained --subnets all --results-file r.json
    python -m paddle.distributed.launch --nproc_per_node 2 tools/eval.py /data/val --model lvvit_s --pretrained

DATA is a folder of class subfolders (sorted names = class index; WordNet-id folders of an ImageNet
subset get their ImageNet ids), or the root of the paths in --val-list ("relative/path label" lines,
PaddleClas format; a val_list.txt inside DATA is used by itself). Without DATA: the sample shipped in
ppim/assets/sample. Under paddle.distributed.launch each process takes every W-th image and the
counts are summed: the result is exactly the single-process one; rank 0 prints and writes the file.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _pin_launch_gpu() -> None:
    """Under paddle.distributed.launch on GPUs each process gets its GPU in FLAGS_selected_gpus (an
    index into CUDA_VISIBLE_DEVICES, or a device id when that is unset). Making that GPU the only
    visible one, before Paddle is imported, makes it device 0 here, so every device-0 default (eager
    CUDAPlace(0), the predictor's device_id 0) lands on this rank's own GPU."""
    selected = os.environ.get("FLAGS_selected_gpus", "")
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1) <= 1 or not selected.isdigit():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible and visible != "all" else None
    if devices is not None and int(selected) >= len(devices):
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(selected)].strip() if devices else selected
    os.environ["FLAGS_selected_gpus"] = "0"


_pin_launch_gpu()

import ppim  # noqa: E402
from ppim.data import BadImageError  # noqa: E402
from ppim.evaluate import dist_info, evaluate  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", metavar="DATA",
                        help="validation folder, or the root of --val-list paths (default: the shipped sample)")
    parser.add_argument("--model", required=True, help="model name, e.g. lvvit_s (see ppim.list_models())")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="the registered weights")
    weights.add_argument("--checkpoint", metavar="PATH",
                         help="weights file or URL (.pdparams, or a PyTorch checkpoint converted on load)")
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("-j", "--workers", type=int, default=None,
                        help="data-loading processes (default: one per CPU, at most 4; 0 decodes in the "
                             "main process)")
    parser.add_argument("--val-list", metavar="FILE", help='list file of "relative/path label" lines')
    parser.add_argument("--engine", choices=("eager", "inference"), default="eager",
                        help="eager Paddle, or Paddle Inference on the exported model (default eager)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="default: gpu when Paddle has CUDA and sees a GPU, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU math threads (default: the engine's)")
    parser.add_argument("--workdir", metavar="DIR", help="where --engine inference keeps the exported model")
    parser.add_argument("--subnets", metavar="LIST",
                        help="super models: 'all' or e.g. 224x1.0,128x0.5; all in one pass over the data")
    parser.add_argument("--img-size", type=int, default=None,
                        help="build the model for this input size (crop; resize keeps the cfg's ratio)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the cfg's)")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help='extra constructor arguments as JSON, for experiments and tests, e.g. '
                             '\'{"embed_dim": 48, "depth": 2}\'')
    parser.add_argument("--results-file", metavar="FILE", help="write the results as JSON (atomically)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images (reported, not counted) instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def default_device() -> str:
    import paddle

    try:
        if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            return "gpu"
    except Exception:  # pragma: no cover - broken CUDA setups fall back to the CPU
        pass
    return "cpu"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(kwargs, dict):
        raise SystemExit("--model-kwargs must be a JSON object")
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes

    rank, world = dist_info()  # joins the process group when started by paddle.distributed.launch
    device = args.device or default_device()
    pretrained = args.checkpoint or args.pretrained
    model = ppim.create_model(args.model, pretrained=pretrained, **kwargs)
    if not pretrained and rank == 0:
        print("warning: random weights (pass --pretrained or --checkpoint)", file=sys.stderr)
    try:
        evaluate(model, args.data, val_list=args.val_list, batch_size=args.batch_size, num_workers=args.workers,
                 engine=args.engine, precision=args.precision, device=device, threads=args.threads,
                 workdir=args.workdir, subnets=args.subnets, skip_bad=args.skip_bad,
                 distributed=world > 1, progress=not args.no_progress, pretrained=pretrained,
                 results_file=args.results_file)
    except (BadImageError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
