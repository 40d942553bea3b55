"""Peak memory against what a suite varies: batch size, resolution, a numeric model override;
the estimator's memory by category, throughput against memory, estimated against measured."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from ..analysis import (
    FIT_GROUP,
    NAMED_VARIANTS,
    MemoryKind,
    estimate_pairs,
    method_word,
    model_order,
    natural_key,
    sample_word,
    size_label,
)
from ..cell import model_label, variant_label
from ..labels import Label
from ..measurement import MEMORY_CATEGORIES
from .style import (
    CATEGORY_COLOURS,
    GB,
    MB,
    SERIES_COLOURS,
    SERIES_MARKERS,
    NoData,
    defer_labels,
    family_colour,
    family_marker,
    legend_outside,
    mode_linestyle,
    new_figure,
    per_sample_label,
    plain_log_axis,
    row_label,
)

# ------------------------------------------------------------- memory vs batch size


# A panel with more series than this gets its named variants (the RevBiFPN neck kept) a
# panel of their own beside it: fourteen lines in one panel bunch into a band.
MAX_SERIES = 8


def _mode_panels(
    rows: pd.DataFrame, families: list[str], split_variants: bool = False
) -> list[tuple[str, pd.Index]]:
    """(title, row index) per panel: one per family, and one per mode for a reversible
    family, whose vanilla twin can take 100x the memory and would flatten it on one axis;
    with `split_variants`, a crowded panel's named variants go to a panel of their own."""
    panels = []
    for family in families:
        fam = rows[rows["family"] == family]
        modes = sorted(fam["mode"].unique(), key=lambda m: (m != "reversible", m))
        if fam["kind"].iloc[0] == "reversible" and len(modes) > 1:
            parts = [(f"{family}, {m}", fam[fam["mode"] == m]) for m in modes]
        else:
            parts = [(family, fam)]
        for title, part in parts:
            named = part["variant"].isin(list(NAMED_VARIANTS))
            crowded = part.groupby(["model", "variant"]).ngroups > MAX_SERIES
            if split_variants and crowded and named.any() and not named.all():
                panels.append((title, part.index[~named]))
                for variant, words in NAMED_VARIANTS.items():
                    if (part["variant"] == variant).any():
                        panels.append((f"{title}, {words}", part.index[part["variant"] == variant]))
            else:
                panels.append((title, part.index))
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
        (title, rows.loc[idx])
        for title, idx in _mode_panels(rows, sorted(rows["family"].unique()), split_variants=True)
    ]
    ncols = min(3 if len(panels) > 6 else 2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(5.6 * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fits = {tuple(r[k] for k in FIT_GROUP): r for _, r in fit.iterrows()}
    for ax, (title, fam) in zip(axes, panels):
        show_mode = fam["mode"].nunique() > 1
        show_res = fam.groupby("model")["resolution"].nunique().max() > 1
        order = model_order(fam)
        groups = sorted(
            fam.groupby(FIT_GROUP, dropna=False),
            key=lambda kg: (order[kg[0][0]], natural_key(kg[0])),
        )
        for i, (key, g) in enumerate(groups):
            colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            first = g.iloc[0]
            label = size_label(str(first["size"]), first["variant"], str(first["model"]))
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
                    linestyle=mode_linestyle(first["mode"], show_mode),
                )
        ax.set_title(title, loc="left")
        ax.set_xlabel(f"batch size ({sample_word(fam)}s)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no batch of 1.25
        ax.set_ylabel(f"{kind.name} peak memory\n(GB = 10⁹ bytes)")  # two lines: clear of the title
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        legend_outside(ax, fontsize=8)
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
        label = row_label(first) + (f" b{first['batch_size']}" if column == "peak_bytes" else "")
        ax.plot(
            g["resolution"],
            g[column] / scale,
            color=family_colour(first["family"]),
            marker=family_marker(first["family"]),
            linestyle=mode_linestyle(first["mode"], several_modes),
            label=label,
        )
    ax.set_xlabel("input side (px)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    legend_outside(ax)
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
            linestyle=mode_linestyle(mode, several_modes),
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
    legend_outside(ax)
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
    order = model_order(rows)
    families = sorted(
        rows["family"].unique(),
        key=lambda f: min(order[m] for m in rows.loc[rows["family"] == f, "model"]),
    )
    panels = [(title, rows.loc[idx]) for title, idx in _mode_panels(rows, families)]
    # A grid, two panels a row where there are several; a family's panels (reversible and
    # vanilla) share one scale, so a 20 GB bar never looks like a 3 GB one beside it.
    ncols = 2 if len(panels) > 2 else 1
    nrows = math.ceil(len(panels) / ncols)
    heights = [
        max(len(fam) for _, fam in panels[r * ncols : (r + 1) * ncols]) + 2.5 for r in range(nrows)
    ]
    fig = new_figure(6.2 * ncols, 1.2 + sum(0.24 * h + 0.2 for h in heights))
    axes = fig.subplots(nrows, ncols, squeeze=False, height_ratios=heights).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    family_max = rows.groupby("family")["total"].max() / GB
    drawn = {}
    for ax, (title, fam) in zip(axes, panels):
        fam = fam.sort_values(
            ["model", "mode", "variant", "resolution"],
            key=lambda col: col.map(order) if col.name == "model" else col.map(natural_key),
        )
        several_res = fam.groupby("model")["resolution"].nunique().max() > 1
        labels = []
        for _, r in fam.iterrows():
            text = size_label(str(r["size"]), r["variant"], str(r["model"]))
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
        ax.set_xlim(0, 1.04 * family_max[fam["family"].iloc[0]])
        ax.grid(axis="y", visible=False)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_xlabel("GB", fontsize=8, labelpad=1)
    note = (
        f"allocated memory at the peak, batch {batch} (GB = 10⁹ bytes); "
        "one scale per family, its reversible and vanilla panels alike"
    )
    if not absent.empty:  # say who is left out rather than mixing batch sizes
        names = ", ".join(sorted({row_label(r) for _, r in absent.iterrows()}, key=natural_key))
        # wrapped: a long list must not widen the figure and shrink its panels
        note += "\n" + textwrap.fill(f"not measured at batch {batch}: {names}", 110)
    fig.legend(
        handles=list(drawn.values()),
        loc="outside lower center",
        ncols=min(7, len(drawn)),
        frameon=False,
        title=note,
        title_fontsize=9,
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
    defer_labels(fig, ax, labels)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(0.1)
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    per = sample_word(data)
    ax.set_xlabel(per_sample_label(kind, "MB", per))
    ax.set_ylabel(f"throughput at the largest batch ({per}s/s)")
    legend_outside(ax)
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
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel(f"measured {kind.name} peak, cuda (GB = 10⁹ bytes)")
    ax.set_ylabel(f"estimated {kind.name} peak (GB = 10⁹ bytes)")
    legend_outside(ax)
    return fig
