"""What this machine runs, for bug reports: CPU and its flags, Paddle's build, GPUs, the optional
extras, each capability ppim gates a kernel or precision on, and for every engine, device and
precision whether it runs here and, if not, why.

    python -m ppim env            # or ppim-env
    python -m ppim env --json     # the same as JSON
    PPIM_SIMULATE_MACHINE=avx2 python -m ppim env   # what a simulated machine would run (tests)
"""
from __future__ import annotations

import json

from .common import ArgumentParser, command


def report() -> dict:
    """The report as a dict: ``machine`` (ppim.runtime.Machine's fields), ``capabilities`` (name ->
    None or why not), ``engines`` (rows of engine, device, precision, runs, reason) and ``auto``
    (device/precision -> the engine engine='auto' picks, or None)."""
    from dataclasses import asdict

    from ..deploy.registry import DEVICES, ENGINE_SPECS, PRECISIONS, resolve_engine, unsupported
    from ..errors import CapabilityError
    from ..runtime import CAPABILITIES, machine, missing
    from ..version import __version__

    m = machine()
    facts = asdict(m)
    facts["cpu_flags"] = sorted(m.cpu_flags)
    facts["extras"] = dict(m.extras)
    rows, auto = [], {}
    for spec in ENGINE_SPECS:
        for device in DEVICES:
            for precision in PRECISIONS:
                reason = unsupported(spec.name, precision, device)
                rows.append({"engine": spec.name, "device": device, "precision": precision,
                             "runs": reason is None, "reason": reason})
    for device in DEVICES:
        for precision in PRECISIONS:
            try:
                auto[f"{device}/{precision}"] = resolve_engine("auto", device, precision)
            except CapabilityError:
                auto[f"{device}/{precision}"] = None
    return {"ppim_version": __version__, "machine": facts,
            "capabilities": {name: missing(name) for name in CAPABILITIES}, "engines": rows, "auto": auto}


@command
def main(argv=None) -> int:
    parser = ArgumentParser(prog="ppim-env", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    from ..runtime import describe
    from ..version import __version__

    data = report()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    lines = [f"ppim:     {__version__}", *describe(), "engines (engine, device, precision: runs here, or why not):"]
    for row in data["engines"]:
        verdict = "yes" if row["runs"] else f"no: {row['reason']}"
        lines.append(f"  {row['engine']:<12}{row['device']:<4} {row['precision']:<5} {verdict}")
    lines.append("engine='auto' picks: " + ", ".join(f"{key} {engine or '-'}" for key, engine in data["auto"].items()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
