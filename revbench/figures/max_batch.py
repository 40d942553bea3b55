"""Max-batch bars: the largest batch within each budget, beside the published ones."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis import model_order, natural_key
from ..cell import bytes_label, model_label
from ..published import published_card
from .style import NoData, family_colour, legend_outside, new_figure, plain_log_axis

# Baseline families beside the reversible family that replaces them: a baseline's bar stands
# next to the reversible model of the same rank (ViT-S beside RevViT-S, B0 beside S0).
REVERSIBLE_FOR = {"ViT": "RevViT", "EfficientNet": "RevBiFPN"}


def _bar_order(rows: pd.DataFrame) -> list[tuple]:
    """(model, variant, mode) in bar order: family pairs by rank (the n-th model of a family
    shown, in registry order), baseline first, then the reversible model, its vanilla mode
    before its reversible one."""
    order = model_order(rows)
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
        plain_log_axis(ax.yaxis)
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
    legend_outside(axes[0], handles=handles)
    return fig
