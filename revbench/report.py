"""The `revbench plot` report: `report.md` from stored results and rendered figures.

First the papers' headline claims beside ours, then the runs' manifests; per suite the
cells that did not measure, memory per sample against the published figures
(`revbench/data/published.csv`), params and MACs against each model's own published counts,
estimated against measured peaks, and every figure (`revbench.plot` renders them).
Published figures compare only like with like: the unmodified model (or a named variant
such as the RevBiFPN neck not recomputed), at the published resolution, in the published
mode, training, with MACs counted in the published convention. Where ours and a published
figure differ by more than a quarter, the report says so beside the number, with what is
known about why.

The document is a list of blocks (`revbench.markdown`): `report.md` is its Markdown, and
`revbench.report_html` renders the same blocks as one self-contained HTML page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from revbench.models.published import model_figures

from . import status
from .analysis import (
    FIT_GROUP,
    MEMORY_KINDS,
    NAMED_VARIANTS,
    MemoryKind,
    estimate_pairs,
    mac_column,
    mac_convention,
    method_word,
    model_order,
    natural_key,
    per_sample_fit,
    sample_word,
    task_caption,
)
from .cell import bytes_label, cell_label
from .markdown import (
    Block,
    Bullets,
    FigureBlock,
    Heading,
    Para,
    Table,
    compact,
    md_table,
    to_markdown,
)
from .published import load_published, max_batch_points, published_card

# Ours and published disagree when their ratio is off 1 by more than this.
DISAGREE = 0.25


@dataclass
class Rendered:
    """One figure of the report: its files, or the reason it was skipped."""

    name: str
    title: str
    facet: str
    files: list[str] = field(default_factory=list)  # relative to the report
    skipped: str = ""
    suite: str = ""  # the folder its files are in
    svg: str = ""  # the figure as SVG text, for the HTML report


def _num(value, scale: float = 1.0, fmt: str = ".1f") -> str:
    if value is None or pd.isna(value):
        return "-"
    return format(float(value) / scale, fmt)


def _millions(value) -> str:
    text = _num(value, 1e6, ".2f")
    return text if text == "-" else text + "M"


def _ratio(a, b) -> str:
    if a is None or b is None or pd.isna(a) or pd.isna(b) or not b:
        return "-"
    return f"{float(a) / float(b):.2f}"


def _off(ratio: float) -> bool:
    return abs(ratio - 1.0) > DISAGREE


# What is known about a gap between ours and the published figures, per family
# (docs/published-figures.md has the sources).
KNOWN_GAPS = {
    "RevBiFPN": (
        "the official RevBiFPN code run under the same estimator gives the same bytes as "
        "ours (S6: 115 vs 114 MB per sample); the official code with its neck not "
        "recomputed comes within about 10-20% of the published S4-S6, so the published "
        "points were likely measured without the neck checkpoint (docs/published-figures.md)"
    ),
    "EfficientNet": (
        "the RevBiFPN paper does not state the GPU, batch or precision of its figure; B0 and "
        "B4 are read off its plot"
    ),
    "RevViT": (
        "published via a secondary source: PySlowFast in fp32, read with "
        "torch.cuda.max_memory_allocated, GPU not stated (docs/published-figures.md)"
    ),
    "ViT": (
        "published via a secondary source: PySlowFast in fp32, read with "
        "torch.cuda.max_memory_allocated, GPU not stated (docs/published-figures.md)"
    ),
    "Rev-MViT": (
        "published via a secondary source: PySlowFast in fp32, GPU not stated "
        "(docs/published-figures.md)"
    ),
    "RevCol": (
        "the official RevCol backward keeps all four levels' recompute graphs alive "
        "(retain_graph=True): about twice our memory per sample (docs/published-figures.md)"
    ),
}
UNKNOWN_GAP = "no cause is known"


def _published_lookup(published: pd.DataFrame) -> dict:
    return {
        (r["model"], r["mode"], int(r["resolution"])): r
        for _, r in published.iterrows()
        if not pd.isna(r["resolution"])
    }


def _comparable(r: dict) -> bool:
    # Published figures are training memory of the unmodified model or a named variant.
    return r["scenario"] == "train" and (not r["variant"] or r["variant"] in NAMED_VARIANTS)


def memory_table(rows: pd.DataFrame, published: pd.DataFrame, kind: MemoryKind) -> Table:
    """Per configuration: peak at the largest batch, memory per sample, published, ratio,
    and a footnote where they differ by more than a quarter."""
    fit = per_sample_fit(rows)
    fits = {tuple(r[k] for k in FIT_GROUP): r for _, r in fit.iterrows()}
    pub = _published_lookup(published)
    per = sample_word(rows)  # "image" for detection and segmentation
    headers = [
        "model",
        "variant",
        "mode",
        "res",
        "precision",
        "scenario",
        "method",
        "batches",
        f"{kind.name} peak GB (largest batch)",
        f"{kind.name} MB/{per}",
        f"published MB/{per}",
        "ours / published",
        "note",
    ]
    table, off_rows = [], []
    groups = rows[rows["peak_bytes"].notna()].groupby(FIT_GROUP, dropna=False)
    order = model_order(rows)
    for key, g in sorted(groups, key=lambda kg: (order[kg[0][0]], natural_key(kg[0]))):
        r = dict(zip(FIT_GROUP, key))
        largest = g.loc[g["batch_size"].idxmax()]
        f = fits.get(tuple(key))
        ours = f["bytes_per_sample"] if f is not None else None
        p = pub.get((r["model"], r["mode"], r["resolution"]))
        published_bytes, mark = None, ""
        if p is not None and _comparable(r):
            published_bytes, mark = p["bytes_per_sample"], "~" if p["approximate"] else ""
        ratio = _ratio(ours, published_bytes)
        note = ""
        if ratio != "-" and _off(float(ratio)):
            family = str(g["family"].iloc[0])
            off_rows.append((family, r, float(ratio)))
            note = f"differs by more than {DISAGREE:.0%}: [{family}]"
        table.append(
            [
                r["model"],
                r["variant"] or "-",
                r["mode"],
                r["resolution"],
                r["precision"],
                r["scenario"],
                method_word(r["method"]),
                ",".join(str(b) for b in sorted(g["batch_size"].unique())),
                _num(largest["peak_bytes"], 1e9, ".2f"),
                _num(ours, 1e6),
                (mark + _num(published_bytes, 1e6)) if published_bytes else "-",
                ratio,
                note,
            ]
        )
    footnotes = []
    for family in dict.fromkeys(f for f, _, _ in off_rows):
        mine = [(r, x) for f, r, x in off_rows if f == family]
        span = _span([x for _, x in mine])
        footnote = f"[{family}] ours is {span} of the published figure: "
        footnote += KNOWN_GAPS.get(family, UNKNOWN_GAP) + "."
        footnote += _variant_evidence(table, family, rows)
        footnotes.append(footnote)
    caption = (
        f"{kind.name.capitalize()} memory. MB/{per}: least-squares slope of the peak over "
        "the batch sizes (never the peak divided by the batch); ~ marks published values read "
        "off a plot."
    )
    caption += f" {task_caption(rows)}." if task_caption(rows) else ""
    return Table(headers, table, right=tuple(headers[8:12]), caption=caption, footnotes=footnotes)


def _span(ratios: list[float]) -> str:
    lo, hi = min(ratios), max(ratios)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"


def _variant_evidence(table: list[list], family: str, rows: pd.DataFrame) -> str:
    """A named variant's own ratios to the published figures, when the table has them: the
    measurement that explains a gap (the RevBiFPN neck not recomputed)."""
    models = set(rows.loc[rows["family"] == family, "model"])
    parts = []
    for variant, name in NAMED_VARIANTS.items():
        ratios = [
            float(t[11]) for t in table if t[0] in models and t[1] == variant and t[11] != "-"
        ]
        if ratios:
            parts.append(f" Here, with the {name} ({variant}): {_span(ratios)} of published.")
    return "".join(parts)


def counts_table(rows: pd.DataFrame, published: pd.DataFrame | None = None) -> Table:
    """Params and MACs against each model's own published figures (`revbench/data/
    published.csv`, at the resolution they were counted at); the MACs ratio counts in the
    published convention (thop for RevBiFPN). A detector's published MACs (`det_macs`, not
    a model's own row) come from the published memory points (`published`,
    `revbench.published.detector_points`)."""
    point_macs = {}
    if published is not None and len(published):
        known = published[published["macs"].notna()]
        point_macs = dict(zip(zip(known["model"], known["resolution"]), known["macs"]))
    headers = [
        "model",
        "size",
        "variant",
        "res",
        "params",
        "published params",
        "params ratio",
        "GMACs (flop counter)",
        "GMACs (thop)",
        "published GMACs",
        "MACs ratio",
        "ratio counts with",
    ]
    table = []
    groups = rows.groupby(["model", "variant", "resolution"])
    order = model_order(rows)
    for (model, variant, res), g in sorted(
        groups, key=lambda kg: (order[kg[0][0]], natural_key(kg[0]))
    ):
        first = g.iloc[0]
        # Published counts are for the unmodified model at the resolution they were counted
        # at (the model's native one: the table states it).
        pub_params = _published_count(model, variant, res, "params")
        pub_macs = _published_count(model, variant, res, "macs")
        if not variant:
            pub_macs = pub_macs or point_macs.get((model, res))
        column = mac_column(str(first["family"]))
        table.append(
            [
                model,
                first["size"],
                variant or "-",
                res,
                _millions(first["params"]),
                _millions(pub_params),
                _ratio(first["params"], pub_params),
                _num(first["macs"], 1e9, ".2f"),
                _num(first["macs_thop"], 1e9, ".2f"),
                _num(pub_macs, 1e9, ".2f"),
                _ratio(first[column], pub_macs),
                _ratio_convention(column, first[column], pub_macs),
            ]
        )
    return Table(headers, table, right=tuple(headers[4:11]))


def _published_count(model: str, variant: str, resolution: int, metric: str) -> int | None:
    """The model's own published `metric` (params, macs) where `variant` and `resolution`
    are what it was published for, else None."""
    figure = model_figures().get((model, metric))
    if variant or figure is None or figure.resolution != resolution:
        return None
    return round(figure.value_base)


def _ratio_convention(column: str, ours, pub_macs) -> str:
    if not pub_macs:
        return "-"
    if pd.isna(ours):  # a run with --no-thop: no count in the published convention
        return "no thop count in these results (--no-thop)" if column == "macs_thop" else "-"
    return mac_convention(column)


def pairs_table(rows: pd.DataFrame, kind: MemoryKind) -> Table | None:
    pairs = estimate_pairs(rows)
    if pairs.empty:
        return None
    headers = [
        "model",
        "variant",
        "mode",
        "res",
        "batch",
        "precision",
        "scenario",
        f"estimated {kind.name} GB",
        f"measured {kind.name} GB (cuda)",
        "estimated / measured",
    ]
    table = [
        [
            p["model"],
            p["variant"] or "-",
            p["mode"],
            p["resolution"],
            p["batch_size"],
            p["precision"],
            p["scenario"],
            _num(p["peak_bytes_est"], 1e9, ".3f"),
            _num(p["peak_bytes_cuda"], 1e9, ".3f"),
            f"{p['ratio']:.3f}",
        ]
        for _, p in pairs.iterrows()
    ]
    return Table(headers, table, right=tuple(headers[7:]))


def runs_table(manifests: list[dict]) -> Table | None:
    table = []
    for m in manifests:
        env = m.get("environment", {})
        for inv in m.get("invocations", []):
            # Without a GPU, torch's CUDA build number says nothing about the run.
            gpu = env.get("gpu")
            no_gpu = f"no GPU ({inv['method']})" if inv.get("method") else "no GPU"
            table.append(
                [
                    m.get("suite", "-"),
                    method_word(inv.get("method", "-")),
                    gpu or no_gpu,
                    env.get("driver") or "-",
                    (env.get("cuda") or "-") if gpu else "-",
                    env.get("torch", "-"),
                    env.get("timm", "-"),
                    (env.get("git_commit") or "-")[:12],
                    env.get("host", "-"),
                    inv.get("started_at", "-"),
                    f"`{inv.get('command', '-')}`",
                ]
            )
    if not table:
        return None
    headers = "suite|method|GPU|driver|CUDA|torch|timm|commit|host|started|command".split("|")
    return Table(headers, table)


def max_batch_rows(rows: pd.DataFrame) -> Table | None:
    """Max-batch searches: the answer, the peaks around it, the published batch where the
    budget is the published card's, and on cuda the estimator's answer and its error."""
    searches = rows[rows["max_batch"].notna()]
    if searches.empty:
        return None
    published = {
        (r["model"], r["mode"]): r for _, r in max_batch_points(load_published()).iterrows()
    }
    cuda = (searches["method"] == "cuda").any()
    headers = "model|variant|mode|res|precision|method|budget|max batch|peak GB|next GB|"
    headers += "first failed|probes|published (16 GB GPU)|ours / published"
    headers += "|reserved GB|retries|estimate|estimate error at max" if cuda else ""
    order = model_order(searches)
    table = []
    for _, r in sorted(
        searches.iterrows(),
        key=lambda ir: (
            order[ir[1]["model"]],
            natural_key(ir[1]["variant"]),
            ir[1]["mode"],
            ir[1]["precision"],
            ir[1]["budget_bytes"],
        ),
    ):
        p = published.get((r["model"], r["mode"]))
        comparable = published_card(float(r["budget_bytes"]), r["precision"], r["scenario"])
        if p is None or r["variant"] or not comparable:
            p = None
        failed = "-"
        if not pd.isna(r["first_failed_batch"]):
            failed = f"{int(r['first_failed_batch'])} ({r['first_failed_status']})"
        margin = f"-{r['margin']:.0%}" if r["margin"] else ""
        row = [
            r["model"],
            r["variant"] or "-",
            r["mode"],
            r["resolution"],
            r["precision"],
            method_word(r["method"]),
            bytes_label(int(r["budget_bytes"])) + margin,
            f"{int(r['max_batch'])}" + ("+" if failed == "-" else ""),
            _num(r["max_batch_peak_bytes"], 1e9, ".2f"),
            _num(r["next_batch_peak_bytes"], 1e9, ".2f"),
            failed,
            _num(r["probes"], 1, ".0f"),
            "-" if p is None else _published_batch(p, r["model"]),
            "-" if p is None else _ratio(r["max_batch"], p["max_batch"]),
        ]
        if cuda:
            error = _ratio(r["estimated_peak_bytes"], r["max_batch_peak_bytes"])
            row += [
                _num(r["max_batch_reserved_bytes"], 1e9, ".2f"),
                _num(r["max_batch_alloc_retries"], 1, ".0f"),
                _num(r["estimated_max_batch"], 1, ".0f"),
                "-" if error == "-" else f"{float(error) - 1:+.1%}",
            ]
        table.append(row)
    return Table(headers.split("|"), table)


def max_batch_table(rows: pd.DataFrame) -> str | None:
    """`max_batch_rows` as Markdown, every column kept."""
    table = max_batch_rows(rows)
    return None if table is None else "\n".join(md_table(table.headers, table.rows))


def _published_batch(p: pd.Series, model: str) -> str:
    # A stand-in's published model is named: "89 (mvit_base)" on Rev-MViT-B's vanilla row.
    stand_in = p["published_model"] != model
    return f"{p['max_batch']}" + (f" ({p['published_model']})" if stand_in else "")


def failed_cells(rows: pd.DataFrame) -> list[str]:
    """One line per cell that did not measure (oom, timeout, error)."""
    failed = rows[rows["status"] != status.OK]
    lines = []
    for _, r in failed.iterrows():
        message = f": {r['message']}" if r["message"] else ""
        lines.append(f"{cell_label(r)}: {r['status']}{message}")
    return lines


# ------------------------------------------------------------------------- headline


@dataclass(frozen=True)
class Claim:
    """A paper's headline: the baseline uses `ratio` times the reversible model's memory
    per sample. Models as (name, mode, resolution)."""

    what: str
    reversible: tuple[str, str, int]
    baseline: tuple[str, str, int]
    ratio: float
    source: str
    suite: str  # the built-in suite that measures both


CLAIMS = (
    Claim(
        "RevBiFPN-S6 vs EfficientNet-B7, ImageNet training at comparable MACs (38 vs 37 G)",
        ("revbifpn_s6", "reversible", 352),
        ("tf_efficientnet_b7", "vanilla", 600),
        19.8,
        "Chiley et al., MLSys 2023",
        "imagenet-train-mem",
    ),
    Claim(
        "RevViT-L vs ViT-L, ImageNet training",
        ("revvit_large", "reversible", 224),
        ("vit_large_patch16_224", "vanilla", 224),
        15.5,
        "Mangalam et al., CVPR 2022",
        "imagenet-train-mem",
    ),
    Claim(
        "Faster R-CNN, RevBiFPN-S3 vs HRNetV2p-W18 backbone, COCO training",
        ("faster_rcnn_revbifpn_s3", "reversible", 800),
        ("faster_rcnn_hrnetv2p_w18", "vanilla", 800),
        2.4,
        "Chiley et al., MLSys 2023, detection table",
        "coco-det-mem",
    ),
)


def headline_table(df: pd.DataFrame, published: pd.DataFrame, kind: MemoryKind) -> Table:
    """Each paper's headline ratio beside ours, from every method that measured both models
    (cuda first), with what is known where they differ by more than a quarter."""
    ok = df[(df["status"] == status.OK) & (df["scenario"] == "train")]
    fit = per_sample_fit(ok) if not ok.empty else pd.DataFrame(columns=FIT_GROUP)
    pub = _published_lookup(published)
    headers = ["claim", "published", "ours", "method", "ours / published", "what is known"]
    table = []
    for claim in CLAIMS:
        p_rev, p_base = pub.get(claim.reversible), pub.get(claim.baseline)
        published_text = f"{claim.ratio:.1f}x"
        if p_rev is not None and p_base is not None:
            published_text += (
                f" ({_gb(p_base['bytes_per_sample'])} vs {_gb(p_rev['bytes_per_sample'])} GB; "
                f"{claim.source})"
            )
        found = False
        for method in sorted(set(fit.get("method", [])), key=lambda m: (m != "cuda", m)):
            rev = _fitted(fit, claim.reversible, method)
            base = _fitted(fit, claim.baseline, method)
            if rev is None or base is None:
                continue
            found = True
            ours = base["bytes_per_sample"] / rev["bytes_per_sample"]
            versus = ours / claim.ratio
            known = "-"
            if _off(versus):
                known = f"differs by more than {DISAGREE:.0%}: " + _claim_gap(
                    claim, rev, base, p_rev, p_base, fit, method
                )
            table.append(
                [
                    claim.what,
                    published_text,
                    f"{ours:.1f}x ({_gb(base['bytes_per_sample'])} vs "
                    f"{_gb(rev['bytes_per_sample'])} GB, {base['precision']})",
                    f"{method_word(method)} ({kind.name} memory, slope over batches "
                    f"{base['batch_sizes']} and {rev['batch_sizes']})",
                    f"{versus:.2f}",
                    known,
                ]
            )
        if not found:
            table.append(
                [
                    claim.what,
                    published_text,
                    "-",
                    f"not in these results: `revbench run --suite {claim.suite}`",
                    "-",
                    "-",
                ]
            )
    caption = (
        "Ratios: the baseline's memory per sample over the reversible model's, both in "
        "training, each at its published resolution and mode."
    )
    return Table(headers, table, caption=caption)


def _gb(value: float) -> str:
    return f"{float(value) / 1e9:.3g}"


def _fitted(fit: pd.DataFrame, model: tuple[str, str, int], method: str, variant: str = ""):
    if fit.empty:
        return None
    name, mode, res = model
    hit = fit[
        (fit["model"] == name)
        & (fit["mode"] == mode)
        & (fit["resolution"] == res)
        & (fit["variant"] == variant)
        & (fit["method"] == method)
    ]
    if hit.empty:
        return None
    fp32 = hit[hit["precision"] == "fp32"]  # the papers trained in fp32 where they say
    return (fp32 if not fp32.empty else hit).iloc[0]


def _claim_gap(claim: Claim, rev, base, p_rev, p_base, fit, method) -> str:
    """Which side of a claim differs from its paper, and what is known about why."""
    parts = []
    for ours, p in ((rev, p_rev), (base, p_base)):
        if p is None:
            continue
        parts.append(
            f"our {ours['family']}-{ours['size']} is "
            f"{ours['bytes_per_sample'] / p['bytes_per_sample']:.2f} of its published figure"
        )
    text = "; ".join(parts) + ". " if parts else ""
    families = [
        str(ours["family"])
        for ours, p in ((rev, p_rev), (base, p_base))
        if p is not None and _off(ours["bytes_per_sample"] / p["bytes_per_sample"])
    ]
    text += " ".join(
        f"{family}: {KNOWN_GAPS.get(family, UNKNOWN_GAP)}." for family in dict.fromkeys(families)
    )
    for variant, name in NAMED_VARIANTS.items():  # the measurement that explains the gap
        alt = _fitted(fit, claim.reversible, method, variant)
        if alt is None:
            continue
        text += (
            f" Here, with the {name}: {alt['family']}-{alt['size']} takes "
            f"{_gb(alt['bytes_per_sample'])} GB per sample"
        )
        if p_rev is not None:
            text += f", {alt['bytes_per_sample'] / p_rev['bytes_per_sample']:.2f} of published"
        text += f", and the ratio is {base['bytes_per_sample'] / alt['bytes_per_sample']:.1f}x."
    return text.strip()


# --------------------------------------------------------------------------- report


def build_report(
    df: pd.DataFrame,
    manifests: list[dict],
    figures: dict[str, list[Rendered]],
    published: pd.DataFrame,
    command: str,
    kind: MemoryKind | None = None,
) -> list[Block]:
    """The report's blocks; `df` carries `kind`'s figure in `peak_bytes`
    (`revbench.analysis.with_memory_kind`)."""
    kind = kind or MEMORY_KINDS["allocated"]
    blocks: list[Block] = [
        Heading(1, "revbench report"),
        Para(
            f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `{command}`."
        ),
        Para(
            f"Memory kind: **{kind.name}**, {kind.what} (`revbench plot --memory`: allocated, "
            "reserved, process). Units: GB = 10^9 bytes, MB = 10^6 bytes. Memory per sample "
            "is the least-squares slope of the peak over the batch sizes (two or more), never "
            "a peak divided by its batch. *Estimated*: the GPU-free estimator "
            "(`--device estimate`); *measured*: a real run (`cuda`). Published figures: "
            "`revbench/data/published.csv` (~ marks values read off a plot); the RevViT "
            "paper's memory is allocated memory (max_memory_allocated), the RevBiFPN paper "
            "does not say which kind it plots. Published params and MACs: the model registry."
        ),
        Heading(2, "Headline: published claims beside ours"),
        compact(
            headline_table(df, published, kind),
            keep=("claim", "published", "ours", "method", "ours / published"),
        ),
        Heading(2, "Runs"),
    ]
    runs = runs_table(manifests)
    blocks.append(
        compact(runs, keep=("suite", "command"))
        if runs
        else Para("No manifest.json next to the results files.")
    )
    for suite, rows in df.groupby("suite", sort=True):
        ok = rows[rows["status"] == status.OK]
        counts = rows["status"].value_counts()
        blocks += [
            Heading(2, f"Suite `{suite}`"),
            Para("Cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."),
        ]
        failed = failed_cells(rows)
        if failed:
            blocks += [Para("Not measured:"), Bullets(failed)]
        if ok.empty:
            blocks.append(Para("No `ok` cells: no tables or figures."))
            continue
        blocks += [
            Heading(3, f"Memory per {sample_word(ok)} vs published"),
            compact(memory_table(ok, published, kind), keep=("model",)),
            Heading(3, "Params and MACs vs published"),
            compact(counts_table(ok, published), keep=("model",)),
        ]
        pairs = pairs_table(ok, kind)
        if pairs:
            blocks += [Heading(3, "Estimated vs measured peak"), compact(pairs, keep=("model",))]
        searches = max_batch_rows(ok)
        if searches:
            blocks += [Heading(3, "Max batch within each budget"), searches]
        blocks.append(Heading(3, "Figures"))
        blocks += [FigureBlock(item) for item in figures.get(suite, [])]
    return blocks


def write_report(
    df: pd.DataFrame,
    manifests: list[dict],
    figures: dict[str, list[Rendered]],
    published: pd.DataFrame,
    out: Path,
    command: str,
    kind: MemoryKind | None = None,
) -> list[Block]:
    """Write out/report.md (see `build_report`); returns its blocks, for the HTML report."""
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_report(df, manifests, figures, published, command, kind)
    (out / "report.md").write_text(to_markdown(blocks))
    return blocks
