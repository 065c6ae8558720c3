"""Throughput of a model per engine, precision, batch size and sub-network, against a GEMM ceiling
measured in the same run.

    rows = benchmark("lvvit_s", batch_sizes=(16,))
    print(format_rows(rows))
"""
from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn

from ..flops import count_macs
from ..fileio import write_json
from ..registry import create_model, model_name
from ..runtime import cpu_count, cpu_threads
from ..errors import CapabilityError
from ..subnet import Subnet, SubnetLike, current_subnet, parse_subnets, subnets_of
from .common import INPUT_NAME, MANIFEST, input_size
from .exporting import staged_dir
from .registry import create_predictor, exported_engines, unsupported
from .quantize import Calibration, as_calibration, sample_calibration
from .runner import Runner, create_runner

__all__ = ["benchmark", "format_rows", "CeilingProbe", "DenseChain", "dense_shapes", "measure_ceiling",
           "ceiling_engines"]


def dense_shapes(model: nn.Layer) -> Tuple[int, int, int]:
    """(dim, hidden, tokens) of the model's dense layers: the embedding width, the MLP width and the
    tokens per image at its current sub-network (the GEMMs are (batch * tokens, in) x (in, out))."""
    block = model.blocks[0]
    dim, hidden = int(block.mlp.fc1.weight.shape[0]), int(block.mlp.fc1.weight.shape[1])
    subnet = current_subnet(model)
    side = input_size(model, None) if subnet is None else subnet.img_size
    patch = int(getattr(model, "patch_size", 16))
    return dim, hidden, (side // patch) ** 2 + 1


class DenseChain(nn.Layer):
    """The model's dense GEMM shapes in a chain: ``repeats`` x (fc1 dim->hidden, fc2 hidden->dim,
    proj dim->dim), then qkv dim->3*dim, each Linear followed by a ReLU (fused by every engine as a
    post-op; it keeps consecutive layers from being folded into one). Input (rows, dim)."""

    def __init__(self, dim: int, hidden: int, repeats: int = 4, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)  # its own generator: Paddle's global one is the caller's

        def linear(fan_in: int, fan_out: int) -> nn.Linear:
            weight = (0.02 * rng.standard_normal((fan_in, fan_out))).astype(np.float32)
            return nn.Linear(fan_in, fan_out, weight_attr=paddle.ParamAttr(initializer=nn.initializer.Assign(weight)),
                             bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))

        layers: List[nn.Layer] = []
        for _ in range(repeats):
            layers += [linear(dim, hidden), nn.ReLU(), linear(hidden, dim), nn.ReLU(), linear(dim, dim), nn.ReLU()]
        layers.append(linear(dim, 3 * dim))
        self.layers = nn.Sequential(*layers)
        self.macs_per_row = repeats * (2 * dim * hidden + dim * dim) + 3 * dim * dim

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layers(x)


def time_calls(fn: Callable[[], Any], iters: int, warmup: int) -> List[float]:
    """Seconds of each of ``iters`` calls (at least one) of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class CeilingProbe:
    """The model's dense GEMMs (DenseChain at ``rows`` = batch * tokens) through ``engine`` with
    ``precision``, ready to be timed again and again (``probe.measure()`` -> GFLOP/s): the chain
    itself under paddle.no_grad for 'eager'; for the other engines the chain exported and run by
    that engine's predictor, configured as the model's is. The best of these rates over the
    engines installed is the ceiling for the model's GEMM-bound work (benchmark)."""

    def __init__(self, engine: str = "inference", precision: str = "fp32", device: str = "cpu",
                 threads: Optional[int] = None, dim: int = 384, hidden: int = 1152, rows: int = 3152):
        reason = unsupported(engine, precision, device)
        if reason:
            raise CapabilityError(f"{engine} {precision} on {device}: {reason}")
        self.engine, self.precision, self.device = engine, precision, device
        chain = DenseChain(dim, hidden)
        chain.eval()
        self.flops = 2.0 * chain.macs_per_row * rows
        self._x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
        if engine == "eager":
            place = paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace()
            x = paddle.to_tensor(self._x, place=place)

            def step() -> None:
                with paddle.no_grad(), cpu_threads(threads):
                    chain(x).numpy()
            self._step = step
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="ppim-ceiling-")
            model_dir = _export_probe(chain, Path(self._tmp.name) / "chain", [rows, dim])
            predictor = create_predictor(engine, model_dir, device=device, precision=precision, threads=threads)
            self._step = functools.partial(predictor, self._x)

    def measure(self, iters: int = 5, warmup: int = 1) -> float:
        """GFLOP/s, from the median of ``iters`` timed runs."""
        return self.flops / statistics.median(time_calls(self._step, iters, warmup)) / 1e9


