"""Converting a PyTorch checkpoint file into a .pdparams for a ppim model (tools/convert.py)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..registry import model_name
from .errors import CheckpointError
from .formats import read_torch_weights
from .pdparams import read_pdparams, save_pdparams
from .state import StateReport, check_state, set_weights

__all__ = ["ConversionReport", "convert_file"]


@dataclasses.dataclass
class ConversionReport:
    source: str
    output: Optional[str]
    state: StateReport
    written: int

    def __str__(self) -> str:
        s = self.state
        lines = [f"{self.source}: {len(s.matched)} matched, {len(s.resized)} resized, {len(s.dropped)} "
                 f"classifier dropped, {len(s.missing)} missing, {len(s.unexpected)} unexpected, "
                 f"{len(s.mismatched)} shape mismatches"]
        for title, keys in (("resized", s.resized), ("dropped (other class count)", s.dropped),
                            ("missing", s.missing), ("unexpected", s.unexpected), ("shape mismatch", s.mismatched)):
            lines += [f"  {title}: {key}" for key in keys]
        if self.output:
            lines.append(f"wrote {self.written} tensors to {self.output}")
        return "\n".join(lines)


def convert_file(source: "str | os.PathLike[str]", output: "str | os.PathLike[str]", model,
                 ema: bool = False, strict: bool = True) -> ConversionReport:
    """Convert a PyTorch checkpoint into a .pdparams for ``model`` (e.g. ppim.create_model(name,
    num_classes=...)). Strict: any missing, unexpected or mis-shaped key is an error naming them.
    The file is written atomically and verified by loading it back into the model."""
    state = read_torch_weights(source, model, ema)
    report = check_state(model, state)
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit {model_name(model)}: {report.problems()} "
                              "(nothing written; --no-strict writes the keys that fit)")
    kept = {key: state[key] for key in report.matched}
    save_pdparams(kept, output)
    reloaded = read_pdparams(output)
    set_weights(model, dict(reloaded))
    loaded = model.state_dict()
    for key in reloaded:
        if not np.array_equal(loaded[key].numpy(), state[key]):
            raise CheckpointError(f"{output}: {key} did not load back equal to {source}; the file was "
                                  "written but is wrong, delete it")
    return ConversionReport(str(source), str(Path(output)), report, len(kept))
