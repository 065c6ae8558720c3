"""python tools/train.py: ppim-train from a checkout (see ppim/cli/train.py or --help). Start this
script under paddle.distributed.launch on GPUs: it pins each process to its GPU before Paddle is
imported (as tools/eval.py), so every device-0 default lands on the process's own GPU."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

if __name__ == "__main__":
    from eval import _pin_launch_gpu  # tools/ is on sys.path as the script's folder

    _pin_launch_gpu()
    from ppim.cli.train import main

    sys.exit(main())
