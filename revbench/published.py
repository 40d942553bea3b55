"""Published figures revbench is compared with, as data (`revbench/data/published.csv`).

One row per model, task, metric and source, with the value in the unit it was published
in and where it comes from. `load_published` converts every value to base units (bytes,
MACs, parameters, images, AP points) in `value_base`, so results and published figures
compare without unit arithmetic elsewhere. GB and MB are decimal (10^9, 10^6 bytes): the
papers do not say otherwise.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

COLUMNS = (
    "model",
    "family",
    "size",
    "task",  # imagenet, faster_rcnn, mask_rcnn
    "metric",  # memory_per_sample, macs, params, max_batch, det_memory_per_sample, ...
    "value",
    "unit",
    "mode",  # the execution mode the figure was measured in (memory figures only)
    "resolution",
    "approximate",  # 1: read off a plot rather than printed
    "source",
    "note",
)

# unit -> (factor to the base unit, base unit)
UNITS = {
    "GB": (1e9, "bytes"),
    "MB": (1e6, "bytes"),
    "GMACs": (1e9, "MACs"),
    "MACs": (1.0, "MACs"),
    "M": (1e6, "params"),
    "count": (1.0, "params"),
    "images": (1.0, "images"),
    "AP": (1.0, "AP"),
}


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Published figures with `value_base` in bytes / MACs / params (`base_unit` says which)."""
    source = Path(path) if path else resources.files("revbench.data") / "published.csv"
    with source.open() as f:
        df = pd.read_csv(f, dtype={"model": str, "mode": str, "note": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
    unknown = sorted(set(df["unit"]) - set(UNITS))
    if unknown:
        raise ValueError(f"{source}: unknown unit(s) {unknown}; valid: {', '.join(UNITS)}")
    df["value_base"] = df["value"] * df["unit"].map(lambda u: UNITS[u][0])
    df["base_unit"] = df["unit"].map(lambda u: UNITS[u][1])
    df["resolution"] = df["resolution"].astype("Int64")
    df["approximate"] = df["approximate"].astype(bool)
    df[["mode", "note"]] = df[["mode", "note"]].fillna("")
    return df


def memory_points(published: pd.DataFrame, task: str = "imagenet") -> pd.DataFrame:
    """Published training memory per sample, one row per model, with its published MACs.

    Columns: model, family, size, mode, resolution, approximate, bytes_per_sample, macs
    (NaN where no MAC count is published), source.
    """
    metric = "memory_per_sample" if task == "imagenet" else "det_memory_per_sample"
    rows = published[(published["task"] == task) & (published["metric"] == metric)]
    macs_metric = "macs" if task == "imagenet" else "det_macs"
    macs = published[(published["task"] == task) & (published["metric"] == macs_metric)]
    macs = macs.set_index("model")["value_base"]
    out = rows[["model", "family", "size", "mode", "resolution", "approximate", "source"]].copy()
    out["bytes_per_sample"] = rows["value_base"].to_numpy()
    out["macs"] = out["model"].map(macs)
    return out.reset_index(drop=True)
