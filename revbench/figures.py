"""The figures of `revbench plot`: each reads stored results only and returns a Figure.

Every figure function takes the `ok` rows of one suite and one facet (scenario, precision,
method) and raises `NoData` with a one-line reason when there is nothing to draw; the
caller notes the reason in the report instead of failing. Figures use the Agg canvas
explicitly (no pyplot state), so rendering works headless and leaves the process's
matplotlib backend alone.

Colours: the Okabe-Ito palette, keyed by family name; families without an entry get a
colour from Paul Tol's muted palette chosen by a stable hash of the name, so a family has
the same colour in every figure. Both palettes are colour-blind safe.
"""

from __future__ import annotations

import math
import textwrap
import zlib

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .analysis import (
    FIT_GROUP,
    NAMED_VARIANTS,
    MemoryKind,
    estimate_pairs,
    mac_column,
    mac_convention,
    method_word,
    model_order,
    natural_key,
    sample_word,
)
from .cell import bytes_label, model_label, variant_label
from .labels import Label, freeze_layout, place_labels
from .measurement import MEMORY_CATEGORIES
from .published import published_card

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
        [OKABE_ITO[c] for c in ("blue", "sky", "green", "vermillion", "yellow", "purple", "black")],
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


def _plain_log_axis(axis) -> None:
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


def _legend_outside(ax, handles=None, **kwargs) -> None:
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


def _label(row: pd.Series) -> str:
    return f"{model_label(row['model'], row['variant'])} {row['mode']}"


def _linestyle(mode: str, several_modes: bool) -> str:
    # Line styles tell modes apart only where one family or model shows several.
    return MODE_LINESTYLES.get(mode, "-") if several_modes else "-"


def _native_only(fit: pd.DataFrame, native: dict[str, int]) -> pd.DataFrame:
    """Per model: its native-resolution rows when there are any, else all its rows."""
    keep = []
    for model, g in fit.groupby("model", sort=False):
        at_native = g[g["resolution"] == native.get(model, -1)]
        keep.append(at_native if not at_native.empty else g)
    return pd.concat(keep) if keep else fit


# ----------------------------------------------------------------- memory vs MACs

# Each reversible family's panel: the baselines its paper compares it with (revbench builds
# no ConvNeXt or MViT, so RevCol stands beside ResNet, Rev-MViT beside ViT).
PANEL_BASELINES = {
    "RevBiFPN": ("EfficientNet", "HRNet", "HRNetV2p"),  # HRNetV2p: the detectors' backbone
    "RevViT": ("ViT",),
    "Rev-MViT": ("ViT",),
    "RevCol": ("ResNet",),
}
# A series with fewer points is drawn as markers only: two sizes are not a curve.
MIN_CURVE_POINTS = 3


def per_sample_label(kind: MemoryKind, unit: str = "GB", per: str = "sample") -> str:
    """`per`: what one sample is (`revbench.analysis.sample_word`): sample or image."""
    scale = {"GB": "10⁹", "MB": "10⁶"}[unit]
    return (
        f"{kind.name} memory per {per} ({unit} = {scale} bytes)\nslope of the peak over batch sizes"
    )


def macs_label(column: str) -> str:
    return f"forward GMACs per image ({mac_convention(column)})"


def _macs_rows(fit: pd.DataFrame, native: dict[str, int], xcol: str) -> pd.DataFrame:
    """Unmodified models and named variants at native resolution, x = `xcol`, with a
    memory per sample: the points of the MACs figures."""
    fit = fit[fit["variant"].fillna("").isin(["", *NAMED_VARIANTS])].copy()
    fit["x"] = fit[xcol].astype(float)
    fit = fit[fit["x"].notna() & (fit["bytes_per_sample"] > 0)]
    return _native_only(fit, native) if not fit.empty else fit


def _series_label(family: str, kind: str, mode: str, variant: str, n: int) -> str:
    if variant:
        text = f"{family} ({NAMED_VARIANTS.get(variant, variant)})"
    elif kind == "reversible" and mode != "reversible":
        text = f"{family} {mode}"
    else:
        text = family
    if n == 1:
        return text + " (one size)"
    return text + (f" ({n} sizes: points, not a curve)" if n < MIN_CURVE_POINTS else "")


