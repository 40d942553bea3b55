"""Point labels that never overlap: a small deterministic placer for the figures.

Each label is tried at candidate offsets around its point (right, left, above, below, the
diagonals, then the same directions farther out), in display space, and takes the first
where its box stays inside the axes and clears every label already placed, every marker
and line drawn on the axes, and every box to avoid (the legend). A label placed beyond the
first ring gets a thin leader line to its point. Same input, same positions: no random
jitter, no iteration to a tolerance, so a figure renders the same on every machine.

Positions are computed on the figure's final layout: `freeze_layout` draws the figure once
(constrained layout settles the axes) and turns the layout engine off, so nothing moves the
axes after the labels are placed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# Directions, in order of preference: beside the point reads best on a rising curve; the
# farther rings also try the directions in between.
DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
BETWEEN = [(1, 0.5), (-1, 0.5), (1, -0.5), (-1, -0.5), (0.5, 1), (-0.5, 1), (0.5, -1), (-0.5, -1)]
RINGS_PT = (5.0, 11.0, 18.0, 26.0, 36.0, 48.0, 62.0, 78.0, 96.0)  # from the point's edge
LEADER_FROM_RING = 2  # labels from this ring on get a leader line
PAD_PX = 1.5  # clearance between boxes, pixels
LINE_STEP_PX = 3.0  # lines are kept clear at points this far apart


@dataclass
class Label:
    x: float  # data coordinates of the point
    y: float
    text: str
    colour: str = "black"
    style: str = "normal"  # font style: "italic" marks published points


def freeze_layout(fig: Figure) -> None:
    """Draw once so constrained layout settles, then keep the axes where they are."""
    fig.canvas.draw()
    fig.set_layout_engine("none")


def _overlaps(box: Bbox, others: list[Bbox]) -> bool:
    return any(
        box.x0 < o.x1 + PAD_PX
        and o.x0 < box.x1 + PAD_PX
        and box.y0 < o.y1 + PAD_PX
        and o.y0 < box.y1 + PAD_PX
        for o in others
    )


def place_labels(
    ax,
    labels: list[Label],
    *,
    fontsize: float = 8.0,
    marker_pt: float = 8.0,
    avoid: list[Bbox] | None = None,
) -> list:
    """Annotate `ax` with `labels` so that no two label boxes overlap; returns the texts.

    `marker_pt`: the markers' size in points (each point's marker is a box to keep clear).
    `avoid`: further display-space boxes to keep clear, such as a legend inside the axes.
    Call after `freeze_layout` and after the axis limits are final.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    anchors = [tuple(to_px((lab.x, lab.y))) for lab in labels]
    half = marker_pt * px_per_pt / 2
    markers, line_xs, line_ys = _drawn(ax)
    taken = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in markers]
    taken += list(avoid or [])
    out = []
    # Crowded points first: they have the fewest free places.
    order = sorted(
        range(len(labels)),
        key=lambda i: (-_neighbours(anchors, i, 40 * px_per_pt), labels[i].x, labels[i].y),
    )
    for i in order:
        lab, (ax_px, ay_px) = labels[i], anchors[i]
        probe = ax.text(0, 0, lab.text, fontsize=fontsize, fontstyle=lab.style)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        w, h = extent.width, extent.height
        best = None
        for ring, dist in enumerate(RINGS_PT):
            for dx, dy in DIRECTIONS + (BETWEEN if ring >= LEADER_FROM_RING else []):
                box = _box(ax_px, ay_px, dx, dy, half + dist * px_per_pt, w, h)
                inside = (
                    box.x0 >= frame.x0
                    and box.x1 <= frame.x1
                    and box.y0 >= frame.y0
                    and box.y1 <= frame.y1
                )
                if inside and not _overlaps(box, taken) and not _crosses(box, line_xs, line_ys):
                    best = (box, ring)
                    break
            if best:
                break
        if best is None:  # nowhere free: the least crowded spot on the outer ring
            box = min(
                (
                    _box(ax_px, ay_px, dx, dy, half + RINGS_PT[-1] * px_per_pt, w, h)
                    for dx, dy in DIRECTIONS + BETWEEN
                ),
                key=lambda b: sum(_overlap_area(b, o) for o in taken),
            )
            best = (box, len(RINGS_PT))
        box, ring = best
        taken.append(box)
        # Annotate at the box's centre, in points from the data point.
        cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
        arrow = None
        if ring >= LEADER_FROM_RING:
            arrow = dict(arrowstyle="-", color=lab.colour, linewidth=0.6, shrinkA=1, shrinkB=3)
        text = ax.annotate(
            lab.text,
            (lab.x, lab.y),
            xytext=((cx - ax_px) / px_per_pt, (cy - ay_px) / px_per_pt),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=fontsize,
            fontstyle=lab.style,
            color=lab.colour,
            arrowprops=arrow,
            annotation_clip=False,
        )
        out.append(text)
    return out


def _drawn(ax) -> tuple[list[tuple[float, float]], np.ndarray, np.ndarray]:
    """Every marker's centre and points along every drawn line segment, in pixels."""
    markers, xs, ys = [], [np.empty(0)], [np.empty(0)]
    for line in ax.lines:
        xy = line.get_transform().transform(line.get_xydata())
        xy = xy[np.isfinite(xy).all(axis=1)]
        if line.get_marker() not in (None, "", "None", " "):
            markers += [tuple(p) for p in xy]
        if line.get_linestyle() in ("None", "", " ") or len(xy) < 2:
            continue
        for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]):
            n = max(2, int(np.hypot(x1 - x0, y1 - y0) / LINE_STEP_PX) + 1)
            xs.append(np.linspace(x0, x1, n))
            ys.append(np.linspace(y0, y1, n))
    return markers, np.concatenate(xs), np.concatenate(ys)


def _crosses(box: Bbox, xs: np.ndarray, ys: np.ndarray) -> bool:
    inside = (xs > box.x0 - PAD_PX) & (xs < box.x1 + PAD_PX)
    inside &= (ys > box.y0 - PAD_PX) & (ys < box.y1 + PAD_PX)
    return bool(inside.any())


def _box(x: float, y: float, dx: float, dy: float, dist: float, w: float, h: float) -> Bbox:
    """The label box `dist` pixels from (x, y) in direction (dx, dy), its near edge facing
    the point."""
    cx = x + dx * (dist + w / 2)
    cy = y + dy * (dist + h / 2)
    return Bbox.from_extents(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _overlap_area(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def _neighbours(anchors: list[tuple[float, float]], i: int, radius: float) -> int:
    x, y = anchors[i]
    return sum(1 for ax_, ay in anchors if (ax_ - x) ** 2 + (ay - y) ** 2 <= radius**2) - 1


def label_boxes(texts, renderer) -> list[Bbox]:
    """Display-space boxes of drawn labels' text, without their leader lines (an
    Annotation's own extent includes its arrow)."""
    boxes = []
    for t in texts:
        if hasattr(t, "update_positions"):  # an Annotation places its text when drawn
            t.update_positions(renderer)
        boxes.append(Text.get_window_extent(t, renderer))
    return boxes


def overlapping_pairs(boxes: list[Bbox]) -> list[tuple[int, int]]:
    """Index pairs of boxes that overlap (touching edges do not count)."""
    pairs = []
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1:
                pairs.append((i, j))
    return pairs