def measure_ceiling(model: nn.Layer, batch_size: int = 16, engines: Optional[Sequence[str]] = None,
                    precision: str = "fp32", device: str = "cpu", threads: Optional[int] = None,
                    iters: int = 5, warmup: int = 2) -> Dict[str, float]:
    """GFLOP/s of the model's dense GEMMs at ``batch_size`` per engine (default: Paddle Inference
    and the installed extras; see CeilingProbe); engines that cannot run ``precision`` are left out."""
    dim, hidden, tokens = dense_shapes(model)
    rates = {}
    for engine in engines or ceiling_engines(precision, device):
        if not unsupported(engine, precision, device):
            probe = CeilingProbe(engine, precision, device, threads, dim, hidden, batch_size * tokens)
            rates[engine] = probe.measure(iters, warmup)
    return rates


def ceiling_engines(precision: str = "fp32", device: str = "cpu") -> List[str]:
    """The engines whose GEMM rate makes up the ceiling: Paddle Inference and the installed extras
    that run ``precision``."""
    return exported_engines(precision, device)


def _export_probe(probe: nn.Layer, output_dir: Path, shape: List[int]) -> Path:
    """Export a probe layer (input x of ``shape``) with a minimal ppim.json."""
    with staged_dir(output_dir) as tmp:
        probe.eval()
        paddle.jit.save(probe, str(tmp / "model"),
                        input_spec=[paddle.static.InputSpec(shape, "float32", name=INPUT_NAME)])
        manifest = {"format": "ppim-inference", "model": type(probe).__name__, "input_name": INPUT_NAME,
                    "input_shape": list(shape), "optimized": False}
        write_json(tmp / MANIFEST, manifest)
    return output_dir


def _subnet_list(model: nn.Layer, subnets: Union[str, Iterable[SubnetLike], None]) -> List[Optional[Subnet]]:
    """The sub-networks to measure (None: a model without any), the full network first when not
    asked for: speed-ups are relative to it."""
    if not subnets_of(model):
        return [None]
    chosen = parse_subnets(subnets or "all", model)
    full = max(subnets_of(model))
    return chosen if full in chosen else [full] + chosen


