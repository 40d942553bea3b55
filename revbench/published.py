"""Published figures revbench is compared with, as a DataFrame for plots and reports.

The table is `revbench/data/published.csv`, read and checked by
`revbench.models.published` (the registry reads the same rows). One row per model, task
and metric, with the value in the unit it was published in and where it comes from;
`value_base` converts every value to base units (bytes, MACs, parameters, images, AP
points, percent), so results and published figures compare without unit arithmetic
elsewhere. `self_count` marks figures that are only timm's own count of timm's model:
their measured / published ratio is 1.00 by construction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from revbench.models.detection_names import BACKBONES, HEAD_TASKS, model_name
from revbench.models.published import COLUMNS, UNITS, read_published

__all__ = [
    "COLUMNS",
    "UNITS",
    "detector_points",
    "load_published",
    "max_batch_points",
    "memory_points",
    "published_card",
]


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Published figures with `value_base` in bytes / MACs / params (`base_unit` says which)."""
    rows = [
        {
            **{k: v for k, v in dataclasses.asdict(f).items() if k != "printed"},
            "value_base": f.value_base,
            "base_unit": f.base_unit,
        }
        for f in read_published(path)
    ]
    df = pd.DataFrame(rows, columns=[*COLUMNS, "value_base", "base_unit"])
    df["resolution"] = df["resolution"].astype("Int64")
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


# MMDetection's image height: the published detector figures are at 1333x800.
DETECTOR_RESOLUTION = 800


def detector_points(published: pd.DataFrame) -> pd.DataFrame:
    """Published Faster / Mask R-CNN memory per image, as `memory_points` rows under
    revbench's detector names (the table keys them by backbone and head: `hrnet_w18`,
    task `faster_rcnn` is `faster_rcnn_hrnetv2p_w18`), at resolution 800, with the
    revbench task they were measured on (detect, segment)."""
    parts = []
    for head, task in HEAD_TASKS.items():
        points = memory_points(published, task=head)
        points["family"] = [BACKBONES[m][0] for m in points["model"]]
        points["model"] = [model_name(head, m) for m in points["model"]]
        points["resolution"] = DETECTOR_RESOLUTION
        points["task"] = task
        parts.append(points)
    return pd.concat(parts, ignore_index=True)


# Published baselines revbench does not register, and the model and mode that stand in for
# them: the RevViT paper's MViT-B is compared with Rev-MViT-B run in vanilla mode (the same
# blocks under ordinary autograd), the nearest network revbench builds.
STAND_INS = {"mvit_base": ("rev_mvit_base", "vanilla")}


# The RevViT paper's table was measured on a GPU it does not name; its per-image memory
# times max batch comes to 10-14 GB for every row, a 16 GB card, and in fp32 training
# (docs/published-figures.md).
PUBLISHED_CARD_BYTES = (16 * 10**9, 16 * 2**30)


def published_card(budget_bytes: float, precision: str, scenario: str) -> bool:
    """Whether a search is comparable with the published max batches: fp32 training within
    a budget of the paper's card (16 GB to 16 GiB)."""
    on_card = PUBLISHED_CARD_BYTES[0] <= budget_bytes <= PUBLISHED_CARD_BYTES[1]
    return on_card and precision == "fp32" and scenario == "train"


def max_batch_points(published: pd.DataFrame) -> pd.DataFrame:
    """Published largest training batches (the RevViT paper's table, on a GPU it does not
    name; docs/published-figures.md infers 16 GB), one row per model and mode.

    Columns: model, mode, published_model (the row's own model: differs for a stand-in),
    max_batch, resolution, source.
    """
    rows = published[(published["task"] == "imagenet") & (published["metric"] == "max_batch")]
    out = rows[["model", "mode", "resolution", "source"]].copy()
    out["published_model"] = rows["model"].to_numpy()
    out["max_batch"] = rows["value_base"].astype(int).to_numpy()
    for name, (model, mode) in STAND_INS.items():
        out.loc[out["model"] == name, ["model", "mode"]] = [model, mode]
    return out.reset_index(drop=True)
