"""python tools/eval.py: ppim-eval from a checkout (see ppim/cli/eval.py or --help). This is also the
script to start under paddle.distributed.launch on GPUs: it pins each process to its GPU before
Paddle is imported, which an installed ppim-eval (importing Paddle with ppim) cannot do."""
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


if __name__ == "__main__":
    _pin_launch_gpu()
    from ppim.cli.eval import main

    sys.exit(main())
