"""Throughput of a ppim model per engine, precision and batch size, against the machine's GEMM
ceiling measured in the same run, e.g.

    ppim-benchmark --model lvvit_s -b 16 --precision fp32,bf16 --json bench.json
    ppim-benchmark --model super_lvvit_s -b 16 --engine inference   # the 12 sub-networks
    ppim-benchmark --model super_lvvit_s -b 1 --engine inference --picture latency.png --latency-ms 150

(python tools/benchmark.py takes the same arguments.) Rows: images/s (median of --iters timed calls
after --warmup), GFLOP/s achieved (2 x MACs), the ceiling (the best GFLOP/s any installed engine
reaches on the model's own dense GEMM shapes at that batch, timed right after each point) and the
share of it; combinations an engine cannot run here are skipped and listed; super models add each
sub-network's speed-up over (224, 1.0) next to its FLOPs ratio, and --picture draws their published
top-1 against GFLOPs and, beside it, against the latency just measured (the smallest batch size, the
fastest engine and precision; --latency-ms adds that budget and the sub-network it picks). --checkpoint
of a ppim run gives the model (its kwargs and classes). "cores" is process CPU time over wall
time while the model ran: below --threads, other processes took some of the CPUs (compare shares,
which are measured under the same conditions). Weights do not change the speed: random ones are used.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

from .common import (BATCH, THREADS, ArgumentParser, add_model_arguments, add_subnets_argument, check_calibration,
                     check_offers_subnets,
                     command, create_model, integer, number, writable_file)


def _list(text, kind=str, choices=None):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if choices:
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))}: choose from {', '.join(choices)}")
    return values


def environment(threads=None) -> dict:
    from ..runtime import REPORTED_FLAGS, has, machine

    m = machine()
    return {"paddle_version": m.paddle_version, "python": platform.python_version(), "cpu": m.cpu_model,
            "cpu_flags": sorted(flag for flag in REPORTED_FLAGS if flag in m.cpu_flags),
            "cpu_count": os.cpu_count(), "threads": threads, "cpu_bf16": has("cpu_bf16"),
            "cuda": m.cuda_build, "simulated_profile": m.profile}


@command
def main(argv=None) -> int:
    from ..deploy.registry import DEVICES, ENGINES, PRECISIONS

    parser = ArgumentParser(prog="ppim-benchmark", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--engine", default="eager,inference", type=lambda t: _list(t, choices=ENGINES),
                        help="comma list of eager, inference, openvino, onnxruntime (default eager,inference)")
    parser.add_argument("--precision", default="fp32", type=lambda t: _list(t, choices=PRECISIONS),
                        help="comma list of fp32, bf16, fp16, int8 (default fp32)")
    parser.add_argument("--calibration", metavar="DIR",
                        help="int8: calibration images (default: the sample photos shipped with ppim, enough for "
                             "speed; give your own images to judge accuracy)")
    parser.add_argument("-b", "--batch-size", default="1,16", type=lambda t: _list(t, BATCH),
                        help="comma list of batch sizes (default 1,16)")
    parser.add_argument("--iters", type=integer(1), default=10, help="timed calls per point (default 10)")
    parser.add_argument("--warmup", type=integer(0), default=2, help="untimed calls first (default 2)")
    parser.add_argument("--threads", type=THREADS, help="CPU threads (default: all this process may use)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    add_subnets_argument(parser, "SuperViT: all (default) or a list like 224x1.0,160x0.7", default="all")
    parser.add_argument("--gmacs", type=number(above=0.0), help="override the model's GMACs per image (non-super models)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling")
    parser.add_argument("--json", help="write the rows and the environment to this JSON file")
    parser.add_argument("--picture", metavar="PNG",
                        help="super models: draw published top-1 against GFLOPs and against the latency measured "
                             "here into this PNG (needs matplotlib: pip install \"ppim[plot]\")")
    parser.add_argument("--latency-ms", type=number(above=0), metavar="MS",
                        help="--picture: mark this latency budget and the sub-network ppim-predict --latency-ms "
                             "would run for it")
    parser.add_argument("--train", action="store_true",
                        help="training step throughput instead (fp32; bf16 where eager Paddle has CPU kernels), "
                             "with its breakdown, against the PyTorch reference when torch is installed")
    parser.add_argument("--rounds", type=integer(1), default=None,
                        help="interleaved rounds: every point in turn, round after round, medians (default 1; "
                             "--train: 3)")
    args = parser.parse_args(argv)
    if args.train:
        return _train(args)
    from ..deploy import benchmark, format_rows
    from ..deploy.registry import check_supported, unsupported
    from ..errors import InputError
    from ..fileio import write_json
    from ..registry import get_model_cfg, model_name
    from ..subnet import parse_subnets, subnets_of

    runnable = [(e, p) for e in args.engine for p in args.precision if unsupported(e, p, args.device) is None]
    if not runnable:  # nothing asked for runs here: say why (the first) and what does
        check_supported(args.engine[0], args.precision[0], args.device)
    check_calibration(args, args.precision, required=False)  # int8 without it: the sample photos
    if args.json:
        writable_file(args.json, "--json")
    if args.latency_ms is not None and not args.picture:
        raise InputError("--latency-ms marks a budget on the --picture: give --picture PNG too")
    if args.picture:
        from ..visualize import require_matplotlib

        require_matplotlib()  # before anything is measured: the one thing a user must install
        writable_file(args.picture, "--picture")
        if args.model and not get_model_cfg(args.model).get("subnets"):
            raise InputError(f"--picture draws a super model's sub-networks (super_deit_s, super_lvvit_s); "
                             f"{args.model} has none")
    if args.subnets != "all":  # the default means every sub-network the model has, if any
        check_offers_subnets(args)
    model = create_model(args, warn=False)  # weights do not change the speed
    if args.picture and not subnets_of(model):  # a --checkpoint names its model only now
        raise InputError(f"--picture draws a super model's sub-networks; {model_name(model)} has none")
    subnets = args.subnets if args.subnets == "all" else parse_subnets(args.subnets, model, "--subnets")
    env = environment(args.threads)
    print(f"{args.model} on {env['cpu'] or 'this CPU'} ({env['cpu_count']} CPUs), Paddle {env['paddle_version']}",
          flush=True)
    rows = benchmark(model, engines=args.engine, precisions=args.precision, batch_sizes=args.batch_size,
                     iters=args.iters, warmup=args.warmup, threads=args.threads, device=args.device,
                     gmacs=args.gmacs, subnets=subnets, ceiling=not args.no_ceiling,
                     log=lambda m: print(m, file=sys.stderr, flush=True), calibration=args.calibration,
                     rounds=args.rounds or 1)
    print(format_rows(rows))
    if args.json:
        write_json(args.json, {"environment": env, "rows": rows})
        print(f"wrote {args.json}")
    if args.picture:
        from ..visualize import draw_benchmark_latency, save_png

        fig, table = draw_benchmark_latency(rows, budget_ms=args.latency_ms)
        save_png(fig, args.picture)
        print(f"wrote {args.picture} ({table['engine']} {table['precision']}, batch {table['batch']})")
    return 1 if rows and all("error" in row or "skipped" in row for row in rows) else 0


def _torch_peers(threads) -> dict:
    """The PyTorch reference's train step (the optional module benchmarks.torch_train_step, importable
    when a ppim checkout is on sys.path, as tools/benchmark.py puts it), fp32 and bf16 where the CPU
    has it; empty, with a note saying why, without torch or that module."""
    import importlib.util

    from ..runtime import has

    if importlib.util.find_spec("torch") is None:
        print("note: no PyTorch peer: torch is not installed", file=sys.stderr)
        return {}
    try:
        from benchmarks.torch_train_step import torch_step_factory
    except ImportError:
        print("note: no PyTorch peer: the module benchmarks.torch_train_step is not importable (run "
              "python tools/benchmark.py --train from a ppim checkout)", file=sys.stderr)
        return {}
    peers = {"torch eager fp32": torch_step_factory(threads=threads)}
    if has("cpu_bf16"):
        peers["torch eager bf16 autocast"] = torch_step_factory(amp="bfloat16", threads=threads)
    return peers


def _train(args) -> int:
    from ..fileio import write_json
    from ..runtime import missing, set_cpu_threads
    from ..training.step_timing import format_train_rows, train_benchmark

    if args.json:
        writable_file(args.json, "--json")
    threads = set_cpu_threads(args.threads)  # for this process, a benchmark run
    env = environment(threads)
    batch_size = args.batch_size[-1]
    variants = [("paddle fp32", {}), ("paddle fp32 +oneDNN", {"flags": {"FLAGS_use_mkldnn": True}})]
    reason = missing("eager_cpu_bf16")
    if reason is None:
        variants.append(("paddle bf16 autocast", {"amp": "bfloat16"}))
    else:
        print(f"note: no paddle bf16 row: {reason}", file=sys.stderr)
    print(f"{args.model} training step, batch {batch_size}, {threads} threads, on {env['cpu'] or 'this CPU'}, "
          f"Paddle {env['paddle_version']}", flush=True)
    rows = train_benchmark(lambda: create_model(args, warn=False), batch_size, variants=variants,
                           peers=_torch_peers(threads), rounds=args.rounds or 3, iters=args.iters, warmup=args.warmup,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_train_rows(rows))
    if args.json:
        write_json(args.json, {"environment": env, "train_rows": rows})
        print(f"wrote {args.json}")
    return 1 if rows and all("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
