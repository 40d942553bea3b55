"""What every figure shares: units, the rc style, palettes, markers and line styles, axes
and legend helpers, and `finish`, which titles a figure and places its labels.

Colours: the Okabe-Ito palette, keyed by family name; families without an entry get a
colour from Paul Tol's muted palette chosen by a stable hash of the name, so a family has
the same colour in every figure. Both palettes are colour-blind safe.
"""

from __future__ import annotations

import math
import zlib

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..analysis import MemoryKind
from ..cell import model_label
from ..labels import Label, freeze_layout, place_labels
from ..measurement import MEMORY_CATEGORIES

GB = 1e9  # decimal units, as the papers print them
MB = 1e6

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 150,
}

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
# Paul Tol's muted palette without its two pale colours (too faint for text labels).
TOL_MUTED = ["#332288", "#44AA99", "#117733", "#999933", "#CC6677", "#AA4499"]

FAMILY_COLOURS = {
    "RevBiFPN": OKABE_ITO["vermillion"],
    "EfficientNet": OKABE_ITO["blue"],
    "HRNet": OKABE_ITO["green"],
    "ViT": OKABE_ITO["sky"],
    "RevViT": OKABE_ITO["orange"],
    "RevCol": OKABE_ITO["purple"],
    "ResNet": OKABE_ITO["black"],
    "Rev-MViT": "#882255",  # Tol's wine: Okabe-Ito's yellow is unreadable on white
}
FAMILY_MARKERS = {
    "RevBiFPN": "o",
    "EfficientNet": "s",
    "HRNet": "^",
    "ViT": "D",
    "RevViT": "v",
    "RevCol": "P",
    "ResNet": "X",
    "Rev-MViT": "<",
}
MODE_LINESTYLES = {"reversible": "-", "vanilla": "--", "checkpoint": ":"}
# Neighbouring stacked segments must differ strongly: no orange next to vermillion.
CATEGORY_COLOURS = dict(
    zip(
        MEMORY_CATEGORIES,
        [
            OKABE_ITO["blue"],
            "#AAAAAA",  # buffers: grey, where sky blue beside the parameters' blue was lost
            *(OKABE_ITO[c] for c in ("green", "vermillion", "yellow", "purple", "black")),
            OKABE_ITO["sky"],  # library workspaces: after the batch's black
        ],
    )
)
# Distinct series inside one panel (not keyed by family).
SERIES_COLOURS = [
    OKABE_ITO[c] for c in ("blue", "vermillion", "green", "orange", "purple", "sky", "black")
] + TOL_MUTED
SERIES_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]


class NoData(Exception):
    """A figure with nothing to draw; the message is the reason, for the report."""


def family_colour(family: str) -> str:
    if family in FAMILY_COLOURS:
        return FAMILY_COLOURS[family]
    return TOL_MUTED[zlib.crc32(str(family).encode()) % len(TOL_MUTED)]


def family_marker(family: str) -> str:
    return FAMILY_MARKERS.get(family, "o")


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain_log_axis(axis) -> None:
    """Log axis labelled 0.1, 0.2, 0.5, 1, 2, 5 ... rather than powers of ten, with at
    least three labelled ticks whatever the range.

    Call after the data are drawn: beyond three decades only the powers of ten are
    labelled, or the labels run into each other; within about a decade 1, 2, 3, 5 (or
    evenly spaced round numbers), so no point sits far from a labelled tick.
    """
    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 else 0.0
    if decades > 3:
        subs = (1.0,)
    elif decades > 1.3:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0, 2.0, 3.0, 5.0)
    locator = LogLocator(base=10, subs=subs)
    # Counted here: LogLocator itself falls back to linear ticks with odd steps (2.5).
    inside = 0
    if lo > 0:
        powers = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        inside = sum(lo <= s * 10.0**p <= hi for p in powers for s in subs)
    if inside < 3:  # a narrow range: round numbers evenly spaced
        locator = MaxNLocator(nbins=5, steps=[1, 2, 5, 10])
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def legend_outside(ax, handles=None, **kwargs) -> None:
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
        if not handles:
            return
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
        **kwargs,
    )


def row_label(row: pd.Series) -> str:
    return f"{model_label(row['model'], row['variant'])} {row['mode']}"


def mode_linestyle(mode: str, several_modes: bool) -> str:
    # Line styles tell modes apart only where one family or model shows several.
    return MODE_LINESTYLES.get(mode, "-") if several_modes else "-"


def per_sample_label(kind: MemoryKind, unit: str = "GB", per: str = "sample") -> str:
    """`per`: what one sample is (`revbench.analysis.sample_word`): sample or image."""
    scale = {"GB": "10⁹", "MB": "10⁶"}[unit]
    return (
        f"{kind.name} memory per {per} ({unit} = {scale} bytes)\nslope of the peak over batch sizes"
    )


def log_log(ax) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(0.12)  # room for the size labels at the edges
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)


def defer_labels(fig: Figure, ax, labels: list[Label]) -> None:
    """Labels are placed by `finish`, once the title is in and the layout final."""
    if not hasattr(fig, "pending_labels"):
        fig.pending_labels = []
    fig.pending_labels.append((ax, labels))


def finish(fig: Figure, title: str) -> Figure:
    """Title the figure, settle its layout, then place its point labels so none overlap
    (`revbench.labels`): every figure goes through here before it is saved."""
    fig.suptitle(title, fontsize=11)
    pending = getattr(fig, "pending_labels", [])
    if pending:
        freeze_layout(fig)
        renderer = fig.canvas.get_renderer()
        for ax, labels in pending:
            legend = ax.get_legend()
            avoid = [legend.get_window_extent(renderer)] if legend is not None else []
            place_labels(ax, labels, avoid=avoid)
        fig.pending_labels = []
    return fig
