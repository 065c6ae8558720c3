"""What a training run leaves to look at: summary.csv (one row per epoch), a PNG of the curves when
matplotlib is installed, and VisualDL scalars when asked for (both optional extras)."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..fileio import write_atomic

#: summary.csv columns, in order (empty when not measured that epoch).
COLUMNS = ("epoch", "train_loss", "lr", "top1", "top5", "ema_top1", "ema_top5", "images_per_sec", "seconds")


def read_summary(path: "str | os.PathLike[str]") -> List[Dict[str, str]]:
    """The rows of a summary.csv (an empty list when there is none yet)."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    except FileNotFoundError:
        return []


class Records:
    """Per-epoch records in ``output``: summary.csv rewritten atomically after each epoch (a resumed
    run keeps the rows of the epochs before its start, also when it resumes into a new folder: ``history``),
    curves.png when matplotlib is installed,
    and VisualDL logs in ``output/visualdl`` with ``visualdl=True`` (per step and per epoch)."""

    def __init__(self, output: "str | os.PathLike[str]", *, visualdl: bool = False, start_epoch: int = 0,
                 plot: bool = True, history: "str | os.PathLike[str] | None" = None):
        self.output = Path(output)
        self.csv_path = self.output / "summary.csv"
        # ``history``: the summary.csv of the resumed run when it was in another folder.
        earlier = self.csv_path if history is None or not Path(history).is_file() else Path(history)
        self.rows = [row for row in read_summary(earlier) if _int(row.get("epoch")) < start_epoch]
        self.plot = plot
        self.writer = None
        if visualdl:
            try:
                from visualdl import LogWriter
            except ImportError:
                raise RuntimeError("--visualdl needs the visualdl package: pip install visualdl "
                                   "(or pip install 'ppim[train]')") from None
            self.writer = LogWriter(logdir=str(self.output / "visualdl"))

    def step(self, global_step: int, values: Dict[str, float]) -> None:
        """Per-step scalars (loss, lr) to VisualDL, when enabled."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag=f"train/{tag}", value=float(value), step=global_step)

    def epoch(self, values: Dict[str, Any]) -> None:
        """Append one epoch's row (keys from COLUMNS), rewrite summary.csv and the picture."""
        row = {column: _cell(values.get(column)) for column in COLUMNS}
        self.rows.append(row)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({column: r.get(column, "") for column in COLUMNS} for r in self.rows)
        write_atomic(self.csv_path, text.getvalue().encode("utf-8"))
        if self.writer is not None:
            for column in COLUMNS[1:]:
                if row[column] != "":
                    self.writer.add_scalar(tag=f"epoch/{column}", value=float(row[column]), step=int(row["epoch"]))
        if self.plot:
            plot_summary(self.rows, self.output / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _int(text: Optional[str]) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return -1


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _series(rows: Sequence[Dict[str, str]], column: str):
    points = [(int(r["epoch"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
    return [p[0] for p in points], [p[1] for p in points]


def plot_summary(rows: Sequence[Dict[str, str]], path: "str | os.PathLike[str]") -> bool:
    """Loss, learning rate and top-1/top-5 (and EMA) per epoch as a PNG; False (and nothing
    written) when matplotlib is not installed or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not rows:
        return False
    figure, (loss_axis, lr_axis, acc_axis) = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_axis.plot(*_series(rows, "train_loss"), marker=".")
    loss_axis.set(title="train loss", xlabel="epoch")
    lr_axis.plot(*_series(rows, "lr"), marker=".")
    lr_axis.set(title="learning rate", xlabel="epoch")
    for column in ("top1", "top5", "ema_top1", "ema_top5"):
        epochs, values = _series(rows, column)
        if epochs:
            acc_axis.plot(epochs, values, marker=".", label=column.replace("_", " "))
    acc_axis.set(title="validation accuracy (%)", xlabel="epoch")
    if acc_axis.lines:
        acc_axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    write_atomic(Path(path), buffer.getvalue())
    return True
