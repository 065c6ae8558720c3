"""python tools/make_token_labels.py: ppim-make-token-labels from a checkout (see
ppim/cli/make_token_labels.py or --help); start it under paddle.distributed.launch to label on
several GPUs (each process pinned to its GPU before Paddle loads, ppim.cli.launch)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ppim.cli.make_token_labels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
