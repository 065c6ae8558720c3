"""python tools/benchmark.py: ppim-benchmark from a checkout (see ppim/cli/benchmark.py or --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ppim.cli.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
