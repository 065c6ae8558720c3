"""What every ppim command line shares: the runner that turns expected errors into one
``error: ...`` line (exit 2), the argument parser, the model arguments and the output checks.

A tool is a module in ppim.cli with ``main(argv=None) -> int`` decorated by :func:`command`::

    @command
    def main(argv=None) -> int:
        parser = ArgumentParser(description=__doc__)
        add_model_arguments(parser)
        args = parser.parse_args(argv)
        model = create_model(args)
        ...
        return 0

Expected errors are ppim.errors.PpimError (unknown model, bad image, weights that cannot be got or
read, bad input, what this machine cannot run: CapabilityError), OSError (missing file, no permission, disk full) and MemoryError: one line on
stderr naming the cause and the fix, exit status 2. Ctrl-C exits with 130 without a traceback.
Anything else is a bug and keeps its traceback; PPIM_DEBUG=1 prints the traceback for every error.
"""
from __future__ import annotations

import argparse
import errno
import functools
import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..errors import InputError, ParameterError, PpimError
from ..registry import PADDLE_IMPORT_NOISE
from .launch import pin_launch_gpu

__all__ = ["ArgumentParser", "EXIT_ERROR", "EXIT_INTERRUPTED", "add_ema_arguments", "add_model_arguments", "command", "create_model",
           "check_engine", "describe_error", "integer", "model_kwargs", "number", "number_pair", "refuse_same_file", "weights_of",
           "writable_file", "BATCH", "CLASSES", "EPOCHS", "IMG_SIZE", "PROBABILITY", "RATE", "THREADS", "WORKERS"]

#: Exit status of an expected error (argparse uses 2 for usage errors too).
EXIT_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT, what a shell reports for a process killed by it).
EXIT_INTERRUPTED = 130

#: Errors that come from input or environment, not from a bug in ppim.
EXPECTED_ERRORS = (PpimError, OSError, MemoryError)

_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "the disk is full: free some space or choose another location",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another location",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.ELOOP: "too many symbolic links (a link loop?): check the links",
}


#: Library parameters whose command-line spelling is not ``--`` + the name with dashes.
FLAGS = {"name": "--model", "checkpoint_path": "--checkpoint", "data": "DATA", "batch_size": "-b",
         "num_workers": "-j", "workers": "-j", "model_kwargs": "--model-kwargs", "val": "--no-val",
         "progress": "--no-progress"}


def flag_of(param: str) -> str:
    """The command-line flag of a library parameter (``clip_grad`` -> ``--clip-grad``)."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def _spell_flag(param: str, value: Any) -> str:
    flag = flag_of(param)
    if value is ParameterError.NAME_ONLY or value is True or (flag.startswith("--no-") and str(value) == "False"):
        return flag
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = "'" + json.dumps(value) + "'"
    return f"{flag} {value}" if flag != "DATA" else str(value)


def _in_ppim_home(filename: Any) -> bool:
    """Whether a file named by an error lies in ppim's own data folder (PPIM_HOME)."""
    if filename is None:
        return False
    from ..weights.cache import ppim_home

    home = os.path.abspath(ppim_home())
    return os.path.commonpath([home, os.path.abspath(os.fsdecode(filename))]) == home


def describe_error(error: BaseException) -> str:
    """One line saying what went wrong and, where ppim knows, what to do about it. A library error
    naming its parameters (ParameterError) names the command line's flags instead."""
    if isinstance(error, ParameterError):
        message = error.render(_spell_flag)
        return "; ".join(line.strip() for line in message.splitlines() if line.strip())
    if isinstance(error, MemoryError):
        return ("out of memory" + (f" ({error})" if str(error) else "")
                + ": use a smaller batch size (-b) or fewer workers (-j), or free memory")
    if isinstance(error, OSError) and not isinstance(error, PpimError) and error.strerror:
        what = f"{error.strerror}: {error.filename}" if error.filename is not None else error.strerror
        if error.filename2 is not None:
            what += f" -> {error.filename2}"
        hint = _OS_HINTS.get(error.errno or 0)
        if hint and error.errno in (errno.ENOSPC, errno.EDQUOT) and _in_ppim_home(error.filename):
            hint += " (PPIM_HOME moves the weights and export caches)"
        message = f"{what} ({hint})" if hint else what
    else:
        message = str(error) or type(error).__name__
    # One line: a multi-line message (lists of keys, ...) is joined, not cut.
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _debug() -> bool:
    return os.environ.get("PPIM_DEBUG", "").strip() not in ("", "0")


