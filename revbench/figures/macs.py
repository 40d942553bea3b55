"""Memory per sample against MACs: the headline figure and one panel per family, ours beside
the papers' published points (ours filled, the papers' hollow)."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis import (
    NAMED_VARIANTS,
    MemoryKind,
    mac_column,
    mac_convention,
    method_word,
    sample_word,
    variant_words,
)
from ..labels import Label
from .style import (
    MB,
    NoData,
    defer_labels,
    family_colour,
    family_marker,
    log_log,
    new_figure,
    per_sample_label,
)


def _native_only(fit: pd.DataFrame, native: dict[str, int]) -> pd.DataFrame:
    """Per model: its native-resolution rows when there are any, else all its rows."""
    keep = []
    for model, g in fit.groupby("model", sort=False):
        at_native = g[g["resolution"] == native.get(model, -1)]
        keep.append(at_native if not at_native.empty else g)
    return pd.concat(keep) if keep else fit


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
        text = f"{family}, {variant_words(variant)}"
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
        label = _series_label(family, kind, mode, variant, len(g))
        under = _coincides_with(points, g) if twin else None
        if under:
            # Drawn wide and pale under the baseline it coincides with, so both show.
            label += f" (coincides with {under})"
        ax.plot(
            g["x"] / 1e9,
            g["bytes_per_sample"] / scale,
            color=colour,
            marker=family_marker(family),
            markersize=12 if under else 7 if twin else 6,
            linewidth=6 if under else 1.6,
            alpha=0.45 if under else 1.0,
            markerfacecoloralt="white",
            zorder=1.5 if under else 3.0 if twin else 2.0,  # a twin on its baseline shows
            label=label,
            **{**style, "linestyle": style["linestyle"] if curve else "none"},
        )
        main = not variant and (mode == "reversible" or kind != "reversible")
        if label_main and main:
            labels += [
                Label(r["x"] / 1e9, r["bytes_per_sample"] / scale, str(r["size"]), colour)
                for _, r in g.iterrows()
            ]
        elif label_main and twin and not curve:  # a few points: each says what it is
            labels += [
                Label(r["x"] / 1e9, r["bytes_per_sample"] / scale, f"{r['size']} {mode}", colour)
                for _, r in g.iterrows()
            ]
    return labels


def _coincides_with(points: pd.DataFrame, series: pd.DataFrame) -> str | None:
    """The baseline family whose points `series` sits on, all of them within 2% in MACs and
    5% in memory (RevViT's vanilla twin on ViT), else None."""
    others = points[(points["kind"] != "reversible") & (points["variant"] == "")]
    for family, g in others.groupby("family"):
        mem = g["bytes_per_sample"]
        near = [
            ((g["x"] - r["x"]).abs() <= 0.02 * r["x"])
            & ((mem - r["bytes_per_sample"]).abs() <= 0.05 * r["bytes_per_sample"])
            for _, r in series.iterrows()
        ]
        if near and all(n.any() for n in near):
            return str(family)
    return None


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
    # MB per sample, as the other per-sample figures and the tables: one unit for one
    # quantity throughout a report (peaks are GB).
    fig = new_figure(7.5, 5.4)
    ax = fig.add_subplot()
    labels = _draw_macs_series(ax, points, MB, label_main=True)
    pub, at_ours, missing = _split_published(
        published[published["family"].isin(families)], points, "macs_thop"
    )
    labels += _draw_published(ax, pub, MB, label=True)
    labels += _draw_published(ax, at_ours, MB, label=True, at_ours=True)
    log_log(ax)
    ax.set_xlabel(macs_label("macs_thop") + _not_drawn_note(missing, MB, "GB"))
    ax.set_ylabel(per_sample_label(kind, "MB", sample_word(points)))
    method = method_word(str(points["method"].iloc[0]))
    handles, _ = ax.get_legend_handles_labels()
    handles.append(_published_handle(labelled=True))
    if not at_ours.empty:
        handles.append(_published_at_ours_handle())
    _ours_vs_published_legend(ax, handles, method, loc="upper left", fontsize=8)
    defer_labels(fig, ax, labels)
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
        log_log(ax)
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
        defer_labels(fig, ax, labels)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig
