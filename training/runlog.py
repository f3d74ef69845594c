"""What a run leaves behind: metrics.jsonl (one JSON object per step), summary.json, curves.png.

metrics.jsonl is appended and flushed line by line, so it can be read (or plotted) while the run goes on and
survives a crash. When a run resumes from a checkpoint at step s, records after s are dropped first, so the
file reads exactly as if the run had never stopped.
"""
import json
import math
import os
from pathlib import Path


class RunLog:
    """RunLog(out_dir) starts a fresh metrics.jsonl; RunLog(out_dir, resume_step=s) keeps records with step <= s."""

    def __init__(self, out_dir, resume_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.summary_path = self.out_dir / "summary.json"
        kept = []
        if resume_step is not None and self.metrics_path.exists():
            kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= resume_step]
        self._file = open(self.metrics_path, "w")
        for record in kept:
            self._write(record)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(_plain(record)) + "\n")
        self._file.flush()

    def step(self, record: dict) -> None:
        """Append one step's record (a flat dict of numbers; include "step" and "step_time_s")."""
        self._write(record)

    def write_summary(self, summary: dict) -> Path:
        """Atomically write summary.json."""
        return write_summary(self.out_dir, summary)

    def records(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def close(self) -> None:
        self._file.close()


def _plain(record: dict) -> dict:
    """Tensors and numpy numbers -> Python floats/ints; NaN/inf -> None (JSON has no NaN)."""
    out = {}
    for key, value in record.items():
        if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def write_summary(out_dir, summary: dict) -> Path:
    """Atomically write OUT/summary.json (temp file, then os.replace)."""
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(_plain(summary), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_metrics(path) -> list[dict]:
    """All records of a metrics.jsonl (a torn last line from a crash is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(metrics_path, png_path, keys=("loss", "reward", "accuracy")) -> Path | None:
    """One panel per key (those present in the records), value against step; written to png_path."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's (e.g. a notebook's) backend alone

    records = read_metrics(metrics_path)
    present = [k for k in keys if any(r.get(k) is not None for r in records)]
    if not present:
        return None
    fig = Figure(figsize=(4 * len(present), 3.2))
    axes = fig.subplots(1, len(present), squeeze=False)
    for ax, key in zip(axes[0], present):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return Path(png_path)
