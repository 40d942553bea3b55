"""The `revbench plot` report: `report.md` from stored results and rendered figures.

The runs' manifests; per suite the cells that did not measure, memory per sample against
the published figures (`revbench/data/published.csv`), params and MACs against the
registry's published counts, estimated against measured peaks, and every figure
(`revbench.plot` renders them). Published figures compare only like with like: the
unmodified model, at the published resolution, in the published mode, training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from revbench.models import UnknownModelError, get_info

from . import status
from .analysis import estimate_pairs, model_order, natural_key
from .cell import cell_label
from .markdown import md_table
from .results import FIT_GROUP, per_sample_fit

EMBEDDABLE = ("png", "svg")  # Markdown viewers show these inline; pdf is linked


@dataclass
class Rendered:
    """One figure of the report: its files, or the reason it was skipped."""

    name: str
    title: str
    facet: str
    files: list[str] = field(default_factory=list)  # relative to the report
    skipped: str = ""


def _md_table(headers: list[str], rows: list[list]) -> str:
    return "\n".join(md_table(headers, rows))


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


def memory_table(rows: pd.DataFrame, published: pd.DataFrame) -> str:
    """Per configuration: peak at the largest batch, memory per sample, published, ratio."""
    fit = per_sample_fit(rows)
    fits = {tuple(r[k] for k in FIT_GROUP): r for _, r in fit.iterrows()}
    pub = {
        (r["model"], r["mode"], int(r["resolution"])): r
        for _, r in published.iterrows()
        if not pd.isna(r["resolution"])
    }
    headers = (
        "model|variant|mode|res|precision|scenario|"
        "method|batches|peak GB (largest batch)|MB/sample|published MB/sample|measured / published"
    ).split("|")
    table = []
    groups = rows[rows["peak_bytes"].notna()].groupby(FIT_GROUP, dropna=False)
    order = model_order(rows["model"].unique())
    for key, g in sorted(groups, key=lambda kg: (order[kg[0][0]], natural_key(kg[0]))):
        r = dict(zip(FIT_GROUP, key))
        largest = g.loc[g["batch_size"].idxmax()]
        f = fits.get(tuple(key))
        measured = f["bytes_per_sample"] if f is not None else None
        p = pub.get((r["model"], r["mode"], r["resolution"]))
        # Published figures are training memory of the unmodified model.
        if p is None or r["variant"] or r["scenario"] != "train":
            published_bytes, mark = None, ""
        else:
            published_bytes, mark = p["bytes_per_sample"], "~" if p["approximate"] else ""
        table.append(
            [
                r["model"],
                r["variant"] or "-",
                r["mode"],
                r["resolution"],
                r["precision"],
                r["scenario"],
                r["method"],
                ",".join(str(b) for b in sorted(g["batch_size"].unique())),
                _num(largest["peak_bytes"], 1e9, ".2f"),
                _num(measured, 1e6),
                (mark + _num(published_bytes, 1e6)) if published_bytes else "-",
                _ratio(measured, published_bytes),
            ]
        )
    return _md_table(headers, table)


def counts_table(rows: pd.DataFrame) -> str:
    """Params and MACs against the registry's published figures (native resolution only)."""
    headers = (
        "model|size|variant|res|params|"
        "published params|params ratio|GMACs|GMACs (thop)|published GMACs|MACs ratio"
    ).split("|")
    table = []
    groups = rows.groupby(["model", "variant", "resolution"])
    order = model_order(rows["model"].unique())
    for (model, variant, res), g in sorted(
        groups, key=lambda kg: (order[kg[0][0]], natural_key(kg[0]))
    ):
        first = g.iloc[0]
        try:
            info = get_info(model)
        except UnknownModelError:
            info = None
        # Published counts are for the unmodified model at its native resolution.
        comparable = info is not None and not variant and res == info.native_resolution
        pub_params = info.published_params if comparable else None
        pub_macs = info.published_macs if comparable else None
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
                _ratio(first["macs"], pub_macs),
            ]
        )
    return _md_table(headers, table)


def pairs_table(rows: pd.DataFrame) -> str | None:
    pairs = estimate_pairs(rows)
    if pairs.empty:
        return None
    headers = (
        "model|variant|mode|res|batch|"
        "precision|scenario|estimated GB|measured GB|estimated / measured"
    ).split("|")
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
    return _md_table(headers, table)


def runs_section(manifests: list[dict]) -> str:
    if not manifests:
        return "No manifest.json next to the results files.\n"
    table = []
    for m in manifests:
        env = m.get("environment", {})
        for inv in m.get("invocations", []):
            table.append(
                [
                    m.get("suite", "-"),
                    inv.get("method", "-"),
                    env.get("gpu") or "none",
                    env.get("driver") or "-",
                    env.get("cuda") or "-",
                    env.get("torch", "-"),
                    env.get("timm", "-"),
                    (env.get("git_commit") or "-")[:12],
                    env.get("host", "-"),
                    inv.get("started_at", "-"),
                    f"`{inv.get('command', '-')}`",
                ]
            )
    headers = "suite|method|GPU|driver|CUDA|torch|timm|commit|host|started|command".split("|")
    return _md_table(headers, table) + "\n"