def run(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)``; expected errors become one ``error:`` line on stderr and status 2."""
    try:
        with warnings.catch_warnings():  # the tool's own output stays free of Paddle's import note
            warnings.filterwarnings("ignore", message=PADDLE_IMPORT_NOISE, category=UserWarning)
            return main(argv)
    except KeyboardInterrupt:
        if _debug():
            traceback.print_exc()
        return EXIT_INTERRUPTED
    except EXPECTED_ERRORS as error:
        if _debug():
            traceback.print_exc()
        if isinstance(error, BrokenPipeError):  # `ppim-predict ... | head`: the reader left, say nothing
            _silence_stdout()
            return 1
        print(f"error: {describe_error(error)}", file=sys.stderr, flush=True)
        return EXIT_ERROR


def _silence_stdout() -> None:
    # Python flushes stdout again at exit, which would raise BrokenPipeError once more.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def command(main: Callable[..., int]) -> Callable[[Optional[Sequence[str]]], int]:
    """Decorator for a tool's ``main(argv=None) -> int``: pins the process to its GPU under
    paddle.distributed.launch (before anything imports Paddle) and runs ``main`` through :func:`run`."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None) -> int:
        pin_launch_gpu()
        return run(main, argv)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the docstring layout kept, and usage errors as one ``error:`` line (status 2)."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------------------
# Argument types: every value checked at parse time (one ``error:`` line naming the flag, status 2)
# ----------------------------------------------------------------------------------------------


