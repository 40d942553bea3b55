"""`revbench plot`: figures and a Markdown report from stored results.

    revbench plot results/imagenet-train-mem --out reports/ --format png,svg

Reads results files or run directories (`revbench.results.load`), renders every figure of
`revbench.figures` per suite and per facet (scenario, precision, method), and writes
`<out>/report.md` (`revbench.report`) with every figure embedded by relative link. A
figure without data is skipped with its reason in the report. Bad input is a UsageError
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import status
from .errors import UsageError
from .outputs import check_output_dir
from .results import load, load_manifests, per_sample_fit

if TYPE_CHECKING:
    from .report import Rendered

# matplotlib, the registry and the report load only when a plot is made: every `revbench`
# command imports this module to register its subcommand.

FORMATS = ("png", "svg", "pdf")
REQUIRED = ("model", "mode", "resolution", "batch_size", "precision", "scenario", "method")


def register_cli(sub) -> None:
    p = sub.add_parser("plot", help="figures and a Markdown report from results")
    p.add_argument("paths", nargs="+", metavar="PATH", help="results file(s) or run directories")
    p.add_argument("--out", default="reports", help="output directory (default: reports/)")
    p.add_argument("--format", default="png", help=f"comma-separated: {', '.join(FORMATS)}")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from .published import detector_points, load_published, memory_points
    from .report import write_report

    # Everything is read and checked first: bad input writes nothing.
    out = check_output_dir(args.out, "--out")
    formats = parse_formats(args.format)
    df = read_results(args.paths)
    try:
        manifests = load_manifests(*args.paths)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"unreadable manifest.json next to {', '.join(args.paths)}: {e}") from None
    command = shlex.join(["revbench", *getattr(args, "argv", ["plot", *args.paths])])
    table = load_published()
    # Each point carries the task it was measured on: a suite's figures overlay its own.
    published = pd.concat(
        [memory_points(table).assign(task="classify"), detector_points(table)], ignore_index=True
    )
    figures = {}
    for suite, rows in df.groupby("suite", sort=True):
        ok = rows[rows["status"] == status.OK]
        if not ok.empty:
            own = published[published["task"].isin(set(ok["task"]))]
            figures[suite] = render_suite(ok, own, out, _slug(suite), formats)
    report = write_report(df, manifests, figures, published, out, command)
    print(report)
    return 0


def parse_formats(value: str) -> list[str]:
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"format {value!r} is invalid; valid: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def read_results(paths: list[str]) -> pd.DataFrame:
    """All records under `paths`, checked for what every figure needs."""
    try:
        df = load(*paths)
    except (UnicodeDecodeError, AttributeError, TypeError) as e:
        # A binary file, or JSON lines that are not objects.
        raise UsageError(f"unreadable results in {', '.join(paths)}: {e}") from None
    where = ", ".join(paths)
    if df.empty:
        raise UsageError(f"no results found in {where}: the results files are empty")
    for column in REQUIRED:
        bad = df[df[column].isna()]
        if not bad.empty:
            raise UsageError(
                f"results file {bad['source_file'].iloc[0]} has a record without {column!r}"
            )
    measured = df["peak_bytes"].notna() | df["max_batch"].notna()  # max-batch searches too
    if not ((df["status"] == status.OK) & measured).any():
        raise UsageError(
            f"no measured memory (ok records with peak_bytes) in {where}; "
            "plot needs a cuda or estimate run"
        )
    df["suite"] = df["suite"].fillna("").replace("", "unnamed")
    df["variant"] = df["variant"].fillna("")
    df["overrides"] = df["overrides"].map(lambda ov: ov if isinstance(ov, dict) else {})
    return df


# -------------------------------------------------------------------------- figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "unnamed"


def _figure_specs(rows: pd.DataFrame, fit: pd.DataFrame, published: pd.DataFrame, native):
    """(name, title, draw) for every figure of one facet; draw() returns a Figure."""
    from . import figures as F

    train = rows["scenario"].iloc[0] == "train"
    specs = [
        (
            "mem_vs_macs",
            "Memory per sample vs MACs",
            lambda: F.memory_vs_macs(fit, published if train else published.iloc[:0], native),
        ),
        ("mem_vs_batch", "Peak memory vs batch size", lambda: F.memory_vs_batch(rows, fit)),
        ("mem_vs_resolution", "Memory vs resolution", lambda: F.memory_vs_resolution(rows, fit)),
    ]
    keys = F.numeric_override_keys(rows)
    for key in keys:
        specs.append(
            (
                f"mem_vs_{_slug(key)}",
                f"Memory vs {key}",
                lambda key=key: F.memory_vs_override(rows, fit, key),
            )
        )
    if not keys:
        specs.append(
            (
                "mem_vs_depth",
                "Memory vs depth (any numeric override)",
                _no_data("no cells vary a numeric model override such as depth or num_columns"),
            )
        )
    specs += [
        ("mem_by_category", "Memory by category at the peak", lambda: F.memory_by_category(rows)),
        (
            "throughput_vs_memory",
            "Throughput vs memory per sample",
            lambda: F.throughput_vs_memory(rows, fit),
        ),
    ]
    if rows["max_batch"].notna().any():  # a max-batch run: its searches' answers

        def max_batch():
            from .published import load_published, max_batch_points

            return F.max_batch_bars(rows, max_batch_points(load_published()))

        specs.append(("max_batch", "Max batch within each budget", max_batch))
    return specs


def _no_data(reason: str):
    from .figures import NoData

    def draw():
        raise NoData(reason)

    return draw


def _facets(rows: pd.DataFrame, keys: list[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(file suffix, caption, rows) per distinct value of `keys`; no suffix when only one."""
    groups = list(rows.groupby(keys, sort=True))
    out = []
    for values, g in groups:
        values = values if isinstance(values, tuple) else (values,)
        suffix = "" if len(groups) == 1 else "-" + "-".join(_slug(v) for v in values)
        out.append((suffix, ", ".join(map(str, values)), g))
    return out


