"""Data helpers shared by the report and the figures: orderings and joins of stored results."""

from __future__ import annotations

import re

import pandas as pd

from revbench.models import UnknownModelError, get_info, list_models

from .results import FIT_GROUP


def natural_key(value) -> tuple:
    """Sort key that orders 'depth=4' before 'depth=16' (numbers compare as numbers)."""
    if isinstance(value, tuple):
        return tuple(natural_key(v) for v in value)
    parts = re.split(r"(\d+)", str(value))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def model_order(models) -> dict[str, int]:
    """Registry order (S0 before S1, T before S before B): legends and tables read in it."""
    rank = {info.name: i for i, info in enumerate(list_models())}
    return {m: rank.get(m, len(rank)) for m in models}


def native_resolutions(models) -> dict[str, int]:
    """Each registered model's native resolution; results of unregistered models are left out."""
    native = {}
    for m in models:
        try:
            native[m] = get_info(m).native_resolution
        except UnknownModelError:  # results of a model no longer registered
            pass
    return native


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
