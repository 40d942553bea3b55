"""Data helpers shared by the report and the figures: per-sample fits, orderings and joins of
stored results."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .status import OK

FIT_GROUP = [
    "model",
    "variant",
    "mode",
    "resolution",
    "precision",
    "scenario",
    "optimizer",
    "method",
]


def per_sample_fit(df: pd.DataFrame) -> pd.DataFrame:
    """Memory per sample and fixed memory per model configuration.

    Least-squares line of peak bytes over batch size, over the `ok` rows of each
    (model, variant, mode, resolution, precision, scenario, optimizer, method): the slope is the
    memory per sample, the intercept the fixed memory (weights, optimizer state, ...).
    A configuration needs two distinct batch sizes to be fitted.
    """
    ok = df[(df["status"] == OK) & df["peak_bytes"].notna()]
    rows = []
    for key, g in ok.groupby(FIT_GROUP, dropna=False, sort=False):
        batches = g["batch_size"].to_numpy(dtype=float)
        if len(set(batches)) < 2:
            continue
        slope, intercept = np.polyfit(batches, g["peak_bytes"].to_numpy(dtype=float), 1)
        first = g.iloc[0]
        rows.append(
            {
                **dict(zip(FIT_GROUP, key)),
                "family": first["family"],
                "kind": first["kind"],
                "size": first["size"],
                "task": first["task"],
                "params": first["params"],
                "macs": first["macs"],
                "macs_thop": first["macs_thop"],
                "bytes_per_sample": float(slope),
                "fixed_bytes": float(intercept),
                "n_points": len(g),
                "batch_sizes": ",".join(str(int(b)) for b in sorted(set(batches))),
            }
        )
    return pd.DataFrame(rows)


def natural_key(value) -> tuple:
    """Sort key that orders 'depth=4' before 'depth=16' (numbers compare as numbers)."""
    if isinstance(value, tuple):
        return tuple(natural_key(v) for v in value)
    parts = re.split(r"(\d+)", str(value))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


# A model's registry rank and native resolution come with the loaded rows, from the run's
# manifest (`revbench.loading.LOADED_FIELDS`): analysis never reads the registry.


def model_order(rows: pd.DataFrame) -> dict[str, float]:
    """Each model's rank in the registry (S0 before S1, T before S before B): legends and
    tables read in it. Models whose run did not record one come last (callers break ties
    by name)."""
    ranks = rows["model_rank"] if "model_rank" in rows else pd.Series(math.nan, index=rows.index)
    known = ranks.groupby(rows["model"]).min().dropna()
    return {m: float(known.get(m, math.inf)) for m in rows["model"].unique()}


def native_resolutions(rows: pd.DataFrame) -> dict[str, int]:
    """Each model's native resolution, where its run recorded one."""
    if "native_resolution" not in rows:
        return {}
    known = rows.dropna(subset=["native_resolution"]).groupby("model")["native_resolution"]
    return {m: int(r) for m, r in known.first().items()}


def estimate_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """Cells measured by both `estimate` and `cuda`: one row per cell with both peaks."""
    keys = [k for k in FIT_GROUP if k != "method"] + ["batch_size"]
    ok = rows[rows["peak_bytes"].notna()]
    est = ok[ok["method"] == "estimate"]
    cuda = ok[ok["method"] == "cuda"]
    cols = [*keys, "family", "size", "peak_bytes"]
    pairs = est[cols].merge(cuda[[*keys, "peak_bytes"]], on=keys, suffixes=("_est", "_cuda"))
    pairs["ratio"] = pairs["peak_bytes_est"] / pairs["peak_bytes_cuda"]
    return pairs


# ----------------------------------------------------------------- memory kinds


@dataclass(frozen=True)
class MemoryKind:
    """One of the memory numbers users confuse, and the record column that holds it."""

    name: str  # allocated | reserved | process
    column: str
    what: str  # how it is read, for captions


MEMORY_KINDS = {
    k.name: k
    for k in (
        MemoryKind(
            "allocated",
            "peak_bytes",
            "peak of the tensors' memory (cuda: max_memory_allocated; estimate: its peak)",
        ),
        MemoryKind(
            "reserved",
            "peak_reserved_bytes",
            "peak the caching allocator reserved (cuda: max_memory_reserved; estimate: a "
            "simulated caching allocator)",
        ),
        MemoryKind(
            "process",
            "process_peak_bytes",
            "peak GPU memory of the process from NVML, CUDA context included (cuda only)",
        ),
    )
}


