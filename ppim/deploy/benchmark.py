"""Throughput of a model per engine, precision, batch size and sub-network, against a GEMM ceiling
measured in the same run.

    rows = benchmark("lvvit_s", batch_sizes=(16,))
    print(format_rows(rows))
"""
from __future__ import annotations

import functools
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
from ..models.supervit import is_supernet
from ..registry import create_model, model_name
from .common import ENGINES, INPUT_NAME, MANIFEST, check_choice, check_gpu, current_subnet, default_threads, input_size
from .export import staged_dir, export
from .predictor import Predictor
from .runner import Runner, set_eager_threads, create_runner

__all__ = ["benchmark", "format_rows", "CeilingProbe", "measure_ceiling"]


def _model_gmacs(model: nn.Layer, img_size: Optional[int] = None, keep_ratio: Optional[float] = None) -> float:
    """GMACs per image (ppim.flops); super models: of the sub-network (img_size, keep_ratio)."""
    if is_supernet(model):
        return count_macs(model, img_size=img_size, keep_ratio=keep_ratio) / 1e9
    return count_macs(model) / 1e9


class _MatMul(nn.Layer):
    """Two chained size x size Linear layers on x (size, size): the ceiling probe exported through the
    inference engine. Linear, so the oneDNN passes make each the same fc GEMM the models' Linear
    layers become (a bare matmul stays a slower matmul op on Paddle 2.6), and two of them because
    Paddle 2.6 keeps an fc fed straight from the input in fp32 under bf16."""

    def __init__(self, size: int):
        super().__init__()
        self.fc1 = nn.Linear(size, size)
        self.fc2 = nn.Linear(size, size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.fc1(x))


def _time_calls(fn: Callable[[], Any], iters: int, warmup: int) -> List[float]:
    for _ in range(max(1, warmup)):
        fn()
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class CeilingProbe:
    """size^3 GEMMs through ``engine``, ready to be timed again and again (``probe.measure()`` ->
    GFLOP/s): paddle.matmul in eager mode for 'eager'; for 'inference' an exported model of two
    chained Linear layers run by a Predictor with the same configuration (device, precision,
    threads). The machine's ceiling for the models' GEMM-bound work, measured the way they run."""

    def __init__(self, engine: str = "inference", precision: str = "fp32", device: str = "cpu",
                 threads: Optional[int] = None, size: int = 2048):
        check_choice("engine", engine, ENGINES)
        self.engine, self.precision, self.device, self.size = engine, precision, device, size
        rng = np.random.default_rng(0)
        if engine == "eager":
            if device == "gpu":
                check_gpu("device='gpu'")
            elif precision != "fp32":
                raise ValueError(f"engine='eager' on CPU runs fp32 only (no eager {precision} CPU kernels)")
            else:
                set_eager_threads(threads)
            place = paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace()
            dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
            self._a = paddle.to_tensor(rng.standard_normal((size, size), dtype=np.float32), place=place).astype(dtype)
            self._b = paddle.to_tensor(rng.standard_normal((size, size), dtype=np.float32), place=place).astype(dtype)
            self.flops = 2.0 * size ** 3
        else:
            self._x = rng.standard_normal((size, size), dtype=np.float32)
            with tempfile.TemporaryDirectory(prefix="ppim-ceiling-") as workdir:
                model_dir = _export_probe(_MatMul(size), Path(workdir) / "matmul", size)
                self._predictor = Predictor(model_dir, device=device, precision=precision, threads=threads)
            self.flops = 4.0 * size ** 3  # two GEMMs

    def _step(self) -> None:
        if self.engine == "eager":
            out = paddle.matmul(self._a, self._b)
            out.numpy() if self.device == "cpu" else paddle.device.cuda.synchronize()
        else:
            self._predictor(self._x)

    def measure(self, iters: int = 5, warmup: int = 1) -> float:
        """GFLOP/s, from the median of ``iters`` timed runs."""
        return self.flops / statistics.median(_time_calls(self._step, iters, warmup)) / 1e9


def measure_ceiling(engine: str = "inference", precision: str = "fp32", device: str = "cpu",
                    threads: Optional[int] = None, size: int = 2048, iters: int = 5, warmup: int = 2) -> float:
    """GFLOP/s of size^3 GEMMs through ``engine`` (see CeilingProbe)."""
    return CeilingProbe(engine, precision, device, threads, size).measure(iters, warmup)


def _export_probe(probe: nn.Layer, output_dir: Path, size: int) -> Path:
    """Export the matmul probe (input x: (size, size)) with a minimal ppim.json."""
    with staged_dir(output_dir) as tmp:
        probe.eval()
        paddle.jit.save(probe, str(tmp / "model"),
                        input_spec=[paddle.static.InputSpec([size, size], "float32", name=INPUT_NAME)])
        manifest = {"format": "ppim-inference", "model": "matmul", "input_name": INPUT_NAME,
                    "input_shape": [size, size], "optimized": False}
        write_json(tmp / MANIFEST, manifest)
    return output_dir


def _subnet_list(model: nn.Layer, subnets: Optional[Iterable[Tuple[int, float]]]) -> List[Optional[Tuple[int, float]]]:
    if not is_supernet(model):
        return [None]
    chosen = list(subnets) if subnets else list(model.subnets)
    reference = (max(model.img_sizes), 1.0)
    if reference not in [(int(s), float(r)) for s, r in chosen]:
        chosen = [reference] + chosen  # speed-ups are relative to the full network
    return [(int(s), float(r)) for s, r in chosen]


