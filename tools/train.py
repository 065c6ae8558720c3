"""python tools/train.py: ppim-train from a checkout (see ppim/cli/train.py or --help); under
paddle.distributed.launch each process is pinned to its GPU before Paddle loads (ppim.cli.launch)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ppim.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