def _series_style(kind: str, mode: str, variant: str) -> dict:
    """Line and marker fill per series: the model as released solid and filled; a named
    variant dashed; a reversible model's vanilla or checkpoint twin dotted, half-filled."""
    if variant:
        return {"linestyle": "--", "fillstyle": "full"}
    if kind == "reversible" and mode != "reversible":
        return {"linestyle": ":" if mode == "vanilla" else "-.", "fillstyle": "bottom"}
    return {"linestyle": "-", "fillstyle": "full"}


def _draw_macs_series(ax, points: pd.DataFrame, scale: float, label_main: bool) -> list[Label]:
    """One line per (family, mode, variant); returns the size labels of each family's main
    series (its twins and variants share its MACs, so their sizes read off the same x)."""
    labels = []
    keys = sorted(
        points.groupby(["family", "kind", "mode", "variant"]).groups,
        key=lambda k: (k[1] != "reversible", k[0], k[3] != "", k[2] != "reversible", k[3]),
    )
    for family, kind, mode, variant in keys:
        g = points[
            (points["family"] == family) & (points["mode"] == mode) & (points["variant"] == variant)
        ].sort_values("x")
        colour = family_colour(family)
        style = _series_style(kind, mode, variant)
        twin = style["fillstyle"] == "bottom"
        curve = len(g) >= MIN_CURVE_POINTS
        ax.plot(
            g["x"] / 1e9,
            g["bytes_per_sample"] / scale,
            color=colour,
            marker=family_marker(family),
            markersize=7 if twin else 6,
            linewidth=1.6,
            markerfacecoloralt="white",
            zorder=3.0 if twin else 2.0,  # a twin on its baseline stays visible
            label=_series_label(family, kind, mode, variant, len(g)),
            **{**style, "linestyle": style["linestyle"] if curve else "none"},
        )
        main = not variant and (mode == "reversible" or kind != "reversible")
        if label_main and main:
            labels += [
                Label(r["x"] / 1e9, r["bytes_per_sample"] / scale, str(r["size"]), colour)
                for _, r in g.iterrows()
            ]
    return labels


def _draw_published(
    ax, pub: pd.DataFrame, scale: float, label: bool, at_ours: bool = False
) -> list[Label]:
    """Published points, hollow; `at_ours`: drawn at our MACs (no published count), a
    hollow marker with a dashed grey ring around it."""
    labels = []
    for _, r in pub.iterrows():
        colour = family_colour(r["family"])
        xy = (r["macs"] / 1e9, r["bytes_per_sample"] / scale)
        ax.plot(
            *xy,
            linestyle="none",
            marker=family_marker(r["family"]),
            markersize=8,
            markerfacecolor="white",
            markeredgecolor=colour,
            markeredgewidth=1.4,
            zorder=1.5,
        )
        if at_ours:
            ax.plot(
                *xy,
                linestyle="none",
                marker="o",
                markersize=14,
                fillstyle="none",
                markeredgecolor="0.45",
                markeredgewidth=0.9,
                zorder=1.4,
            )
        if label:
            text = ("~" if r["approximate"] else "") + str(r["size"])
            labels.append(Label(*xy, text, colour, style="italic"))
    return labels


def _split_published(pub: pd.DataFrame, points: pd.DataFrame, xcol: str):
    """(at its paper's MACs, at our MACs, not drawn) of the published points `pub` beside
    our `points`: a point without published MACs is drawn at the MACs (`xcol`) of our own
    measurement of the same model where there is one; the rest are returned to be named
    under the axis, never dropped silently. The second frame's `macs` are ours."""
    with_macs = pub[pub["macs"].notna()]
    without = pub[pub["macs"].isna()]
    ours = points.drop_duplicates("model").set_index("model")["x"] if len(points) else {}
    at_ours = without[without["model"].isin(set(points["model"]))].copy()
    at_ours["macs"] = at_ours["model"].map(ours)
    missing = without[~without["model"].isin(set(points["model"]))]
    return with_macs, at_ours, missing


def _not_drawn_note(missing: pd.DataFrame, scale: float, unit: str) -> str:
    if missing.empty:
        return ""
    items = ", ".join(
        f"{r['family']}-{r['size']} {r['bytes_per_sample'] / scale:.4g} {unit}"
        for _, r in missing.iterrows()
    )
    text = f"published, not drawn (no published MACs, not measured here): {items}"
    return "\n" + textwrap.fill(text, 90)


def _ours_vs_published_legend(ax, handles: list, method: str, *, loc: str, fontsize: int) -> None:
    """The legend of a figure with our points filled and the papers' hollow."""
    ax.legend(
        handles=handles,
        loc=loc,
        frameon=True,
        framealpha=0.9,
        edgecolor="0.8",
        fontsize=fontsize,
        title=f"filled: ours, {method}",
        title_fontsize=fontsize,
    )