def integer(low: int = 1, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low`` .. ``high``."""
    span = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {span}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: Optional[float] = None, high: Optional[float] = None, *, above: Optional[float] = None
           ) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``low`` (or > ``above``) and <= ``high``."""
    parts = ([f">= {low:g}"] if low is not None else []) + ([f"> {above:g}"] if above is not None else []) \
        + ([f"<= {high:g}"] if high is not None else [])
    span = "a finite number" + (f" {' and '.join(parts)}" if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {span}, got {text!r}") from None
        if (not math.isfinite(value) or (low is not None and value < low) or (above is not None and value <= above)
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"expected {span}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def number_pair(low: Optional[float] = None, high: Optional[float] = None, *, above: Optional[float] = None
                ) -> Callable[[str], "tuple[float, float]"]:
    """An argparse type: "a,b", two numbers of ``number(low, high, above=above)`` with a <= b."""
    one = number(low, high, above=above)

    def parse(text: str) -> "tuple[float, float]":
        parts = text.split(",")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected two numbers like 0.08,1.0, got {text!r}")
        first, second = (one(part) for part in parts)
        if first > second:
            raise argparse.ArgumentTypeError(f"expected the smaller number first, got {text}")
        return first, second

    parse.__name__ = "pair"
    return parse


#: The shared types of the flags every tool has (bounds far beyond real use, well below absurd allocations).
BATCH = integer(1, 1 << 16)
WORKERS = integer(0, 256)
THREADS = integer(1, 4096)
EPOCHS = integer(1, 1_000_000)
IMG_SIZE = integer(1, 8192)
CLASSES = integer(1, 1_000_000)
PROBABILITY = number(0.0, 1.0)
RATE = number(0.0)


# ----------------------------------------------------------------------------------------------
# Model arguments
# ----------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, weights: bool = True, num_classes: bool = True) -> None:
    """--model NAME, --model-kwargs JSON, --num-classes N (``num_classes``) and (``weights``)
    --pretrained | --checkpoint PATH. With ``weights``, --model is optional: a checkpoint ppim wrote
    names its model (see :func:`create_model`)."""
    parser.add_argument("--model", required=not weights,
                        help="model name, e.g. lvvit_s (see ppim.list_models()); with --checkpoint of a ppim "
                             "run or conversion: optional, taken from it")
    if weights:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--pretrained", action="store_true", help="the registered weights")
        group.add_argument("--checkpoint", metavar="PATH",
                           help="weights file or URL (.pdparams, or a PyTorch checkpoint converted on load); a "
                                "checkpoint ppim wrote gives the model, its kwargs, classes and transforms")
    if num_classes:
        parser.add_argument("--num-classes", type=CLASSES, default=None,
                            help="classifier size (default: the checkpoint's, else the model's)")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help='extra constructor arguments as JSON, for experiments and tests, e.g. '
                             '\'{"embed_dim": 48, "depth": 2}\'')
    if weights:
        add_ema_arguments(parser)


def add_ema_arguments(parser: argparse.ArgumentParser) -> None:
    """--ema | --no-ema (dest ``ema``: True, False, or None for the file's and the model's default)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ema", dest="ema", action="store_true", default=None,
                       help="take the EMA weights of a checkpoint (state_dict_ema / model_ema / ema)")
    group.add_argument("--no-ema", dest="ema", action="store_false",
                       help="take a checkpoint's model weights (default: a ppim training checkpoint's "
                            "evaluated weights; the EMA's where the model's published accuracy is)")


def add_subnets_argument(parser: argparse.ArgumentParser, help: str, default: Optional[str] = None) -> None:
    """--subnets LIST ("all" or "224x1.0,128x0.5"): its syntax is checked while parsing, its values
    against the model once built (:func:`ppim.subnet.parse_subnets` with the model)."""
    parser.add_argument("--subnets", metavar="LIST", default=default, type=_subnets_syntax, help=help)


def _subnets_syntax(text: str) -> str:
    from ..subnet import parse_subnets

    try:
        parse_subnets(text, None, "--subnets")
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def check_offers_subnets(args: argparse.Namespace) -> None:
    """InputError, before the model is built (and its weights fetched), when --subnets is given for
    a model without sub-networks (its registered cfg lists none)."""
    from ..registry import get_model_cfg

    name = getattr(args, "model", None)  # None: a --checkpoint names it, checked once the model is built
    if getattr(args, "subnets", None) is not None and name and not get_model_cfg(name).get("subnets"):
        raise InputError(f"--subnets needs a super model (super_deit_s, super_lvvit_s); {name} has no sub-networks")


def model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The constructor arguments of --model-kwargs (a JSON object)."""
    if not getattr(args, "model_kwargs", None):
        return {}
    try:
        kwargs = json.loads(args.model_kwargs)
    except ValueError as error:
        raise InputError(f"--model-kwargs is not valid JSON ({error}): pass an object such as "
                         f"'{{\"depth\": 2}}'") from None
    if not isinstance(kwargs, dict):
        raise InputError(f"--model-kwargs must be a JSON object such as '{{\"depth\": 2}}', not {args.model_kwargs}")
    return kwargs


def weights_of(args: argparse.Namespace) -> Any:
    """What to pass as ``pretrained``: the --checkpoint path, True for --pretrained, else False."""
    return getattr(args, "checkpoint", None) or getattr(args, "pretrained", False)


def create_model(args: argparse.Namespace, warn: bool = True, new_head: bool = False, **kwargs: Any) -> Any:
    """ppim.builder.create_model for --model (or the model --checkpoint describes) with its weights,
    --num-classes and --model-kwargs (``kwargs`` override them). The classifier must load unless
    ``new_head`` (fine-tuning): a tool never scores with random heads. ``args.model`` is set to the
    name built. Constructor arguments it cannot take are reported as input errors naming them."""
    from ..builder import create_model as build

    if not getattr(args, "model", None) and not getattr(args, "checkpoint", None):
        raise InputError("pass --model NAME, or --checkpoint of a ppim run")
    pretrained = getattr(args, "pretrained", False)
    checkpoint = getattr(args, "checkpoint", None)
    kwargs = {**model_kwargs(args), **kwargs}
    if getattr(args, "num_classes", None) is not None:
        kwargs.setdefault("num_classes", args.num_classes)
    try:
        model = build(args.model, pretrained=pretrained, checkpoint_path=checkpoint, ema=getattr(args, "ema", None),
                      new_head=new_head, **kwargs)
    except PpimError:
        raise
    except (TypeError, ValueError) as error:  # a constructor refusing its arguments
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
        raise InputError(f"cannot build {args.model or 'the model'} with {given}: {error}") from error
    from ..registry import model_name

    args.model = model_name(model)
    if warn and not (pretrained or checkpoint):
        print("warning: random weights (pass --pretrained or --checkpoint)", file=sys.stderr)
    return model


def add_precision_arguments(parser: argparse.ArgumentParser, help: str) -> None:
    """--precision (one of ppim.deploy.registry.PRECISIONS) and --calibration DIR (int8's
    calibration images), checked together by :func:`check_calibration`."""
    from ..deploy.registry import PRECISIONS

    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help=help)
    parser.add_argument("--calibration", metavar="DIR",
                        help="int8: a folder of images like the ones the model will classify (a few hundred; "
                             "up to 300 are read, evenly spaced), for post-training quantization")


