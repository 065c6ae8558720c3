"""Throughput of a ppim model per engine, precision and batch size, against the machine's GEMM
ceiling measured in the same run, e.g.

    ppim-benchmark --model lvvit_s -b 16 --precision fp32,bf16 --json bench.json
    ppim-benchmark --model super_lvvit_s -b 16 --engine inference   # the 12 sub-networks

(python tools/benchmark.py takes the same arguments.) Rows: images/s (median of --iters timed calls
after --warmup), GFLOP/s achieved (2 x MACs), the ceiling (the best GFLOP/s any installed engine
reaches on the model's own dense GEMM shapes at that batch, timed right after each point) and the
share of it; combinations an engine cannot run here are skipped and listed; super models add each
sub-network's speed-up over (224, 1.0) next to its FLOPs ratio. "cores" is process CPU time over wall
time while the model ran: below --threads, other processes took some of the CPUs (compare shares,
which are measured under the same conditions). Weights do not change the speed: random ones are used.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from .common import ArgumentParser, add_model_arguments, command, create_model, writable_file


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


def _subnets(text):
    from ..models.supervit import parse_subnet_spec

    try:
        return parse_subnet_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def environment(threads=None) -> dict:
    import paddle

    from ..deploy import cpu_supports_bf16

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"paddle_version": paddle.__version__, "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "threads": threads, "cpu_bf16": cpu_supports_bf16(),
            "cuda": paddle.is_compiled_with_cuda()}


@command
def main(argv=None) -> int:
    from ..deploy import ENGINES, PRECISIONS

    parser = ArgumentParser(prog="ppim-benchmark", description=__doc__)
    add_model_arguments(parser, weights=False)
    parser.add_argument("--engine", default="eager,inference", type=lambda t: _list(t, choices=ENGINES),
                        help="comma list of eager, inference, openvino, onnxruntime (default eager,inference)")
    parser.add_argument("--precision", default="fp32", type=lambda t: _list(t, choices=PRECISIONS),
                        help="comma list of fp32, bf16, fp16 (default fp32)")
    parser.add_argument("-b", "--batch-size", default="1,16", type=lambda t: _list(t, int),
                        help="comma list of batch sizes (default 1,16)")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per point (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--subnets", default="all", type=_subnets, help="SuperViT: all (default) or a list like 224x1.0,160x0.7")
    parser.add_argument("--gmacs", type=float, help="override the model's GMACs per image (non-super models)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling")
    parser.add_argument("--json", help="write the rows and the environment to this JSON file")
    args = parser.parse_args(argv)
    from ..deploy import benchmark, format_rows
    from ..fileio import write_json

    if args.json:
        writable_file(args.json, "--json")
    model = create_model(args, warn=False)  # weights do not change the speed
    env = environment(args.threads)
    print(f"{args.model} on {env['cpu'] or 'this CPU'} ({env['cpu_count']} CPUs), Paddle {env['paddle_version']}",
          flush=True)
    rows = benchmark(model, engines=args.engine, precisions=args.precision, batch_sizes=args.batch_size,
                     iters=args.iters, warmup=args.warmup, threads=args.threads, device=args.device,
                     gmacs=args.gmacs, subnets=args.subnets, ceiling=not args.no_ceiling,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_rows(rows))
    if args.json:
        write_json(args.json, {"environment": env, "rows": rows})
        print(f"wrote {args.json}")
    return 1 if rows and all("error" in row or "skipped" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