def max_batch_table(rows: pd.DataFrame) -> str | None:
    """Max-batch searches: the answer, the peaks around it, the published batch where the
    budget is the published card's, and on cuda the estimator's answer and its error."""
    from .cell import bytes_label
    from .published import load_published, max_batch_points, published_card

    searches = rows[rows["max_batch"].notna()]
    if searches.empty:
        return None
    published = {
        (r["model"], r["mode"]): r for _, r in max_batch_points(load_published()).iterrows()
    }
    cuda = (searches["method"] == "cuda").any()
    headers = "model|variant|mode|res|precision|method|budget|max batch|peak GB|next GB|"
    headers += "first failed|probes|published (16 GB GPU)|measured / published"
    headers += "|reserved GB|retries|estimate|estimate error at max" if cuda else ""
    order = model_order(searches["model"].unique())
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
            r["method"],
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
    return _md_table(headers.split("|"), table)


def _published_batch(p: pd.Series, model: str) -> str:
    # A stand-in's published model is named: "89 (mvit_base)" on Rev-MViT-B's vanilla row.
    stand_in = p["published_model"] != model
    return f"{p['max_batch']}" + (f" ({p['published_model']})" if stand_in else "")


def failed_cells(rows: pd.DataFrame) -> list[str]:
    """Markdown lines listing the cells that did not measure (oom, timeout, error)."""
    failed = rows[rows["status"] != status.OK]
    if failed.empty:
        return []
    lines = ["Not measured:", ""]
    for _, r in failed.iterrows():
        message = f": {r['message']}" if r["message"] else ""
        lines.append(f"- {cell_label(r)}: {r['status']}{message}")
    return [*lines, ""]


# The RevBiFPN paper's detection headline: (reversible model, baseline, published ratio).
DETECTION_HEADLINE = ("faster_rcnn_revbifpn_s3", "faster_rcnn_hrnetv2p_w18")


def detection_headline(rows: pd.DataFrame, published: pd.DataFrame) -> list[str]:
    """The published headline beside ours, where a suite measured both detectors."""
    fit = per_sample_fit(rows[rows["scenario"] == "train"])
    ours, pub = {}, {}
    for model in DETECTION_HEADLINE:
        f = fit[(fit["model"] == model) & (fit["variant"] == "") & (fit["resolution"] == 800)]
        p = published[published["model"] == model]
        if f.empty or p.empty:
            return []
        # the reversible model in its published mode (reversible), the baseline in vanilla
        f = f[f["mode"] == p["mode"].iloc[0]]
        if f.empty:
            return []
        ours[model], pub[model] = f["bytes_per_sample"].iloc[0], p["bytes_per_sample"].iloc[0]
    rev, base = DETECTION_HEADLINE
    return [
        f"Headline: Faster R-CNN with RevBiFPN-S3 uses {pub[base] / pub[rev]:.1f}x less "
        f"memory per image than with HRNetV2p-W18 in the paper ({pub[rev] / 1e9:.2f} vs "
        f"{pub[base] / 1e9:.2f} GB); here {ours[base] / ours[rev]:.1f}x "
        f"({ours[rev] / 1e9:.2f} vs {ours[base] / 1e9:.2f} GB, {rows['method'].iloc[0]}).",
        "",
    ]


def write_report(
    df: pd.DataFrame,
    manifests: list[dict],
    figures: dict[str, list[Rendered]],
    published: pd.DataFrame,
    out: Path,
    command: str,
) -> Path:
    """Write out/report.md from the results, their manifests and each suite's rendered
    figures (`published`: `revbench.published.memory_points`); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# revbench report",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `{command}`.",
        "",
        "Units: GB = 10^9 bytes, MB = 10^6 bytes. Memory per sample is the least-squares "
        "slope of peak memory over batch size (two or more batch sizes). Published figures: "
        "`revbench/data/published.csv` (~ marks values read off a plot); published params "
        "and MACs: the model registry.",
        "",
        "## Runs",
        "",
        runs_section(manifests),
    ]
    for suite, rows in df.groupby("suite", sort=True):
        ok = rows[rows["status"] == status.OK]
        counts = rows["status"].value_counts()
        lines += [
            f"## Suite `{suite}`",
            "",
            "Cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
            "",
        ]
        lines += failed_cells(rows)
        if ok.empty:
            lines += ["No `ok` cells: no tables or figures.", ""]
            continue
        lines += [
            "### Memory per sample vs published",
            "",
            memory_table(ok, published),
            "",
            *detection_headline(ok, published),
            "### Params and MACs vs published",
            "",
            counts_table(ok),
            "",
        ]
        pairs = pairs_table(ok)
        if pairs:
            lines += ["### Estimated vs measured peak", "", pairs, ""]
        searches = max_batch_table(ok)
        if searches:
            lines += ["### Max batch within each budget", "", searches, ""]
        lines += ["### Figures", ""]
        for item in figures.get(suite, []):
            heading = f"#### {item.title} ({item.facet})"
            if item.skipped:
                lines += [heading, "", f"*Skipped: {item.skipped}.*", ""]
                continue
            embed = next((f for f in item.files if f.rsplit(".", 1)[1] in EMBEDDABLE), None)
            lines += [heading, ""]
            if embed:
                lines += [f"![{item.title}]({embed})", ""]
            lines += [
                "Files: " + ", ".join(f"[{f.rsplit('.', 1)[1]}]({f})" for f in item.files),
                "",
            ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