def check_calibration(args: argparse.Namespace, precisions: Optional[Sequence[str]] = None,
                      required: bool = True) -> None:
    """InputError, before weights or data are touched, when int8 (in ``precisions``, default
    ``args.precision``) has no --calibration folder (``required``; the benchmark has a default), or
    --calibration is given without int8 or names no folder."""
    wanted = [args.precision] if precisions is None else list(precisions)
    if required and "int8" in wanted and args.calibration is None:
        raise InputError("--precision int8 needs --calibration DIR: a folder of images like the ones the model "
                         "will classify (post-training quantization measures its activations on them)")
    if args.calibration is not None:
        if "int8" not in wanted:
            raise InputError("--calibration is for --precision int8; drop it or add --precision int8")
        if not os.path.isdir(args.calibration):
            raise InputError(f"--calibration {args.calibration}: no such folder; give a folder of images")


def check_engine(engine: str, precision: str, device: str) -> str:
    """``engine`` ('auto': the one it resolves to) after checking that this machine runs it with
    ``precision`` on ``device``: checked before data, weights or exports are touched; otherwise
    CapabilityError, whose message names what does run here (one ``error:`` line, exit 2)."""
    from ..deploy.registry import check_supported, resolve_engine

    resolved = resolve_engine(engine, device, precision)
    check_supported(resolved, precision, device)
    return resolved


# ----------------------------------------------------------------------------------------------
# Outputs: checked before the work, never over the input
# ----------------------------------------------------------------------------------------------


def writable_file(path: "str | os.PathLike[str]", flag: str = "output") -> Path:
    """ppim.fileio.check_writable for a command-line ``flag``: checked before the work starts."""
    from ..fileio import check_writable

    try:
        return check_writable(path)
    except OSError as error:
        hint = _OS_HINTS.get(error.errno or 0, "choose another location")
        raise InputError(f"{flag} {path} cannot be written: {error.strerror or error} ({hint}); "
                         f"nothing was run") from None


def refuse_same_file(source: "str | os.PathLike[str]", output: "str | os.PathLike[str]",
                     what: str = "output") -> None:
    """InputError if writing ``output`` would destroy ``source``: the same file (also through links),
    or an output folder that holds it (outputs are replaced as a whole)."""
    source, output = Path(source), Path(output)
    real_source, real_output = source.resolve(), output.resolve()
    same = real_source == real_output or real_output in real_source.parents
    if not same and source.exists() and output.exists():
        same = os.path.samefile(source, output)
    if same:
        raise InputError(f"the {what} {output} would overwrite the input {source}; choose another {what} path")