def benchmark(model: Union[str, nn.Layer], engines: Sequence[str] = ("eager", "inference"), precisions: Sequence[str] = ("fp32",),
              batch_sizes: Sequence[int] = (1, 16), iters: int = 10, warmup: int = 2, threads: Optional[int] = None,
              device: str = "cpu", gmacs: Optional[float] = None,
              subnets: Union[str, Iterable[SubnetLike], None] = None, ceiling: bool = True,
              model_kwargs: Optional[Dict[str, Any]] = None, log: Optional[Callable[[str], None]] = None,
              calibration: Union[Calibration, str, os.PathLike, None] = None, rounds: int = 1
              ) -> List[Dict[str, Any]]:
    """Throughput of ``model`` (a name, built with random weights, or a model) per engine, precision,
    batch size and, for super models, sub-network (all 12 by default).

    Each row: model, engine, precision, device, threads, batch_size, img_size (input side), subnet
    (super models: img_size and keep_ratio), images_per_sec (every runner is made first, then timed
    ``rounds`` times in turn, ``iters`` calls each after ``warmup`` at the first: the median over
    rounds of each round's median call; round_medians_ms lists them), ms_per_batch, gmacs (per image), gflops_per_sec achieved (2 * MACs * images/s),
    ceiling_gflops_per_sec (the best rate of the model's own dense GEMMs at that batch over Paddle
    Inference and the installed extras, same precision, timed right after each point: see
    CeilingProbe) with ceiling_engine, ceiling_share, ceiling_images_per_sec, and for super
    models speedup (images/s over that of (224, 1.0)) and flops_ratio (MACs of (224, 1.0) over the
    sub-network's). cpu_per_wall (process CPU time over wall time while the model ran) shows how
    many cores it really had: about ``threads`` on an idle machine, less when other processes
    compete. A combination an engine cannot run here (bf16 without CPU support, fp16 on CPU, GPU on
    a CPU build, an extra not installed) gets a row with ``skipped`` (the reason) and no timings; one
    that fails gets ``error``. ``gmacs`` overrides ppim.flops' count
    (non-super models). int8 is quantized on ``calibration`` (a folder of images or a Calibration;
    default the sample photos shipped with ppim: enough for speed) and has no ceiling (the probes
    are float GEMMs)."""
    log = log or (lambda message: None)
    if isinstance(model, str):
        model = create_model(model, **(model_kwargs or {}))
    name = model_name(model)
    size = input_size(model, None)
    threads_used = threads or (cpu_count() if device == "cpu" else None)
    probes: Dict[tuple, Any] = {}
    ceiling_iters = max(3, min(iters, 5))
    rows: List[Dict[str, Any]] = []
    original = current_subnet(model)
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batch_sizes}
    if "int8" in precisions:
        calibration = as_calibration(model, calibration if calibration is not None else sample_calibration(model))
    workdir = tempfile.TemporaryDirectory(prefix="ppim-benchmark-")
    points: List[Tuple[Dict[str, Any], Runner, Tuple[int, int, int]]] = []  # (row base, runner, dense shapes)
    try:
        for subnet in _subnet_list(model, subnets):
            if subnet is not None:
                model.set_subnet(*subnet)
            macs = float(gmacs) if subnet is None and gmacs is not None else count_macs(model) / 1e9
            shapes = dense_shapes(model)
            for engine in engines:
                for precision in precisions:
                    base = {"model": name, "engine": engine, "precision": precision, "device": device,
                            "threads": threads_used, "img_size": size,
                            "subnet": None if subnet is None else subnet.as_dict(),
                            "gmacs": macs, "paddle_version": paddle.__version__}
                    reason = unsupported(engine, precision, device)
                    if reason:
                        rows.extend({**base, "batch_size": b, "skipped": reason} for b in batch_sizes)
                        log(f"{name} {engine}/{precision}: skipped: {reason}")
                        continue
                    try:  # exports (one per attention layout) are shared in this run's own cache folder
                        runner = create_runner(model, engine, precision, device, threads, cache=workdir.name,
                                               calibration=calibration if precision == "int8" else None)
                    except Exception as exc:  # noqa: BLE001 - reported in the rows
                        for batch_size in batch_sizes:
                            rows.append({**base, "batch_size": batch_size, "error": f"{type(exc).__name__}: {exc}"})
                        log(f"{name} {engine}/{precision}: {exc}")
                        continue
                    points.append((base, runner, shapes))
        # Every point in turn, round after round: a machine whose load changes during the run slows
        # every point alike (medians over rounds of each round's median call).
        medians: Dict[Tuple[int, int], List[float]] = {}
        peaks: Dict[Tuple[int, int], List[Any]] = {}
        cpu_time: Dict[Tuple[int, int], float] = {}
        wall_time: Dict[Tuple[int, int], float] = {}
        for round_ in range(max(1, rounds)):
            for index, (base, runner, shapes) in enumerate(points):
                for batch_size in batch_sizes:
                    key = (index, batch_size)
                    cpu_start, wall_start = time.process_time(), time.perf_counter()
                    # (the first call of a shape compiles it in some engines: never timed)
                    times = time_calls(functools.partial(runner, batches[batch_size]), iters,
                                       max(1, warmup) if round_ == 0 else 0)
                    cpu_time[key] = cpu_time.get(key, 0.0) + time.process_time() - cpu_start
                    wall_time[key] = wall_time.get(key, 0.0) + time.perf_counter() - wall_start
                    medians.setdefault(key, []).append(statistics.median(times))
                    # The ceiling is timed right after the model, so both see the same machine.
                    if ceiling and base["precision"] != "int8":  # (the probes are float GEMMs)
                        peaks.setdefault(key, []).append(_ceiling(probes, base["precision"], device, threads, shapes,
                                                                  batch_size, ceiling_iters))
        for index, (base, _, _) in enumerate(points):
            for batch_size in batch_sizes:
                key = (index, batch_size)
                seconds = statistics.median(medians[key])
                ips = batch_size / seconds
                row = {**base, "batch_size": batch_size, "images_per_sec": ips, "ms_per_batch": seconds * 1e3,
                       "round_medians_ms": [m * 1e3 for m in medians[key]],
                       "gflops_per_sec": ips * 2 * base["gmacs"], "cpu_per_wall": cpu_time[key] / wall_time[key]}
                rates = [p for p in peaks.get(key, ()) if isinstance(p, tuple)]
                if rates:
                    engine_name, rate = sorted(rates, key=lambda p: p[1])[len(rates) // 2]  # the median round's
                    row.update(ceiling_gflops_per_sec=rate, ceiling_engine=engine_name,
                               ceiling_share=row["gflops_per_sec"] / rate, ceiling_images_per_sec=rate / (2 * base["gmacs"]))
                elif peaks.get(key):
                    failure = peaks[key][-1]
                    row["ceiling_error"] = f"{type(failure).__name__}: {failure}"
                rows.append(row)
                log(format_rows([row], header=False))
    finally:
        points.clear()  # free the predictors
        workdir.cleanup()
        if original is not None:
            model.set_subnet(*original)
    _add_speedups(rows)
    return rows


def _ceiling(probes: Dict[tuple, Any], precision: str, device: str, threads: Optional[int],
             shapes: Tuple[int, int, int], batch_size: int, iters: int) -> Union[Tuple[str, float], Exception]:
    """(engine, GFLOP/s): the best dense-GEMM rate over the ceiling engines, probes made once."""
    dim, hidden, tokens = shapes
    best: Union[Tuple[str, float], Exception] = RuntimeError(f"no engine runs {precision} GEMMs here")
    for engine in ceiling_engines(precision, device):
        key = (engine, precision, batch_size * tokens, dim, hidden)
        if key not in probes:
            try:
                probes[key] = CeilingProbe(engine, precision, device, threads, dim, hidden, batch_size * tokens)
            except Exception as exc:  # noqa: BLE001 - reported in the rows
                probes[key] = exc
        probe = probes[key]
        if isinstance(probe, CeilingProbe):
            rate = probe.measure(iters)
            if not isinstance(best, tuple) or rate > best[1]:
                best = (engine, rate)
        elif not isinstance(best, tuple):
            best = probe
    return best


def _add_speedups(rows: List[Dict[str, Any]]) -> None:
    """Super models: speed-up and FLOPs ratio of each sub-network against (224, 1.0), same
    engine/precision/batch."""
    full = {}
    for row in rows:
        sub = row.get("subnet")
        if sub and sub["keep_ratio"] == 1.0 and "images_per_sec" in row:
            current = full.get((row["engine"], row["precision"], row["batch_size"]))
            if current is None or sub["img_size"] > current["subnet"]["img_size"]:
                full[(row["engine"], row["precision"], row["batch_size"])] = row
    for row in rows:
        ref = full.get((row["engine"], row["precision"], row["batch_size"]))
        if row.get("subnet") and ref and "images_per_sec" in row:
            row["speedup"] = row["images_per_sec"] / ref["images_per_sec"]
            row["flops_ratio"] = ref["gmacs"] / row["gmacs"]


def format_rows(rows: List[Dict[str, Any]], header: bool = True) -> str:
    """A text table of benchmark rows."""
    columns = [("engine", "{:<9}"), ("precision", "{:<4}"), ("batch", "{:>5}"), ("subnet", "{:<9}"),
               ("img/s", "{:>8}"), ("ms/batch", "{:>9}"), ("GMACs", "{:>6}"), ("GFLOP/s", "{:>8}"),
               ("ceiling", "{:>8}"), ("share", "{:>6}"), ("speedup", "{:>7}"), ("flops x", "{:>7}"),
               ("cores", "{:>5}")]
    lines = []
    if header:
        lines.append(" ".join(fmt.format(title) for title, fmt in columns))
    for row in rows:
        sub = row.get("subnet")
        cells = [row["engine"], row["precision"], row["batch_size"],
                 f"{sub['img_size']}x{sub['keep_ratio']:g}" if sub else "-"]
        if "skipped" in row:
            continue
        if "error" in row:
            lines.append(" ".join(fmt.format(c) for (_, fmt), c in zip(columns, cells)) + "  " + row["error"])
            continue

        def num(key, spec):
            return format(row[key], spec) if row.get(key) is not None else "-"

        cells += [num("images_per_sec", ".2f"), num("ms_per_batch", ".1f"), num("gmacs", ".2f"),
                  num("gflops_per_sec", ".1f"), num("ceiling_gflops_per_sec", ".1f"),
                  f"{row['ceiling_share']:.0%}" if row.get("ceiling_share") is not None else "-",
                  num("speedup", ".2f"), num("flops_ratio", ".2f"), num("cpu_per_wall", ".1f")]
        lines.append(" ".join(fmt.format(c) for (_, fmt), c in zip(columns, cells)))
    skipped = sorted({f"{row['engine']}/{row['precision']}: {row['skipped']}" for row in rows if "skipped" in row})
    lines += [f"skipped {line}" for line in skipped]
    return "\n".join(lines)