def _published_at_ours_handle() -> Line2D:
    return Line2D(
        [],
        [],
        color="0.45",
        marker="o",
        linestyle="none",
        fillstyle="none",
        markersize=11,
        markeredgewidth=0.9,
        label="published memory at our MACs (ringed: the paper gives no MACs)",
    )


def _published_handle(labelled: bool) -> Line2D:
    text = "published, at its paper's MACs" + (" (italic; ~ read off a plot)" if labelled else "")
    return Line2D(
        [],
        [],
        color="grey",
        marker="o",
        linestyle="none",
        markerfacecolor="white",
        markeredgewidth=1.4,
        label=text,
    )


def _log_log(ax) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(0.12)  # room for the size labels at the edges
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)


def headline(
    fit: pd.DataFrame, published: pd.DataFrame, native: dict[str, int], kind: MemoryKind
) -> Figure:
    """The RevBiFPN paper's figure: RevBiFPN against EfficientNet, memory per sample vs MACs
    (both in thop's convention, the paper's), log-log, the published points hollow; a
    RevBiFPN variant such as the neck not recomputed dashed beside the model as released."""
    families = ("RevBiFPN", "EfficientNet")
    if fit.empty:
        raise NoData("no configuration was measured at two batch sizes (memory per sample)")
    own = fit[fit["family"].isin(families)]
    if set(own["family"]) != set(families):
        raise NoData("needs a memory per sample of both RevBiFPN and EfficientNet")
    points = _macs_rows(own, native, "macs_thop")
    if set(points["family"]) != set(families):
        raise NoData("needs thop MAC counts of RevBiFPN and EfficientNet (the run used --no-thop?)")
    # The paper's figure: RevBiFPN as trained (reversible); its vanilla twin is in its panel.
    points = points[(points["kind"] != "reversible") | (points["mode"] == "reversible")]
    fig = new_figure(7.5, 5.4)
    ax = fig.add_subplot()
    labels = _draw_macs_series(ax, points, GB, label_main=True)
    pub, at_ours, missing = _split_published(
        published[published["family"].isin(families)], points, "macs_thop"
    )
    labels += _draw_published(ax, pub, GB, label=True)
    labels += _draw_published(ax, at_ours, GB, label=True, at_ours=True)
    _log_log(ax)
    ax.set_xlabel(macs_label("macs_thop") + _not_drawn_note(missing, GB, "GB"))
    ax.set_ylabel(per_sample_label(kind, "GB", sample_word(points)))
    method = method_word(str(points["method"].iloc[0]))
    handles, _ = ax.get_legend_handles_labels()
    handles.append(_published_handle(labelled=True))
    if not at_ours.empty:
        handles.append(_published_at_ours_handle())
    _ours_vs_published_legend(ax, handles, method, loc="upper left", fontsize=8)
    _defer_labels(fig, ax, labels)
    return fig


