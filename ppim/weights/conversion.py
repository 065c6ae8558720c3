"""Converting a PyTorch checkpoint file into a .pdparams for a ppim model (tools/convert.py)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..registry import model_name
from .containers import MODEL_DESCRIPTION_KEY
from .errors import CheckpointError
from .formats import PYTORCH, detect_format, read_weights
from .pdparams import read_pdparams, save_pdparams
from .pretrained import state_budget
from .state import StateReport, check_state, set_weights

__all__ = ["ConversionReport", "convert_file"]


@dataclasses.dataclass
class ConversionReport:
    source: str
    output: Optional[str]
    state: StateReport
    written: int
    entry: Optional[str] = None  # the checkpoint entry the weights came from ("model_ema", ...)
    ema: bool = False

    def __str__(self) -> str:
        s = self.state
        taken = f" (entry {self.entry!r}{', EMA weights' if self.ema else ''})" if self.entry else ""
        lines = [f"{self.source}{taken}: {len(s.matched)} matched, {len(s.resized)} resized, {len(s.dropped)} "
                 f"classifier dropped, {len(s.missing)} missing, {len(s.unexpected)} unexpected, "
                 f"{len(s.mismatched)} shape mismatches"]
        for title, keys in (("resized", s.resized), ("dropped (other class count)", s.dropped),
                            ("missing", s.missing), ("unexpected", s.unexpected), ("shape mismatch", s.mismatched)):
            lines += [f"  {title}: {key}" for key in keys]
        if self.output:
            lines.append(f"wrote {self.written} tensors to {self.output}")
        return "\n".join(lines)


def convert_file(source: "str | os.PathLike[str]", output: "str | os.PathLike[str]", model,
                 ema: Optional[bool] = None, strict: bool = True,
                 description: Optional[dict] = None) -> ConversionReport:
    """Convert a PyTorch checkpoint into a .pdparams for ``model`` (e.g. ppim.create_model(name,
    num_classes=...)). Strict: any missing, unexpected or mis-shaped key is an error naming them.
    ``ema``: True/False takes the EMA or the model weights of a checkpoint holding both; None follows
    the model's cfg (``weights["prefer_ema"]``: the EMA weights when present, as for super_lvvit_s).
    The file is written atomically (never over ``source``), with a sha256 sidecar, and verified by
    loading it back into the model. ``description`` (ppim.builder.describe_model) is stored beside the
    weights, so the file tells which model it is for."""
    if os.path.exists(output) and os.path.samefile(source, output):
        raise CheckpointError(f"the output {output} is the source checkpoint itself; write to another file")
    if detect_format(source) != PYTORCH:
        raise CheckpointError(f"{source} is not a PyTorch checkpoint (it is a .pdparams file already?)")
    prefer_ema = bool((getattr(model, "pretrained_cfg", None) or {}).get("weights", {}).get("prefer_ema"))
    selected = read_weights(source, model, ema=ema, prefer_ema=prefer_ema, max_bytes=state_budget(model))
    state = selected.state
    report = check_state(model, state)
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit {model_name(model)}: {report.problems()} "
                              "(nothing written; --no-strict writes the keys that fit)")
    broken = {entry.split(" ", 1)[0] for entry in report.nonfinite}  # "key (2 NaN, ...)"
    kept = {key: state[key] for key in report.matched if key not in broken}
    save_pdparams({**kept, MODEL_DESCRIPTION_KEY: description} if description else kept, output)
    reloaded = read_pdparams(output)
    set_weights(model, dict(reloaded))
    loaded = model.state_dict()
    for key in reloaded:
        if not np.array_equal(loaded[key].numpy(), state[key]):
            raise CheckpointError(f"{output}: {key} did not load back equal to {source}; the file was "
                                  "written but is wrong, delete it")
    return ConversionReport(str(source), str(Path(output)), report, len(kept), selected.entry or None, selected.ema)
