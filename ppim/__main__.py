"""``python -m ppim COMMAND [ARGS]``: ``env`` prints what this machine runs (as ``ppim-env``)."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

#: command -> the ppim.cli module whose main() runs it
COMMANDS = {"env": "ppim.cli.env"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        usage = f"usage: python -m ppim {{{','.join(COMMANDS)}}} [ARGS] (see python -m ppim env --help)"
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return 0
        print(f"{usage}\nerror: {'no command' if not argv else f'unknown command {argv[0]!r}'}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
