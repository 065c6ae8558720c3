"""python tools/train.py: ppim-train from a checkout (see ppim/cli/train.py or --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

if __name__ == "__main__":
    from ppim.cli.train import main

    sys.exit(main())
