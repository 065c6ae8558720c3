"""SuperViT on a latency budget: the sub-network with the best published accuracy among those
that run within ``latency_ms`` on this machine, engine and batch size.

    choice = pick_subnet(model, latency_ms=20, batch=1, engine="auto")
    print(choice.describe())        # "160x0.7: 14.2 ms measured (batch 1, inference fp32), published top-1 81.73%"
    model.set_subnet(*choice.subnet)

Latencies are measured (ppim.deploy.throughput.benchmark, every sub-network) the first time and
kept in ``$PPIM_HOME/subnet_latency/``, keyed by the machine (CPU model and flags, CPUs, threads,
Paddle version), the engine, precision and batch size, and the model's architecture, so the next
call on the same machine answers at once; accuracies are the model cfg's published per-sub-network
top-1 (``weights.subnet_top1``). :func:`choose` is the decision alone, over any table.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import paddle.nn as nn

from ..errors import InputError, ParameterError
from ..fileio import ppim_home, write_json
from ..registry import get_model_cfg, model_name
from ..runtime import cpu, cpu_count, machine
from ..subnet import Subnet, subnets_of
from .registry import resolve_engine

__all__ = ["SubnetChoice", "choose", "measure_subnets", "latency_tables", "published_accuracy", "pick_subnet",
           "latency_cache_dir"]


@dataclass(frozen=True)
class SubnetChoice:
    """The picked sub-network (img_size, keep_ratio), its measured latency (ms per batch), its
    published top-1 (None when unknown), whether it fits the budget (False: none did, and this is
    the fastest), and the table it was picked from (key -> ms)."""
    subnet: Subnet
    latency_ms: float
    top1: Optional[float]
    fits: bool
    budget_ms: float
    latencies: Mapping[str, float]

    @property
    def key(self) -> str:
        """"160x0.7"."""
        return self.subnet.key

    def describe(self, context: str = "") -> str:
        accuracy = f", published top-1 {self.top1:.2f}%" if self.top1 is not None else ""
        line = f"{self.key}: {self.latency_ms:.1f} ms measured{f' ({context})' if context else ''}{accuracy}"
        if not self.fits:
            line += (f"; note: no sub-network fits {self.budget_ms:g} ms here, this is the fastest of "
                     f"{len(self.latencies)}")
        return line


def choose(latencies: Mapping[str, float], accuracies: Mapping[str, float], latency_ms: float) -> SubnetChoice:
    """The most accurate sub-network whose latency is within ``latency_ms`` (ties: the faster one);
    sub-networks without a published accuracy rank below those with one, among themselves by cost
    (larger input, then more tokens kept). None fits: the fastest, with ``fits=False``.
    ``latencies``: "224x0.7" -> ms; ``accuracies``: "224x0.7" -> top-1 (%)."""
    if not latencies:
        raise ValueError("no sub-network latencies to choose from")
    if not latency_ms > 0:
        raise ParameterError("{latency_ms} is not a positive number of milliseconds", latency_ms=latency_ms)

    def rank(key: str):
        size, ratio = Subnet.parse(key)
        top1 = accuracies.get(key)
        return (top1 is not None, top1 if top1 is not None else size * ratio, -latencies[key])

    fitting = [key for key, ms in latencies.items() if ms <= latency_ms]
    fits = bool(fitting)
    key = max(fitting, key=rank) if fits else min(latencies, key=lambda k: (latencies[k], -rank(k)[1]))
    return SubnetChoice(Subnet.parse(key), float(latencies[key]), accuracies.get(key), fits, float(latency_ms),
                        dict(latencies))


def published_accuracy(model: nn.Layer) -> Dict[str, float]:
    """"224x0.7" -> published top-1 of the model's registered cfg ({} for unregistered variants)."""
    try:
        cfg = get_model_cfg(model_name(model))
    except (KeyError, ValueError):
        return {}
    return dict((cfg.get("weights") or {}).get("subnet_top1") or {})


def latency_cache_dir() -> Path:
    """``$PPIM_HOME/subnet_latency``."""
    return ppim_home() / "subnet_latency"