def benchmark(model: Union[str, nn.Layer], engines: Sequence[str] = ENGINES, precisions: Sequence[str] = ("fp32",),
              batch_sizes: Sequence[int] = (1, 16), iters: int = 10, warmup: int = 2, threads: Optional[int] = None,
              device: str = "cpu", gmacs: Optional[float] = None,
              subnets: Optional[Iterable[Tuple[int, float]]] = None, ceiling: bool = True, ceiling_size: int = 2048,
              model_kwargs: Optional[Dict[str, Any]] = None, log: Optional[Callable[[str], None]] = None
              ) -> List[Dict[str, Any]]:
    """Throughput of ``model`` (a name, built with random weights, or a model) per engine, precision,
    batch size and, for super models, sub-network (all 12 by default).

    Each row: model, engine, precision, device, threads, batch_size, img_size (input side), subnet
    (super models: img_size and keep_ratio), images_per_sec (median over ``iters`` timed calls after
    ``warmup``), ms_per_batch, gmacs (per image), gflops_per_sec achieved (2 * MACs * images/s),
    ceiling_gflops_per_sec (``ceiling_size``^3 GEMMs through the same engine and precision, timed
    right after each point: see CeilingProbe), ceiling_share, ceiling_images_per_sec, and for super
    models speedup (images/s over that of (224, 1.0)) and flops_ratio (MACs of (224, 1.0) over the
    sub-network's). cpu_per_wall (process CPU time over wall time while the model ran) shows how
    many cores it really had: about ``threads`` on an idle machine, less when other processes
    compete. A combination that cannot run here (bf16 without CPU support, fp16 on CPU, GPU on a
    CPU build) gets a row with ``error`` and no timings. ``gmacs`` overrides ppim.flops' count
    (non-super models)."""
    log = log or (lambda message: None)
    if isinstance(model, str):
        model = create_model(model, **(model_kwargs or {}))
    name = model_name(model)
    model.eval()
    size = input_size(model, None)
    threads_used = threads or (default_threads() if device == "cpu" else None)
    probes: Dict[Tuple[str, str], Any] = {}
    ceiling_iters = max(3, min(iters, 5))
    rows: List[Dict[str, Any]] = []
    original = current_subnet(model)
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batch_sizes}
    workdir = tempfile.TemporaryDirectory(prefix="ppim-benchmark-")
    try:
        for subnet in _subnet_list(model, subnets):
            exported = None
            if subnet is not None:
                model.set_subnet(*subnet)
            if subnet is None and gmacs is not None:
                macs = float(gmacs)
            else:
                macs = _model_gmacs(model, *(subnet or (None, None)))
            for engine in engines:
                for precision in precisions:
                    key = (engine, precision)
                    if ceiling and key not in probes:
                        try:
                            probes[key] = CeilingProbe(engine, precision, device, threads, ceiling_size)
                        except Exception as exc:  # noqa: BLE001 - reported in the rows
                            probes[key] = exc
                    base = {"model": name, "engine": engine, "precision": precision, "device": device,
                            "threads": threads_used, "img_size": size,
                            "subnet": None if subnet is None else {"img_size": subnet[0], "keep_ratio": subnet[1]},
                            "gmacs": macs, "paddle_version": paddle.__version__}
                    try:
                        if engine == "inference":  # one export per sub-network serves every precision
                            if exported is None:
                                exported = export(model, Path(workdir.name) / "model")
                            predictor = Predictor(exported, device=device, precision=precision, threads=threads)
                            runner = Runner(predictor, engine, precision, device, size, subnet, predictor.threads,
                                            predictor, exported)
                        else:
                            runner = create_runner(model, engine, precision, device, threads)
                    except Exception as exc:  # noqa: BLE001 - reported in the rows
                        for batch_size in batch_sizes:
                            rows.append({**base, "batch_size": batch_size, "error": f"{type(exc).__name__}: {exc}"})
                        log(f"{name} {engine}/{precision}: {exc}")
                        continue
                    for batch_size in batch_sizes:
                        batch = batches[batch_size]
                        cpu_start, wall_start = time.process_time(), time.perf_counter()
                        times = _time_calls(functools.partial(runner, batch), iters, warmup)
                        cpu_per_wall = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
                        # The ceiling is timed right after the model, so both see the same machine
                        # (other processes come and go on shared machines).
                        probe = probes.get(key)
                        peak = probe.measure(ceiling_iters) if isinstance(probe, CeilingProbe) else probe
                        seconds = statistics.median(times)
                        ips = batch_size / seconds
                        row = {**base, "batch_size": batch_size, "images_per_sec": ips,
                               "images_per_sec_mean": batch_size * len(times) / sum(times),
                               "ms_per_batch": seconds * 1e3, "gflops_per_sec": ips * 2 * macs,
                               "cpu_per_wall": cpu_per_wall}
                        if isinstance(peak, float):
                            row.update(ceiling_gflops_per_sec=peak, ceiling_share=row["gflops_per_sec"] / peak,
                                       ceiling_images_per_sec=peak / (2 * macs))
                        elif isinstance(peak, Exception):
                            row["ceiling_error"] = f"{type(peak).__name__}: {peak}"
                        rows.append(row)
                        log(format_rows([row], header=False))
                    runner = None  # free the predictor before the next is made
    finally:
        workdir.cleanup()
        if original is not None:
            model.set_subnet(*original)
    _add_speedups(rows)
    return rows


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
    return "\n".join(lines)
