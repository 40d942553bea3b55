"""Published figures (revbench/data/published.csv), read with the standard library.

One row per model, task and metric: the value as published, its unit, the mode and
resolution it was measured at, where it comes from (`source`), whether it was read off a
plot (`approximate`) and whether it is only the implementation's own count (`self_count`).

Which figure a model gets: a paper's where one exists (EfficientNet: Tan & Le, ICML 2019,
whose B0 is 0.39 GMACs); timm's model card only where nothing else is published (HRNet,
ViT, ResNet). A model-card figure is timm counting timm's own model, so measured /
published is 1.00 by construction and proves nothing: those rows carry `self_count` 1.
The registry (`ModelInfo.published_*`) and the report read the same rows.

The harness's pandas view of this table, for reports, is `load_published`
(revbench/published.py).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

COLUMNS = (
    "model",
    "family",
    "size",
    "task",  # imagenet, faster_rcnn, mask_rcnn
    "metric",  # params, macs, top1, memory_per_sample, max_batch, det_memory_per_sample, ...
    "value",
    "unit",
    "mode",  # the execution mode the figure was measured in (memory figures only)
    "resolution",
    "approximate",  # 1: read off a plot rather than printed
    "self_count",  # 1: the implementation's own count (timm model card), ratio 1.00
    "source",
    "note",
)

# unit -> (factor to the base unit, base unit). GB and MB are decimal: the papers do not
# say otherwise.
UNITS = {
    "GB": (1e9, "bytes"),
    "MB": (1e6, "bytes"),
    "GMACs": (1e9, "MACs"),
    "MACs": (1.0, "MACs"),
    "M": (1e6, "params"),
    "count": (1.0, "params"),
    "images": (1.0, "images"),
    "AP": (1.0, "AP"),
    "%": (1.0, "percent"),
}


@dataclass(frozen=True)
class PublishedFigure:
    model: str
    family: str
    size: str
    task: str
    metric: str
    value: float  # in `unit`, as published
    unit: str
    mode: str  # "" where not stated
    resolution: int | None
    approximate: bool
    self_count: bool
    source: str
    note: str
    printed: str  # the value as printed, e.g. "39.7": it says how far it was rounded

    @property
    def value_base(self) -> float:
        return self.value * UNITS[self.unit][0]

    @property
    def base_unit(self) -> str:
        return UNITS[self.unit][1]

    @property
    def rounding(self) -> float:
        """Half a unit of the last printed digit, in base units: "39.7" M is 39.7e6 to
        within 0.05e6; an integer count is exact to within 0.5."""
        decimals = len(self.printed.partition(".")[2])
        return 0.5 * 10.0**-decimals * UNITS[self.unit][0]


def read_published(path: str | Path | None = None) -> list[PublishedFigure]:
    """Every row of the table (the shipped one by default), checked: columns, units, and
    at most one row per model, task and metric."""
    source = Path(path) if path else resources.files("revbench.data") / "published.csv"
    with source.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    figures, seen = [], set()
    for row in rows:
        if row["unit"] not in UNITS:
            raise ValueError(
                f"{source}: unit {row['unit']!r} of {row['model']} is invalid; "
                f"valid: {', '.join(UNITS)}"
            )
        key = (row["model"], row["task"], row["metric"])
        if key in seen:
            raise ValueError(f"{source}: two rows for {', '.join(key)}; keep one")
        seen.add(key)
        figures.append(
            PublishedFigure(
                model=row["model"],
                family=row["family"],
                size=row["size"],
                task=row["task"],
                metric=row["metric"],
                value=float(row["value"]),
                unit=row["unit"],
                mode=row["mode"],
                resolution=int(row["resolution"]) if row["resolution"] else None,
                approximate=row["approximate"] == "1",
                self_count=row["self_count"] == "1",
                source=row["source"],
                note=row["note"],
                printed=row["value"],
            )
        )
    return figures


# A model's own figures, whichever paper's table prints them (ImageNet classification for
# the classifiers, EfficientDet's Table 2 for D0-D7): one per (model, metric).
MODEL_METRICS = ("params", "macs", "top1")


@functools.cache
def model_figures() -> dict[tuple[str, str], PublishedFigure]:
    """The shipped figures of each model itself (parameters, MACs at its native resolution,
    ImageNet top-1) by (model, metric)."""
    return {(f.model, f.metric): f for f in read_published() if f.metric in MODEL_METRICS}