def with_memory_kind(rows: pd.DataFrame, kind: MemoryKind) -> pd.DataFrame:
    """`rows` with `peak_bytes` holding `kind`'s figure (NaN where a record has none), so
    every fit, figure and table downstream reads the chosen kind."""
    values = rows[kind.column] if kind.column in rows else pd.Series(float("nan"), rows.index)
    return rows.assign(peak_bytes=values)


# ------------------------------------------------------------------ MAC conventions

# Published MAC counts that follow thop's convention (the RevBiFPN paper's own counts, from
# its official code): measured against them, and plotted beside them, with `macs_thop`.
THOP_FAMILIES = frozenset({"RevBiFPN"})


def mac_column(family: str) -> str:
    """The record column whose MAC count follows `family`'s published convention."""
    return "macs_thop" if family in THOP_FAMILIES else "macs"


def mac_convention(column: str) -> str:
    return {
        "macs_thop": "thop convention, as the RevBiFPN paper",
        "macs": "torch flop counter / 2",
    }[column]


# ------------------------------------------------------------------- wording

# Model overrides shown beside the unmodified model (figures, and the published comparison),
# with a readable name: the RevBiFPN neck stored instead of recomputed (docs/published-figures.md).
NAMED_VARIANTS = {"recompute_neck=False": "neck kept"}

# Overrides in words, for legends and labels: name -> how a value reads.
OVERRIDE_WORDS = {
    "recompute_neck": lambda v: "neck kept" if v == "False" else "neck recomputed",
    "rpn_post_nms_top_n_train": lambda v: f"{v} proposals",
    "box_batch_size_per_image": lambda v: f"{v} RoIs",
}


def variant_words(variant: str) -> str:
    """'recompute_neck=False' -> 'neck kept'; 'box_batch_size_per_image=64,
    rpn_post_nms_top_n_train=256' -> '64 RoIs, 256 proposals'; other overrides as written."""
    if not variant:
        return ""
    parts = re.split(r",(?=\w+=)", variant)
    words = []
    for part in parts:
        name, _, value = part.partition("=")
        words.append(OVERRIDE_WORDS[name](value) if name in OVERRIDE_WORDS else part)
    return ", ".join(words)


# Detector heads by model-name prefix (models/detection_names.py names them so).
HEAD_NAMES = {"faster_rcnn_": "Faster R-CNN", "mask_rcnn_": "Mask R-CNN"}


def size_label(size: str, variant: str, model: str = "") -> str:
    """A model's size with its overrides in words, a detector's head first: 'S0',
    'S0, neck kept', 'Faster R-CNN S0, 64 RoIs, 256 proposals'."""
    head = next((name for prefix, name in HEAD_NAMES.items() if model.startswith(prefix)), "")
    words = variant_words(variant)
    text = f"{head} {size}" if head else str(size)
    return f"{text}, {words}" if words else text


def method_word(method: str) -> str:
    """How a figure was obtained: 'estimated' on the estimator, 'measured' only on a device."""
    words = {"estimate": "estimated", "cuda": "measured on cuda", "cpu": "measured on cpu"}
    return words.get(method, method)


# Dense-prediction tasks: a sample is one image, of the size its records name, under the
# head its published figures were measured with.
IMAGE_TASK_HEADS = {
    "detect": "Faster R-CNN",
    "segment": "Mask R-CNN",
    "detect_square": "EfficientDet",
}


def _tasks(rows: pd.DataFrame) -> set[str]:
    """The tasks of `rows` (records and per-sample fits carry their task)."""
    return set(rows["task"].dropna()) if "task" in rows else set()


def sample_word(rows: pd.DataFrame) -> str:
    """What one sample of `rows` is, for labels: "image" for detection and segmentation
    rows, else "sample"."""
    tasks = _tasks(rows)
    return "image" if tasks and tasks <= set(IMAGE_TASK_HEADS) else "sample"


def task_caption(rows: pd.DataFrame) -> str:
    """The heads and image sizes of dense-task `rows` ("Faster R-CNN, 1333x800 images"), or
    "" for classification rows."""
    tasks = _tasks(rows)
    if not tasks or not tasks <= set(IMAGE_TASK_HEADS):
        return ""
    heads = " and ".join(IMAGE_TASK_HEADS[t] for t in sorted(tasks))
    sizes = []
    if {"image_width", "image_height"} <= set(rows.columns):
        shapes = rows[["image_width", "image_height"]].dropna().drop_duplicates()
        sizes = [f"{int(w)}x{int(h)}" for w, h in sorted(shapes.itertuples(index=False))]
    return heads + (f", {', '.join(sizes)} images" if sizes else "")