def _cache_key(model: nn.Layer, engine: str, precision: str, batch: int, threads: int) -> str:
    vendor, cpu_model, flags = cpu()
    shapes = sorted((name, tuple(p.shape)) for name, p in model.named_parameters())
    facts = {"cpu": [vendor, cpu_model, sorted(flags)], "cpus": cpu_count(), "threads": threads,
             "paddle": machine().paddle_version, "engine": engine, "precision": precision, "batch": batch,
             "model": model_name(model), "shapes": shapes}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def measure_subnets(model: nn.Layer, engine: str = "auto", precision: str = "fp32", batch: int = 1,
                    threads: Optional[int] = None, iters: int = 4, warmup: int = 2, cache: bool = True,
                    refresh: bool = False, calibration: Any = None, rounds: int = 3) -> Dict[str, float]:
    """"224x0.7" -> measured ms per batch of ``batch`` for each of the model's sub-networks (engine
    'auto' resolved first), from the cache when this machine measured them before (``refresh``
    measures again). The sub-networks are timed in turn, ``rounds`` times (``iters`` calls each), so
    a change of load during the measurement falls on all of them. int8: quantized on
    ``calibration`` (see ppim.deploy.throughput.benchmark)."""
    if not subnets_of(model):
        raise InputError(f"{model_name(model)} has no sub-networks: latency budgets are for SuperViT models")
    engine = resolve_engine(engine, "cpu", precision)
    threads = int(threads or cpu_count())
    path = latency_cache_dir() / f"{model_name(model)}-{_cache_key(model, engine, precision, batch, threads)}.json"
    wanted = {s.key for s in subnets_of(model)}
    if cache and not refresh and path.is_file():
        try:
            stored = json.loads(path.read_text())["latency_ms"]
            if set(stored) == wanted and all(isinstance(v, (int, float)) and v > 0 for v in stored.values()):
                return {k: float(v) for k, v in stored.items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: measured again and rewritten
    from .throughput import benchmark

    rows = benchmark(model, engines=(engine,), precisions=(precision,), batch_sizes=(batch,), iters=iters,
                     warmup=warmup, threads=threads, subnets=subnets_of(model), ceiling=False, calibration=calibration,
                     rounds=rounds)
    for row in rows:
        problem = row.get("skipped") or row.get("error")
        if problem:
            raise RuntimeError(f"cannot measure {model_name(model)} on engine={engine!r} {precision}: {problem}")
    latencies = {k: v for k, v in latency_tables(rows)[0]["latency_ms"].items() if k in wanted}
    if cache:
        write_json(path, {"model": model_name(model), "engine": engine, "precision": precision, "batch": batch,
                          "threads": threads, "cpu": cpu()[1], "latency_ms": latencies})
    return latencies


def latency_tables(rows: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The sub-network rows of ppim.deploy.benchmark as one table per setting, in the rows' order:
    ``[{"engine", "precision", "batch", "threads", "latency_ms": {"224x0.7": ms per batch, ...}}, ...]``.
    Rows without a time (skipped, failed) and rows of models without sub-networks are left out."""
    tables: Dict[tuple, Dict[str, Any]] = {}
    for row in rows:
        if row.get("subnet") is None or row.get("ms_per_batch") is None:
            continue
        setting = (row["engine"], row["precision"], row["batch_size"], row.get("threads"))
        table = tables.setdefault(setting, dict(zip(("engine", "precision", "batch", "threads"), setting),
                                                latency_ms={}))
        table["latency_ms"][Subnet.of(row["subnet"]).key] = float(row["ms_per_batch"])
    return list(tables.values())


def pick_subnet(model: nn.Layer, latency_ms: float, batch: int = 1, engine: str = "auto",
                precision: str = "fp32", threads: Optional[int] = None,
                latencies: Optional[Mapping[str, float]] = None, **measure: Any) -> SubnetChoice:
    """The sub-network of ``model`` to run within ``latency_ms`` per batch of ``batch`` on
    ``engine`` here: measured once per machine (measure_subnets; or the given ``latencies`` table)
    and joined with the published accuracy (choose). Does not change the model's sub-network."""
    table = dict(latencies) if latencies is not None else measure_subnets(
        model, engine=engine, precision=precision, batch=batch, threads=threads, **measure)
    return choose(table, published_accuracy(model), latency_ms)
