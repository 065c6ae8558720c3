"""Throughput of a ppim model per engine, precision and batch size, against the machine's matmul
ceiling measured in the same run through the same engine, e.g.

    python tools/benchmark.py --model lvvit_s -b 16 --precision fp32,bf16 --json bench.json
    python tools/benchmark.py --model super_lvvit_s -b 16 --engine inference   # the 12 sub-networks

Rows: images/s (median of --iters timed calls after --warmup), GFLOP/s achieved (2 x MACs), the
ceiling (the best GFLOP/s any installed engine reaches on the model's own dense GEMM shapes at that
batch, timed right after each point) and the share of it; combinations an engine cannot run here
are skipped and listed; super models add each sub-network's speed-up over (224, 1.0) next to its FLOPs ratio.
"cores" is process CPU time over wall time while the model ran: below --threads, other processes took
some of the CPUs (compare shares, which are measured under the same conditions). Weights do not
change the speed: random ones are used.
"""
import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ppim.deploy import ENGINES, PRECISIONS, benchmark, cpu_supports_bf16, format_rows  # noqa: E402
from ppim.hub import write_json  # noqa: E402
from ppim.models.supervit import parse_subnet_spec  # noqa: E402

import paddle  # noqa: E402  (after ppim, which loads zlib first)


def _list(text, kind=str, choices=None):
    values = [kind(v) for v in text.split(",") if v.strip()]
    if choices:
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))}: choose from {', '.join(choices)}")
    return values


def environment(threads=None) -> dict:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model name, e.g. lvvit_s")
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
    parser.add_argument("--subnets", default="all", help="SuperViT: all (default) or a list like 224x1.0,160x0.7")
    parser.add_argument("--gmacs", type=float, help="override the model's GMACs per image (non-super models)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling")
    parser.add_argument("--json", help="write the rows and the environment to this JSON file")
    args = parser.parse_args(argv)

    env = environment(args.threads)
    print(f"{args.model} on {env['cpu'] or 'this CPU'} ({env['cpu_count']} CPUs), Paddle {env['paddle_version']}",
          flush=True)
    rows = benchmark(args.model, engines=args.engine, precisions=args.precision, batch_sizes=args.batch_size,
                     iters=args.iters, warmup=args.warmup, threads=args.threads, device=args.device,
                     gmacs=args.gmacs, subnets=parse_subnet_spec(args.subnets), ceiling=not args.no_ceiling,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_rows(rows))
    if args.json:
        write_json(args.json, {"environment": env, "rows": rows})
        print(f"wrote {args.json}")
    return 1 if rows and all("error" in row or "skipped" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
