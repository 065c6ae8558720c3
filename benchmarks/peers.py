"""ppim's engines side by side with PyTorch, ONNX Runtime and OpenVINO on one model, in one run:

    python benchmarks/peers.py                       # lvvit_s, batch 16 and 1, fp32, bf16 and int8
    python benchmarks/peers.py --model lvvit_t -b 8 --precision fp32 --rounds 3 --json peers.json

Every engine runs in a worker process of its own (so each has its own peak RSS and cold start),
all started first; then, round after round, the parent asks each worker in turn for a few timed
calls, so slow and fast moments of a shared machine fall on every engine alike. Reported: the
median over rounds of each round's median call. Engines: ppim eager, ppim Paddle Inference (our
export), the PyTorch reference model (benchmarks/torch_reference.py, eager and torch.compile with
freezing), ONNX Runtime, ppim's OpenVINO engine ('openvino': its AUTO hint) and OpenVINO used as its
documentation shows ('openvino-tput': the THROUGHPUT hint, the batch split over its requests), both
over paddle2onnx's conversion of our export. int8: ppim's (ppim.deploy.engines.quantize_openvino;
for ppim-inference ppim.deploy.paddle_int8) against OpenVINO's own (NNCF's quantize with its
defaults), all calibrated on the sample photos shipped with ppim; int8 has no GEMM ceiling.
The GEMM ceiling is the best rate any of these libraries reaches on the model's own dense shapes
(ppim.deploy.DenseChain at batch x tokens rows), measured in the same rounds. Cold start: from
building the runner (the export already cached, as a second run finds it) to the first batch-1
result. Peers not installed are skipped and said so. Weights are random (speed does not depend on
them). The export cache lives in a temporary PPIM_HOME removed at the end.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "@@peers "  # worker replies are lines with this prefix; libraries print what they like
# (engine, precisions it runs, the library whose GEMM rate it measures for the ceiling)
ENGINES = {
    "ppim-eager": ("fp32",),
    "ppim-inference": ("fp32", "bf16", "int8"),
    "torch-eager": ("fp32", "bf16"),
    "torch-compile": ("fp32", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
    "openvino-tput": ("fp32", "bf16", "int8"),
}
PRECISIONS = ("fp32", "bf16", "int8")
CEILING_LIBRARY = {"ppim-inference": "paddle-inference", "torch-eager": "torch", "onnxruntime": "onnxruntime",
                   "openvino": "openvino"}
MODULES = {"torch-eager": "torch", "torch-compile": "torch", "onnxruntime": "onnxruntime",
           "openvino": "openvino", "openvino-tput": "openvino"}


# ------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------
def _reply(**data):
    sys.stdout.write(TAG + json.dumps(data) + "\n")
    sys.stdout.flush()


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _ppim_model(name, kwargs):
    import paddle

    import ppim

    paddle.seed(0)
    model = ppim.create_model(name, **kwargs)
    model.eval()
    return model


def _torch_model(model):
    """The PyTorch reference LV-ViT with the ppim model's dimensions."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_reference import TorchLVViT

    if type(model).__name__ != "LVViT":
        raise RuntimeError("the PyTorch reference here is LV-ViT only")
    block = model.blocks[0]
    torch.manual_seed(0)
    ref = TorchLVViT(img_size=model.pretrained_cfg["input_size"][-1], dim=block.attn.qkv.weight.shape[0],
                     depth=len(model.blocks), heads=block.attn.num_heads, skip_lam=block.skip_lam,
                     stem=model.patch_embed.conv1.weight.shape[0], classes=model.num_classes)
    return ref.eval()


def _torch_fn(module, precision, compiled, threads):
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module = module.to(dtype)
    if compiled:
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights as constants: folded and pre-packed
        module = torch.compile(module, dynamic=False)

    def run(batch):
        with torch.inference_mode():
            return module(torch.from_numpy(batch).to(dtype)).float().numpy()

    return run