def render_suite(
    rows: pd.DataFrame, published: pd.DataFrame, out: Path, suite_dir: str, formats: list[str]
) -> list[Rendered]:
    """Every figure of one suite's `ok` rows, saved under out/suite_dir/."""
    import matplotlib

    from . import figures as F
    from .analysis import native_resolutions
    from .report import Rendered

    rendered: list[Rendered] = []
    native = native_resolutions(rows["model"].unique())
    jobs = []
    for suffix, facet, g in _facets(rows, ["scenario", "precision", "method"]):
        fit = per_sample_fit(g)
        if fit.empty:  # keep the columns the figures select on
            fit = pd.DataFrame(columns=[*g.columns, "bytes_per_sample", "fixed_bytes"])
        for name, title, draw in _figure_specs(g, fit, published, native):
            jobs.append((name + suffix, title, facet, draw))
    for suffix, facet, g in _facets(rows, ["scenario", "precision"]):
        jobs.append(
            (
                f"estimated_vs_measured{suffix}",
                "Estimated vs measured peak",
                facet,
                lambda g=g: F.estimated_vs_measured(g),
            )
        )
    for name, title, facet, draw in jobs:
        item = Rendered(name, title, facet)
        with matplotlib.rc_context(F.STYLE):
            try:
                fig = draw()
            except F.NoData as e:
                item.skipped = str(e)
                rendered.append(item)
                continue
            fig.suptitle(f"{title} ({suite_dir}: {facet})", fontsize=12)
            (out / suite_dir).mkdir(parents=True, exist_ok=True)
            for fmt in formats:
                rel = f"{suite_dir}/{name}.{fmt}"
                meta = {"Date": None} if fmt == "svg" else None  # reproducible SVG
                fig.savefig(out / rel, format=fmt, bbox_inches="tight", metadata=meta)
                item.files.append(rel)
        rendered.append(item)
    return rendered