def macs_panels(
    fit: pd.DataFrame, published: pd.DataFrame, native: dict[str, int], kind: MemoryKind
) -> Figure:
    """One panel per reversible family: the family as released, its vanilla twin, named
    variants and the baselines its paper compares it with, memory per sample vs MACs.
    Each panel counts MACs in its reversible family's published convention, for every
    series on it."""
    if fit.empty:
        raise NoData("no configuration was measured at two batch sizes (memory per sample)")
    panels = []
    for family, baselines in PANEL_BASELINES.items():
        xcol = mac_column(family)
        own = fit[fit["family"] == family]
        if own.empty:
            continue
        points = _macs_rows(fit[fit["family"].isin((family, *baselines))], native, xcol)
        if points[points["family"] == family].empty and xcol != "macs":
            # A run without thop (--no-thop): the flop counter's MACs, as the axis says.
            xcol = "macs"
            points = _macs_rows(fit[fit["family"].isin((family, *baselines))], native, xcol)
        if not points[points["family"] == family].empty:
            panels.append((family, baselines, xcol, points))
    if not panels:
        raise NoData("no reversible family has a memory per sample and a MAC count")
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(6.0 * ncols, 4.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    method = method_word(str(fit["method"].iloc[0]))
    for ax, (family, baselines, xcol, points) in zip(axes, panels):
        labels = _draw_macs_series(ax, points, MB, label_main=True)
        pub, at_ours, missing = _split_published(
            published[published["family"].isin((family, *baselines))], points, xcol
        )
        _draw_published(ax, pub, MB, label=False)
        _draw_published(ax, at_ours, MB, label=False, at_ours=True)
        _log_log(ax)
        shown = [b for b in baselines if b in set(points["family"])]
        ax.set_title(f"{family} beside {', '.join(shown)}" if shown else family, loc="left")
        ax.set_xlabel(macs_label(xcol) + _not_drawn_note(missing, MB, "MB"))
        ax.set_ylabel(per_sample_label(kind, "MB", sample_word(points)))
        handles, _ = ax.get_legend_handles_labels()
        if not pub.empty:
            handles.append(_published_handle(labelled=False))
        if not at_ours.empty:
            handles.append(_published_at_ours_handle())
        # "best": clear of the points, published ones included
        _ours_vs_published_legend(ax, handles, method, loc="best", fontsize=7)
        _defer_labels(fig, ax, labels)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def _defer_labels(fig: Figure, ax, labels: list[Label]) -> None:
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


# ------------------------------------------------------------- memory vs batch size


def _mode_panels(rows: pd.DataFrame, families: list[str]) -> list[tuple[str, pd.Index]]:
    """(title, row index) per panel: one per family, and one per mode for a reversible
    family, whose vanilla twin can take 100x the memory and would flatten it on one axis."""
    panels = []
    for family in families:
        fam = rows[rows["family"] == family]
        modes = sorted(fam["mode"].unique(), key=lambda m: (m != "reversible", m))
        if fam["kind"].iloc[0] == "reversible" and len(modes) > 1:
            panels += [(f"{family}, {m}", fam.index[fam["mode"] == m]) for m in modes]
        else:
            panels.append((family, fam.index))
    return panels


def memory_vs_batch(rows: pd.DataFrame, fit: pd.DataFrame, kind: MemoryKind) -> Figure:
    """Peak memory vs batch size, one panel per family: every measured batch a point, the
    least-squares line through them (its slope is the memory per sample)."""
    rows = rows[rows["peak_bytes"].notna()]
    if rows["batch_size"].nunique() < 2:
        raise NoData("every cell has the same batch size")
    # A reversible family's modes get a panel each: its vanilla twin can take 100x the
    # memory of the reversible model, which on one linear axis would flatten the latter.
    panels = [
        (title, rows.loc[idx]) for title, idx in _mode_panels(rows, sorted(rows["family"].unique()))
    ]
    ncols = min(3 if len(panels) > 6 else 2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(5.6 * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fits = {tuple(r[k] for k in FIT_GROUP): r for _, r in fit.iterrows()}
    for ax, (title, fam) in zip(axes, panels):
        show_mode = fam["mode"].nunique() > 1
        show_res = fam.groupby("model")["resolution"].nunique().max() > 1
        order = model_order(fam["model"].unique())
        groups = sorted(
            fam.groupby(FIT_GROUP, dropna=False),
            key=lambda kg: (order[kg[0][0]], natural_key(kg[0])),
        )
        for i, (key, g) in enumerate(groups):
            colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            first = g.iloc[0]
            label = model_label(
                str(first["size"]), NAMED_VARIANTS.get(first["variant"], first["variant"])
            )
            label += (f" {first['mode']}" if show_mode else "") + (
                f" {first['resolution']}px" if show_res else ""
            )
            ax.plot(
                g["batch_size"],
                g["peak_bytes"] / GB,
                linestyle="none",
                color=colour,
                marker=SERIES_MARKERS[i % len(SERIES_MARKERS)],
                label=label,
            )
            f = fits.get(tuple(key))
            if f is not None:
                b = np.array([0.0, float(g["batch_size"].max())])
                ax.plot(
                    b,
                    (f["fixed_bytes"] + f["bytes_per_sample"] * b) / GB,
                    color=colour,
                    linewidth=1.2,
                    linestyle=_linestyle(first["mode"], show_mode),
                )
        ax.set_title(title, loc="left")
        ax.set_xlabel(f"batch size ({sample_word(fam)}s)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no batch of 1.25
        ax.set_ylabel(f"{kind.name} peak memory\n(GB = 10⁹ bytes)")  # two lines: clear of the title
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        _legend_outside(ax, fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    method = method_word(str(rows["method"].iloc[0]))
    fig.supxlabel(
        f"points: every batch size {method}; lines: least-squares fit through them, "
        f"drawn from batch 0 (slope = memory per {sample_word(rows)}, intercept = fixed memory)",
        fontsize=8,
    )
    return fig


# ------------------------------------------------------------- memory vs resolution


def memory_vs_resolution(rows: pd.DataFrame, fit: pd.DataFrame, kind: MemoryKind) -> Figure:
    """Memory per sample (or peak at the largest batch) vs input side, one line per model."""
    keys = ["model", "variant", "mode"]
    fit_series = [g for _, g in fit.groupby(keys, sort=True) if g["resolution"].nunique() > 1]
    if fit_series:
        series = [(g, "bytes_per_sample") for g in fit_series]
        ylabel, scale = per_sample_label(kind, "MB", sample_word(fit)), MB
    else:
        series = []
        for _, g in rows[rows["peak_bytes"].notna()].groupby(keys, sort=True):
            g = g[g["batch_size"] == g["batch_size"].max()]
            if g["resolution"].nunique() > 1:
                series.append((g, "peak_bytes"))
        if not series:
            raise NoData("no model was measured at two or more resolutions")
        ylabel, scale = f"{kind.name} peak at the largest batch (GB = 10⁹ bytes)", GB
    fig = new_figure(8.0, 4.8)
    ax = fig.add_subplot()
    several_modes = len({g["mode"].iloc[0] for g, _ in series}) > 1
    for g, column in series:
        g = g.sort_values("resolution")
        first = g.iloc[0]
        label = _label(first) + (f" b{first['batch_size']}" if column == "peak_bytes" else "")
        ax.plot(
            g["resolution"],
            g[column] / scale,
            color=family_colour(first["family"]),
            marker=family_marker(first["family"]),
            linestyle=_linestyle(first["mode"], several_modes),
            label=label,
        )
    ax.set_xlabel("input side (px)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _legend_outside(ax)
    return fig


# -------------------------------------------------- memory vs a numeric override


# Overrides of different models that count the same thing, drawn on one axis: BiFPN's
# `num_layers` and RevBiFPN's `num_ext_layers` are both layers of the neck, and the
# neck-scaling figure's point is one line growing with them while the other stays flat.
SHARED_AXES = {"neck layers": ("num_layers", "num_ext_layers")}


def numeric_override_keys(rows: pd.DataFrame) -> list[str | tuple[str, ...]]:
    """Model overrides (depth, num_columns, ...) that take two or more numeric values; keys
    of one SHARED_AXES entry that all vary come as one tuple, drawn together."""
    values: dict[str, set] = {}
    for ov in rows["overrides"]:
        for k, v in (ov or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values.setdefault(k, set()).add(v)
    keys: list[str | tuple[str, ...]] = sorted(k for k, vs in values.items() if len(vs) > 1)
    for shared in SHARED_AXES.values():
        if all(k in keys for k in shared):
            keys = [k for k in keys if k not in shared] + [shared]
    return keys


def override_axis_name(key: str | tuple[str, ...]) -> str:
    """What the x axis of `memory_vs_override` counts: the key, or its shared axis' name."""
    if isinstance(key, tuple):
        return next(name for name, keys in SHARED_AXES.items() if keys == key)
    return key.replace("_", " ")


def memory_vs_override(
    rows: pd.DataFrame, fit: pd.DataFrame, key: str | tuple[str, ...], kind: MemoryKind
) -> Figure:
    """Memory vs one numeric override (the depth-scaling suite: depth), one line per mode;
    a tuple of keys (SHARED_AXES) puts each model's own key on one x axis."""
    keys = key if isinstance(key, tuple) else (key,)

    def own_key(ov) -> str | None:
        return next((k for k in keys if k in (ov or {})), None)

    rows = rows[rows["overrides"].map(lambda ov: own_key(ov) is not None)].copy()
    rows["x"] = rows["overrides"].map(lambda ov: ov[own_key(ov)])
    # The other overrides stay fixed along a line.
    rows["rest"] = rows["overrides"].map(
        lambda ov: variant_label({k: v for k, v in ov.items() if k != own_key(ov)})
    )
    x_of_variant = dict(zip(rows["variant"], rows["x"]))
    rest_of_variant = dict(zip(rows["variant"], rows["rest"]))
    fit = fit[fit["variant"].isin(x_of_variant)].copy()
    if not fit.empty:
        fit["x"] = fit["variant"].map(x_of_variant)
        fit["rest"] = fit["variant"].map(rest_of_variant)
        data, column, scale = fit, "bytes_per_sample", MB
        ylabel = per_sample_label(kind, "MB", sample_word(fit))
    else:
        data = rows[rows["peak_bytes"].notna()]
        data = data[data["batch_size"] == data["batch_size"].max()]
        column, scale = "peak_bytes", GB
        ylabel = f"{kind.name} peak at batch {int(data['batch_size'].max())} (GB = 10⁹ bytes)"
    fig = new_figure(8.0, 4.8)
    ax = fig.add_subplot()
    groups = sorted(
        data.groupby(["model", "rest", "mode", "resolution"]), key=lambda kg: natural_key(kg[0])
    )
    several_modes = data["mode"].nunique() > 1
    for i, ((model, rest, mode, res), g) in enumerate(groups):
        g = g.sort_values("x")
        label = f"{model_label(model, rest)} {mode}"
        label += f" {res}px" if data["resolution"].nunique() > 1 else ""
        ax.plot(
            g["x"],
            g[column] / scale,
            color=SERIES_COLOURS[i % len(SERIES_COLOURS)],
            marker=SERIES_MARKERS[i % len(SERIES_MARKERS)],
            linestyle=_linestyle(mode, several_modes),
            label=label,
        )
    xs = sorted(data["x"].unique())
    if min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xlabel = override_axis_name(key)
    if len(keys) > 1:  # say which override each model's points vary
        xlabel += " (" + ", ".join(f"{k}" for k in keys) + ")"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _legend_outside(ax)
    return fig


# ------------------------------------------------------------ memory by category


def category_batch(rows: pd.DataFrame) -> int:
    """The batch size the breakdown figure shows: the one measured by the most
    configurations (the largest on a tie), so bars compare at one batch."""
    per_batch = rows.groupby("batch_size")["model"].size()
    configs = rows.drop_duplicates(["model", "variant", "mode", "resolution", "batch_size"])
    counts = configs.groupby("batch_size").size()
    return int(max(counts.index, key=lambda b: (counts[b], per_batch[b], b)))


def memory_by_category(rows: pd.DataFrame) -> Figure:
    """The estimator's breakdown of allocated memory at the peak, stacked, at one batch size,
    one panel per family (each on its own linear scale, so small reversible bars read)."""
    cols = [f"mem_{c}_bytes" for c in MEMORY_CATEGORIES]
    rows = rows[rows[cols].notna().any(axis=1)]
    if rows.empty:
        raise NoData("no per-category breakdown (the estimate method records one)")
    batch = category_batch(rows)
    config = ["model", "variant", "mode", "resolution"]
    everyone = rows.drop_duplicates(config)
    rows = rows[rows["batch_size"] == batch].copy()
    absent = everyone.merge(rows[config], on=config, how="left", indicator=True)
    absent = absent[absent["_merge"] == "left_only"]
    rows["total"] = rows[cols].fillna(0).sum(axis=1)
    order = model_order(rows["model"].unique())
    families = sorted(
        rows["family"].unique(),
        key=lambda f: min(order[m] for m in rows.loc[rows["family"] == f, "model"]),
    )
    panels = [(title, rows.loc[idx]) for title, idx in _mode_panels(rows, families)]
    counts = [len(fam) for _, fam in panels]
    fig = new_figure(7.5, 0.9 + sum(0.24 * n + 0.75 for n in counts))
    axes = fig.subplots(
        len(panels), 1, squeeze=False, height_ratios=[n + 2.5 for n in counts]
    ).ravel()
    drawn = {}
    for ax, (title, fam) in zip(axes, panels):
        fam = fam.sort_values(
            ["model", "mode", "variant", "resolution"],
            key=lambda col: col.map(order) if col.name == "model" else col.map(natural_key),
        )
        several_res = fam.groupby("model")["resolution"].nunique().max() > 1
        labels = []
        for _, r in fam.iterrows():
            text = model_label(str(r["size"]), NAMED_VARIANTS.get(r["variant"], r["variant"]))
            text += f" {r['mode']}" if fam["mode"].nunique() > 1 else ""
            labels.append(text + (f" {r['resolution']}px" if several_res else ""))
        y = np.arange(len(fam))[::-1]  # registry order top to bottom
        left = np.zeros(len(fam))
        for category, col in zip(MEMORY_CATEGORIES, cols):
            width = fam[col].fillna(0).to_numpy(dtype=float) / GB
            if not width.any():
                continue
            drawn[category] = ax.barh(
                y,
                width,
                left=left,
                color=CATEGORY_COLOURS[category],
                height=0.7,
                label=category.replace("_", " "),
            )
            left += width
        ax.set_yticks(y, labels)
        ax.set_ylim(-0.6, len(fam) - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_title(title, loc="left", fontsize=10)
    xlabel = (
        f"allocated memory at the peak, batch {batch} (GB = 10⁹ bytes; each panel its own scale)"
    )
    if not absent.empty:  # say who is left out rather than mixing batch sizes
        names = ", ".join(sorted({_label(r) for _, r in absent.iterrows()}, key=natural_key))
        xlabel += f"\nnot measured at batch {batch}: {names}"
    axes[-1].set_xlabel(xlabel)
    fig.legend(
        handles=list(drawn.values()),
        loc="outside lower center",
        ncols=min(4, len(drawn)),
        frameon=False,
    )
    return fig


# ------------------------------------------------------- throughput vs memory


def throughput_vs_memory(rows: pd.DataFrame, fit: pd.DataFrame, kind: MemoryKind) -> Figure:
    """Throughput at the largest batch vs memory per sample, one point per configuration."""
    timed = rows[rows["throughput_samples_per_s"].notna()]
    if timed.empty:
        raise NoData("no throughput recorded (the estimate method does not time steps)")
    largest = timed.loc[timed.groupby(FIT_GROUP, dropna=False)["batch_size"].idxmax()]
    data = fit.merge(largest[[*FIT_GROUP, "throughput_samples_per_s"]], on=FIT_GROUP)
    data = data[data["bytes_per_sample"] > 0]
    if data.empty:
        raise NoData("no configuration has both a throughput and a memory per sample")
    fig = new_figure(8.0, 5.0)
    ax = fig.add_subplot()
    labels = []
    for (family, mode), g in data.groupby(["family", "mode"], sort=True):
        colour = family_colour(family)
        ax.plot(
            g["bytes_per_sample"] / MB,
            g["throughput_samples_per_s"],
            linestyle="none",
            marker=family_marker(family),
            color=colour,
            label=f"{family} ({mode})",
        )
        labels += [
            Label(r["bytes_per_sample"] / MB, r["throughput_samples_per_s"], str(r["size"]), colour)
            for _, r in g.iterrows()
        ]
    _defer_labels(fig, ax, labels)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(0.1)
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    per = sample_word(data)
    ax.set_xlabel(per_sample_label(kind, "MB", per))
    ax.set_ylabel(f"throughput at the largest batch ({per}s/s)")
    _legend_outside(ax)
    return fig


# ---------------------------------------------------- estimated vs measured peak


def estimated_vs_measured(rows: pd.DataFrame, kind: MemoryKind) -> Figure:
    """Estimated vs measured peak, log-log, with the y = x line and a +-10% band."""
    pairs = estimate_pairs(rows)
    if pairs.empty:
        raise NoData("no cell was measured with both --device estimate and --device cuda")
    fig = new_figure(7.5, 5.5)
    ax = fig.add_subplot()
    lo = min(pairs["peak_bytes_est"].min(), pairs["peak_bytes_cuda"].min()) / GB / 1.3
    hi = max(pairs["peak_bytes_est"].max(), pairs["peak_bytes_cuda"].max()) / GB * 1.3
    line = np.geomspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="within 10%")
    ax.plot(line, line, color="0.4", linewidth=1.0, label="estimate = measured")
    for family, g in pairs.groupby("family", sort=True):
        ax.plot(
            g["peak_bytes_cuda"] / GB,
            g["peak_bytes_est"] / GB,
            linestyle="none",
            marker=family_marker(family),
            color=family_colour(family),
            label=family,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel(f"measured {kind.name} peak, cuda (GB = 10⁹ bytes)")
    ax.set_ylabel(f"estimated {kind.name} peak (GB = 10⁹ bytes)")
    _legend_outside(ax)
    return fig


# ---------------------------------------------------------------- max batch bars

# Baseline families beside the reversible family that replaces them: a baseline's bar stands
# next to the reversible model of the same rank (ViT-S beside RevViT-S, B0 beside S0).
REVERSIBLE_FOR = {"ViT": "RevViT", "EfficientNet": "RevBiFPN"}


def _bar_order(rows: pd.DataFrame) -> list[tuple]:
    """(model, variant, mode) in bar order: family pairs by rank (the n-th model of a family
    shown, in registry order), baseline first, then the reversible model, its vanilla mode
    before its reversible one."""
    order = model_order(rows["model"].unique())
    keys = rows[["model", "variant", "mode", "family", "kind"]].drop_duplicates()
    shown: dict[str, list[str]] = {}  # family -> its models in the rows, in registry order
    for model, family in sorted(set(zip(keys["model"], keys["family"])), key=lambda m: order[m[0]]):
        shown.setdefault(family, []).append(model)
    group_first: dict[str, int] = {}
    for _, r in keys.iterrows():
        group = REVERSIBLE_FOR.get(r["family"], r["family"])
        group_first[group] = min(group_first.get(group, order[r["model"]]), order[r["model"]])

    def sort_key(r) -> tuple:
        group = REVERSIBLE_FOR.get(r["family"], r["family"])
        within = shown[r["family"]].index(r["model"])
        is_rev = r["kind"] == "reversible"
        mode_rank = r["mode"] == "reversible"
        return (group_first[group], within, is_rev, mode_rank, natural_key(r["variant"]))

    ordered = sorted((r for _, r in keys.iterrows()), key=sort_key)
    return [(r["model"], r["variant"], r["mode"]) for r in ordered]


def max_batch_bars(rows: pd.DataFrame, published: pd.DataFrame) -> Figure:
    """Largest batch per model within each budget (one panel per budget, log scale): each
    baseline next to its reversible counterpart, a reversible model's vanilla mode hatched,
    published batches (`revbench.published.max_batch_points`) as black ticks."""
    rows = rows[rows["max_batch"].notna()]
    if rows.empty:
        raise NoData("no max-batch searches (revbench max-batch)")
    bars = _bar_order(rows)
    x_of = {key: i for i, key in enumerate(bars)}
    budgets = sorted(rows["budget_bytes"].astype(float).unique())
    fig = new_figure(max(6.5, 0.42 * len(bars) + 2.5), 2.7 * len(budgets) + 1.0)
    axes = fig.subplots(len(budgets), 1, squeeze=False, sharex=True).ravel()
    pub = {(r["model"], r["mode"]): r for _, r in published.iterrows()}
    shown_published = False
    top = rows["max_batch"].max()
    for ax, budget in zip(axes, budgets):
        panel = rows[rows["budget_bytes"].astype(float) == budget]
        facet = panel.iloc[0]  # the paper's batches only where comparable
        on_card = published_card(budget, facet["precision"], facet["scenario"])
        for _, r in panel.iterrows():
            x = x_of[(r["model"], r["variant"], r["mode"])]
            n = int(r["max_batch"])
            colour = family_colour(r["family"])
            twin = r["kind"] == "reversible" and r["mode"] != "reversible"
            ax.bar(
                x,
                max(n, 1e-9),
                width=0.8,
                color="white" if twin else colour,
                edgecolor=colour,
                hatch="///" if twin else None,
                linewidth=1.0,
            )
            capped = pd.isna(r["first_failed_batch"])
            text = f"{n:,}" + ("+" if capped else "")
            ax.annotate(
                text,
                (x, max(n, 1)),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
            p = pub.get((r["model"], r["mode"]))
            if on_card and p is not None and not r["variant"]:
                ax.hlines(p["max_batch"], x - 0.45, x + 0.45, color="black", linewidth=2.2)
                shown_published = True
        ax.set_yscale("log")
        ax.set_ylim(0.8, top * 8)
        _plain_log_axis(ax.yaxis)
        margin = panel["margin"].dropna()
        less = f" less {margin.iloc[0]:.0%}" if not margin.empty and margin.iloc[0] else ""
        ax.set_title(f"budget {bytes_label(int(budget))}{less}", loc="left")
        ax.set_ylabel("max batch")
    labels, families = [], []
    for model, variant, mode in bars:
        first = rows[(rows["model"] == model) & (rows["mode"] == mode)].iloc[0]
        twin = first["kind"] == "reversible" and mode != "reversible"
        labels.append(model_label(f"{first['family']}-{first['size']}", variant))
        labels[-1] += f" {mode}" if twin else ""
        families.append(first["family"])
    axes[-1].set_xticks(range(len(bars)), labels, rotation=60, ha="right")
    axes[-1].set_xlim(-0.6, len(bars) - 0.4)
    handles = [
        Patch(facecolor=family_colour(f), edgecolor=family_colour(f), label=f)
        for f in dict.fromkeys(families)
    ]
    if (rows["kind"].eq("reversible") & rows["mode"].ne("reversible")).any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="///", label="vanilla mode"))
    if shown_published:
        handles.append(Line2D([], [], color="black", linewidth=2.2, label="published (16 GB GPU)"))
    _legend_outside(axes[0], handles=handles)
    return fig
