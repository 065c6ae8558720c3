"""python tools/export.py: ppim-export from a checkout (see ppim/cli/export.py or --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ppim.cli.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