def _openvino_tput(model, precision, threads):
    """OpenVINO's THROUGHPUT hint over our export's ONNX form: the batch split over its parallel
    infer requests; int8: that model quantized by NNCF with its default settings."""
    import numpy as np
    import openvino as ov

    from ppim.deploy import cached_export
    from ppim.deploy.engines import onnx_file

    core = ov.Core()
    source = core.read_model(str(onnx_file(cached_export(model, engine="openvino"), "openvino")))
    if precision == "int8":
        import nncf

        from ppim.deploy.quantize import sample_calibration

        images = sample_calibration(model).images
        source = nncf.quantize(source, nncf.Dataset([images[i:i + 1] for i in range(len(images))]))
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads}
    compiled = {}

    def run(batch):
        size = len(batch)
        if size not in compiled:
            probe = core.compile_model(source.clone(), "CPU", config)
            parts = max(1, min(size, probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            while size % parts:
                parts -= 1
            model = source.clone()
            model.reshape({model.inputs[0].get_any_name(): [size // parts, *batch.shape[1:]]})
            net = core.compile_model(model, "CPU", config)
            compiled[size] = (parts, [net.create_infer_request() for _ in range(parts)])
        parts, requests = compiled[size]
        chunks = np.split(np.ascontiguousarray(batch), parts)
        for request, chunk in zip(requests, chunks):
            request.start_async([chunk])
        for request in requests:
            request.wait()
        return np.concatenate([np.array(r.get_output_tensor(0).data) for r in requests])

    return run


def _ceiling_fn(library, model, precision, threads, rows):
    """(call, flops) of the model's dense GEMM chain through ``library``."""
    import numpy as np

    from ppim.deploy import CeilingProbe, DenseChain, dense_shapes
    from ppim.deploy.throughput import time_calls

    dim, hidden, _ = dense_shapes(model)
    engine = {"paddle-inference": "inference", "onnxruntime": "onnxruntime", "openvino": "openvino"}.get(library)
    if engine:
        probe = CeilingProbe(engine, precision, "cpu", threads, dim, hidden, rows)
        return probe.measure, None
    import torch  # the same chain in torch

    chain = DenseChain(dim, hidden)
    layers = []
    for layer in chain.layers:
        if type(layer).__name__ == "Linear":
            layers += [torch.nn.Linear(layer.weight.shape[0], layer.weight.shape[1]), torch.nn.ReLU()]
    twin = torch.nn.Sequential(*layers[:-1]).eval()
    run = _torch_fn(twin, precision, False, threads)
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    flops = 2.0 * chain.macs_per_row * rows

    def measure(iters=5, warmup=1):
        return flops / statistics.median(time_calls(lambda: run(x), iters, warmup)) / 1e9

    return measure, None


def worker(args) -> int:
    """Serve one engine: build it, report cold start, then answer timing requests on stdin."""
    import numpy as np

    engine, precision, threads = args.worker, args.worker_precision, args.threads
    model_kwargs = json.loads(args.model_kwargs or "{}")
    if engine == "prepare":  # fill the export cache (and its ONNX file) for the workers
        from ppim.deploy import cached_export
        from ppim.deploy import engine_available
        from ppim.deploy.engines import onnx_file
        from ppim.deploy.quantize import sample_calibration
        from ppim.deploy.registry import unsupported

        model = _ppim_model(args.model, model_kwargs)
        for precision in ("fp32", "bf16"):  # the attention layout differs (see ppim.deploy.attention_layout)
            cached_export(model, precision=precision)
        if engine_available("onnxruntime") or engine_available("openvino"):
            onnx_file(cached_export(model, engine="openvino"))
        for name in ("openvino", "inference"):
            if "int8" in args.precision.split(",") and unsupported(name, "int8") is None:
                cached_export(model, precision="int8", engine=name, calibration=sample_calibration(model))
        _reply(ready=True)
        return 0
    model = _ppim_model(args.model, model_kwargs)
    size = model.pretrained_cfg["input_size"][-1]
    first = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    start = time.perf_counter()
    if engine.startswith("torch"):
        run = _torch_fn(_torch_model(model), precision, engine == "torch-compile", threads)
    elif engine == "openvino-tput":
        run = _openvino_tput(model, precision, threads)
    else:
        from ppim.deploy import create_runner
        from ppim.deploy.quantize import sample_calibration

        name = {"ppim-eager": "eager", "ppim-inference": "inference"}.get(engine, engine)
        run = create_runner(model, engine=name, precision=precision, threads=threads,
                            calibration=sample_calibration(model) if precision == "int8" else None)
    run(first)
    cold = time.perf_counter() - start
    ceilings, warm = {}, {1}
    _reply(ready=True, cold_start_s=cold)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            _reply(peak_rss_mib=_peak_rss_mib())
            return 0
        batch_size, iters = int(request["batch"]), int(request["iters"])
        if request.get("ceiling"):
            key = batch_size
            if key not in ceilings:
                tokens = (size // 16) ** 2 + 1
                ceilings[key] = _ceiling_fn(CEILING_LIBRARY[engine], model, precision, threads,
                                            batch_size * tokens)[0]
            _reply(gflops=ceilings[key](iters, 1))
            continue
        batch = np.random.default_rng(batch_size).standard_normal((batch_size, 3, size, size), dtype=np.float32)
        if batch_size not in warm:
            run(batch)  # the first call of a shape is not timed (torch.compile compiles it here)
            warm.add(batch_size)
        times = []
        for _ in range(iters):
            begin = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - begin)
        _reply(times=times)
    return 0


# ------------------------------------------------------------------------------------------------
# parent side
# ------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, engine, precision, args, env):
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--worker-precision", precision,
                   "--model", args.model, "--threads", str(args.threads), "--precision", args.precision]
        if args.model_kwargs:
            command += ["--model-kwargs", args.model_kwargs]
        self.name, self.precision = engine, precision
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=args.worker_log, text=True, env=env, cwd=str(ROOT))

    def read(self):
        for line in self.process.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        raise RuntimeError(f"{self.name}/{self.precision} worker exited (code {self.process.wait()})")

    def ask(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        try:
            return self.ask(quit=True)
        finally:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def _installed(engine):
    import importlib.util

    module = MODULES.get(engine)
    missing = [m for m in ([module] if module else []) + (["paddle2onnx"] if engine.startswith(("onnx", "openvino"))
                                                          else []) if importlib.util.find_spec(m) is None]
    return missing


def _cpu_bf16():
    from ppim import runtime

    return runtime.has("cpu_bf16")


def _int8_missing(engine: str):
    from ppim.deploy.registry import unsupported

    return unsupported("inference" if engine == "ppim-inference" else "openvino", "int8")


def run(args) -> dict:
    home = tempfile.mkdtemp(prefix="ppim-peers-home-")
    env = dict(os.environ, PPIM_HOME=home, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")])), OMP_NUM_THREADS=str(args.threads))
    notes, workers, results = [], [], {}
    try:
        prepare = Worker("prepare", "fp32", args, env)
        prepare.read()
        prepare.process.stdin.close()
        prepare.process.wait()
        for engine in args.engines:
            missing = _installed(engine)
            if missing:
                notes.append(f"{engine}: skipped, {' and '.join(missing)} not installed")
                continue
            for precision in args.precisions:
                if precision not in ENGINES[engine]:
                    notes.append(f"{engine}/{precision}: skipped, the engine has no {precision} path here")
                    continue
                if precision == "bf16" and not _cpu_bf16():
                    notes.append(f"{engine}/{precision}: skipped, this CPU has no bfloat16 instructions")
                    continue
                if precision == "int8" and _int8_missing(engine):
                    notes.append(f"{engine}/{precision}: skipped, {_int8_missing(engine)}")
                    continue
                print(f"starting {engine}/{precision}", file=sys.stderr, flush=True)
                worker_ = Worker(engine, precision, args, env)
                try:
                    ready = worker_.read()
                except RuntimeError as exc:
                    notes.append(f"{engine}/{precision}: failed to start ({exc}); see --log")
                    continue
                results[(engine, precision)] = {"cold_start_s": ready["cold_start_s"], "times": {}, "ceiling": {}}
                workers.append(worker_)
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for batch in args.batch_sizes:
                for worker_ in workers:
                    result = results[(worker_.name, worker_.precision)]
                    times = worker_.ask(batch=batch, iters=args.iters)["times"]
                    result["times"].setdefault(batch, []).append(statistics.median(times))
                    if worker_.name in CEILING_LIBRARY and worker_.precision != "int8":
                        rate = worker_.ask(batch=batch, iters=args.iters, ceiling=True)["gflops"]
                        result["ceiling"].setdefault(batch, []).append(rate)
        for worker_ in workers:
            results[(worker_.name, worker_.precision)]["peak_rss_mib"] = worker_.close()["peak_rss_mib"]
    finally:
        for worker_ in workers:
            if worker_.process.poll() is None:
                worker_.process.kill()
        shutil.rmtree(home, ignore_errors=True)
    return {"results": results, "notes": notes}


def summarize(args, raw, gmacs) -> dict:
    rows, ceilings = [], {}
    for (engine, precision), result in raw["results"].items():
        for batch, medians in result["times"].items():
            seconds = statistics.median(medians)
            rows.append({"engine": engine, "precision": precision, "batch_size": batch,
                         "images_per_sec": batch / seconds, "ms_per_batch": seconds * 1e3,
                         "gflops_per_sec": batch / seconds * 2 * gmacs, "round_medians_s": medians,
                         "cold_start_s": result["cold_start_s"], "peak_rss_mib": result.get("peak_rss_mib")})
        for batch, rates in result["ceiling"].items():
            library = CEILING_LIBRARY[engine]
            ceilings.setdefault((precision, batch), {})[library] = statistics.median(rates)
    ceiling_rows = []
    for (precision, batch), by_library in sorted(ceilings.items()):
        best = max(by_library, key=by_library.get)
        ceiling_rows.append({"precision": precision, "batch_size": batch, "best_library": best,
                             "gflops_per_sec": by_library[best], "images_per_sec": by_library[best] / (2 * gmacs),
                             "by_library": by_library})
    return {"rows": rows, "ceilings": ceiling_rows, "notes": raw["notes"]}


def _cell(text, row, openvino_best):
    """A figure with its speed relative to OpenVINO's best (images/s over OpenVINO's; > 1: faster)."""
    return text if not openvino_best else f"{text} ({row['images_per_sec'] / openvino_best:.2f}x)"


def format_table(summary, batch_sizes, precisions) -> str:
    """The issue's table: img/s at the largest batch per precision, ms at the smallest (fp32), peak
    RSS and cold start; each figure with its speed relative to OpenVINO's best in brackets."""
    big, small = max(batch_sizes), min(batch_sizes)
    columns = [f"{p} b{big} img/s" for p in precisions] + ([f"fp32 b{small} ms"] if small != big else []) + \
        ["peak RSS MiB", "cold start s"]
    engines = list(dict.fromkeys(row["engine"] for row in summary["rows"]))
    lookup = {(r["engine"], r["precision"], r["batch_size"]): r for r in summary["rows"]}
    best_ov = {}
    for (engine, precision, batch), row in lookup.items():
        if engine.startswith("openvino"):
            key = (precision, batch)
            best_ov[key] = max(best_ov.get(key, 0.0), row["images_per_sec"])
    lines = ["| engine | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for engine in engines:
        cells = []
        for precision in precisions:
            row = lookup.get((engine, precision, big))
            cells.append(_cell(f"{row['images_per_sec']:.1f}", row, best_ov.get((precision, big))) if row else "-")
        if small != big:
            row = lookup.get((engine, "fp32", small))
            ms = row and row["ms_per_batch"]
            cells.append(_cell(f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}", row, best_ov.get(("fp32", small)))
                         if row else "-")
        mine = [r for r in summary["rows"] if r["engine"] == engine]
        rss = [r["peak_rss_mib"] for r in mine if r["peak_rss_mib"]]
        cells.append(f"{min(rss):.0f}-{max(rss):.0f}" if rss and round(min(rss)) != round(max(rss)) else
                     (f"{rss[0]:.0f}" if rss else "-"))
        cold = [r["cold_start_s"] for r in mine]
        cells.append(f"{min(cold):.2f}" if cold else "-")
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    for ceiling in summary["ceilings"]:
        others = ", ".join(f"{lib} {rate:.0f}" for lib, rate in sorted(ceiling["by_library"].items()))
        lines.append(f"ceiling {ceiling['precision']} b{ceiling['batch_size']}: {ceiling['gflops_per_sec']:.0f} GFLOP/s "
                     f"({ceiling['images_per_sec']:.1f} img/s) by {ceiling['best_library']} [{others}]")
    for batch in sorted(batch_sizes, reverse=True):
        gains = [f"{engine} {lookup[(engine, 'int8', batch)]['images_per_sec'] / lookup[(engine, 'fp32', batch)]['images_per_sec']:.2f}x"
                 for engine in engines if (engine, "int8", batch) in lookup and (engine, "fp32", batch) in lookup]
        if gains:
            lines.append(f"int8 over fp32, b{batch}: {', '.join(gains)}")
    lines += [f"note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lvvit_s")
    parser.add_argument("--model-kwargs", help="constructor arguments as JSON (tests, experiments)")
    parser.add_argument("-b", "--batch-size", default="16,1", help="comma list (default 16,1)")
    parser.add_argument("--precision", default="fp32,bf16,int8", help="comma list of fp32, bf16, int8 (default all)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per engine per round (default 3)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads per engine")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--log", help="worker stderr goes here (default: discarded)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    try:
        args.batch_sizes = [int(v) for v in args.batch_size.split(",") if v]
        args.precisions = [v for v in args.precision.split(",") if v]
        args.engines = [v for v in args.engines.split(",") if v]
        bad = [e for e in args.engines if e not in ENGINES] + [p for p in args.precisions if p not in PRECISIONS]
        if bad or not args.batch_sizes or min(args.batch_sizes) < 1 or args.rounds < 1 or args.iters < 1:
            raise ValueError(f"unknown or invalid: {', '.join(bad) or 'batch sizes, rounds or iters'}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.worker_log = open(args.log, "a") if args.log else subprocess.DEVNULL
    sys.path.insert(0, str(ROOT))
    from ppim.flops import count_macs  # the parent only counts: no engine runs here

    gmacs = count_macs(_ppim_model(args.model, json.loads(args.model_kwargs or "{}"))) / 1e9
    began = time.perf_counter()
    raw = run(args)
    summary = summarize(args, raw, gmacs)
    print(format_table(summary, args.batch_sizes, args.precisions))
    print("(x): speed relative to OpenVINO's best engine at the same precision and batch")
    from ppim import runtime
    from ppim.mathtune import machine_summary

    load = os.getloadavg()
    print(f"({args.model}, {gmacs:.2f} GMACs/image, {args.threads} threads, {args.rounds} rounds x {args.iters} "
          f"calls, {time.perf_counter() - began:.0f} s; {machine_summary()}; load average {load[0]:.1f})")
    if args.json:
        from ppim.fileio import write_json

        vendor, model, flags = runtime.cpu()
        environment = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": args.threads,
                       "cpu_bf16": _cpu_bf16(), "cpu": model, "cpu_vendor": vendor,
                       "cpu_flags": sorted(f for f in runtime.REPORTED_FLAGS if f in flags), "load_average": load}
        write_json(args.json, {"model": args.model, "gmacs": gmacs, "environment": environment, **summary})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
