"""`revbench plot`: figures and a Markdown report from stored results.

    revbench plot results/imagenet-train-mem --out reports/ --format png,svg --memory reserved

Reads results files or run directories (`revbench.loading.load`), renders every figure of
`revbench.figures` per suite and per facet (scenario, precision, method) for one memory
kind (`--memory`: allocated, reserved or process), and writes `<out>/report.md`
(`revbench.report`) with every figure embedded by relative link, and `<out>/report.html`
(`revbench.report_html`), the same report in one self-contained file. A figure without
data is skipped with its reason, in the report and in the list printed at the end. Bad
input is a UsageError before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import status
from .analysis import per_sample_fit
from .errors import UsageError
from .loading import load, load_manifests, result_files
from .outputs import check_output_dir

if TYPE_CHECKING:
    from .report import Rendered

# Start-up: matplotlib, the registry and the report load only when a plot is made (in the
# functions below, each import marked "start-up"), so `revbench plot --help` answers at once
# and building the full parser (every command's options) stays light.

FORMATS = ("png", "svg", "pdf")
REQUIRED = ("model", "mode", "resolution", "batch_size", "precision", "scenario", "method")


def register_cli(sub) -> None:
    p = sub.add_parser("plot", help="figures and a Markdown report from results")
    p.add_argument("paths", nargs="+", metavar="PATH", help="results file(s) or run directories")
    p.add_argument(
        "--merge",
        action="store_true",
        help="pool every run of a suite found under PATH (default: each suite's latest run)",
    )
    p.add_argument("--out", default="reports", help="output directory (default: reports/)")
    p.add_argument("--format", default="png", help=f"comma-separated: {', '.join(FORMATS)}")
    p.add_argument(
        "--memory",
        default="allocated",
        help="memory kind of every figure and table: allocated (peak_bytes, the default), "
        "reserved (peak_reserved_bytes) or process (process_peak_bytes, NVML; cuda only)",
    )
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    # start-up: imported when a plot is made (see the module's note)
    from .analysis import with_memory_kind
    from .published import detector_points, load_published, memory_points
    from .report import write_report
    from .report_html import write_html

    # Everything is read and checked first: bad input writes nothing.
    out = check_output_dir(args.out, "--out")
    formats = parse_formats(args.format)
    kind = parse_memory_kind(args.memory)
    files = choose_runs(args.paths, merge=args.merge)
    df = read_results([str(f) for f in files], where=args.paths)
    try:
        manifests = load_manifests(*files)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"unreadable manifest.json next to {', '.join(args.paths)}: {e}") from None
    command = shlex.join(["revbench", *getattr(args, "argv", ["plot", *args.paths])])
    table = load_published()
    # Each point carries the task it was measured on: a suite's figures overlay its own.
    published = pd.concat(
        [memory_points(table).assign(task="classify"), detector_points(table)], ignore_index=True
    )
    df = with_memory_kind(df, kind)
    figures = {}
    with staged(out) as stage:
        for suite, rows in df.groupby("suite", sort=True):
            ok = rows[rows["status"] == status.OK]
            if not ok.empty:
                own = published[published["task"].isin(set(ok["task"]))]
                figures[suite] = render_suite(ok, own, stage, _slug(suite), formats, kind)
        document = write_report(df, manifests, figures, published, stage, command, kind)
        html = write_html(document, stage)
    print_rendered(figures)
    print(f"report: {out / 'report.md'}")
    print(f"report: {out / html.name}")
    return 0


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder beside `out` to write the report into, moved into `out` entry by entry
    (each a rename) only once everything is written: a failure (a full disk) leaves `out`
    as it was and no partial folder behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def print_rendered(figures: dict[str, list[Rendered]]) -> None:
    """The figures written, then those skipped with the reason, one line each."""
    items = [item for suite in sorted(figures) for item in figures[suite]]
    written = [item for item in items if not item.skipped]
    skipped = [item for item in items if item.skipped]
    print(f"figures written: {len(written)}")
    for item in written:
        print(f"  {', '.join(item.files) or item.name}")
    print(f"figures skipped: {len(skipped)}")
    for item in skipped:
        print(f"  {item.suite}/{item.name} ({item.facet}): {item.skipped}")


def parse_memory_kind(value: str):
    # start-up: imported when a plot is made (see the module's note)
    from .analysis import MEMORY_KINDS

    if value not in MEMORY_KINDS:
        raise UsageError(f"memory kind {value!r} is invalid; valid: {', '.join(MEMORY_KINDS)}")
    return MEMORY_KINDS[value]


def parse_formats(value: str) -> list[str]:
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"format {value!r} is invalid; valid: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


REFERENCE_DIR = "reference"  # results/reference/: the checkout's baselines, not the user's runs


def choose_runs(paths: list[str], *, merge: bool = False) -> list[Path]:
    """The results files to plot under `paths`: each suite's latest run unless `merge`
    (then every run, said), and no reference baseline found by searching a directory
    (one named on the command line is plotted). Notices go to stderr, one line each."""
    files: list[Path] = []
    skipped: list[Path] = []
    for given in map(Path, paths):
        for found in result_files([given]):
            inside = found.relative_to(given).parts[:-1] if given.is_dir() else ()
            (skipped if REFERENCE_DIR in inside else files).append(found)
    if skipped and not files:  # nothing but baselines: those are what was asked for
        files, skipped = skipped, []
    if skipped:
        where = sorted({str(p.parent) for p in skipped})
        print(
            f"note: left out {len(skipped)} reference baseline(s) ({', '.join(where)}): "
            "name such a directory to plot it",
            file=sys.stderr,
        )
    by_suite: dict[str, list[Path]] = {}
    for f in files:
        by_suite.setdefault(_suite_of(f), []).append(f)
    chosen: list[Path] = []
    for suite, runs in sorted(by_suite.items()):
        runs = sorted(set(runs), key=lambda f: (f.parent.name, str(f)))
        if len(runs) > 1 and merge:
            print(f"merged {len(runs)} runs of {suite}: " + ", ".join(str(r.parent) for r in runs),
                  file=sys.stderr)  # fmt: skip
        elif len(runs) > 1:
            print(
                f"note: {suite}: plotting its latest run, {runs[-1].parent} ({len(runs) - 1} "
                "earlier run(s) left out; --merge pools them)",
                file=sys.stderr,
            )
            runs = runs[-1:]
        chosen.extend(runs)
    return chosen


def _suite_of(results: Path) -> str:
    """The suite a results file belongs to: its manifest's, else its first record's."""
    manifest = results.parent / "manifest.json"
    try:
        suite = json.loads(manifest.read_text()).get("suite")
    except (OSError, ValueError, AttributeError):
        suite = None
    if suite:
        return str(suite)
    try:
        with results.open() as f:
            return str(json.loads(f.readline()).get("suite") or "unnamed")
    except (OSError, ValueError, AttributeError):
        return "unnamed"


def read_results(paths: list[str], where: list[str] | None = None) -> pd.DataFrame:
    """All records under `paths`, checked for what every figure needs (`where`: how to
    name them in errors, the paths the user gave)."""
    try:
        df = load(*paths)
    except (UnicodeDecodeError, AttributeError, TypeError) as e:
        # A binary file, or JSON lines that are not objects.
        raise UsageError(f"unreadable results in {', '.join(where or paths)}: {e}") from None
    where = ", ".join(where or paths)
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


def _figure_specs(rows: pd.DataFrame, fit: pd.DataFrame, published: pd.DataFrame, native, kind):
    """(name, title, draw) for every figure of one facet; draw() returns a Figure."""
    # start-up: imported when a plot is made (see the module's note)
    from .analysis import sample_word
    from .figures.macs import headline, macs_panels
    from .figures.max_batch import max_batch_bars
    from .figures.memory import (
        memory_by_category,
        memory_vs_batch,
        memory_vs_override,
        memory_vs_resolution,
        numeric_override_keys,
        override_axis_name,
        throughput_vs_memory,
    )

    per = sample_word(rows)  # "image" for detection and segmentation
    train = rows["scenario"].iloc[0] == "train"
    pub = published if train else published.iloc[:0]
    specs = [
        (
            "headline",
            "RevBiFPN vs EfficientNet, the RevBiFPN paper's figure",
            lambda: headline(fit, pub, native, kind),
        ),
        (
            "mem_vs_macs",
            f"Memory per {per} vs MACs by reversible family",
            lambda: macs_panels(fit, pub, native, kind),
        ),
        ("mem_vs_batch", "Peak memory vs batch size", lambda: memory_vs_batch(rows, fit, kind)),
        (
            "mem_vs_resolution",
            "Memory vs resolution",
            lambda: memory_vs_resolution(rows, fit, kind),
        ),
    ]
    keys = numeric_override_keys(rows)
    for key in keys:
        specs.append(
            (
                f"mem_vs_{_slug(override_axis_name(key))}",
                f"Memory vs {override_axis_name(key)}",
                lambda key=key: memory_vs_override(rows, fit, key, kind),
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
        (
            "mem_by_category",
            "Allocated memory by category at the peak",
            lambda: memory_by_category(rows),
        ),
        (
            "throughput_vs_memory",
            f"Throughput vs memory per {per}",
            lambda: throughput_vs_memory(rows, fit, kind),
        ),
    ]
    if rows["max_batch"].notna().any():  # a max-batch run: its searches' answers

        def max_batch():
            # start-up: imported when a plot is made (see the module's note)
            from .published import load_published, max_batch_points

            return max_batch_bars(rows, max_batch_points(load_published()))

        specs.append(("max_batch", "Max batch within each budget", max_batch))
    return specs


def _no_data(reason: str):
    # start-up: imported when a plot is made (see the module's note)
    from .figures.style import NoData

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
    rows: pd.DataFrame,
    published: pd.DataFrame,
    out: Path,
    suite_dir: str,
    formats: list[str],
    kind=None,
) -> list[Rendered]:
    """Every figure of one suite's `ok` rows, saved under out/suite_dir/; each figure's SVG
    is also kept in memory for the HTML report. `rows` carry `kind`'s figure in
    `peak_bytes` (`revbench.analysis.with_memory_kind`)."""
    # start-up: imported when a plot is made (see the module's note)
    import io

    import matplotlib

    from .analysis import MEMORY_KINDS, native_resolutions, task_caption
    from .figures.memory import estimated_vs_measured
    from .figures.style import STYLE, NoData, finish
    from .report import Rendered

    kind = kind or MEMORY_KINDS["allocated"]
    rendered: list[Rendered] = []
    native = native_resolutions(rows)
    jobs = []
    # Each task its own figures: a detector's memory per image never shares axes, or
    # published points, with a classifier's per sample.
    tasks = ["task"] if rows["task"].nunique() > 1 else []
    for suffix, facet, g in _facets(rows, ["scenario", "precision", "method", *tasks]):
        fit = per_sample_fit(g)
        if fit.empty:  # keep the columns the figures select on
            fit = pd.DataFrame(columns=[*g.columns, "bytes_per_sample", "fixed_bytes"])
        no_kind = _kind_missing(g, kind)
        own = published[published["task"].isin(set(g["task"]))]
        for name, title, draw in _figure_specs(g, fit, own, native, kind):
            if no_kind and name != "mem_by_category":  # the breakdown is allocated memory
                draw = _no_data(no_kind)
            jobs.append((name + suffix, title, facet, draw))
    for suffix, facet, g in _facets(rows, ["scenario", "precision"]):
        no_kind = _kind_missing(g, kind)
        jobs.append(
            (
                f"estimated_vs_measured{suffix}",
                "Estimated vs measured peak",
                facet,
                _no_data(no_kind) if no_kind else lambda g=g: estimated_vs_measured(g, kind),
            )
        )
    for name, title, facet, draw in jobs:
        item = Rendered(name, title, facet, suite=suite_dir)
        # A salt per figure keeps the SVG ids of figures inlined in one HTML page apart.
        style = {**STYLE, "svg.hashsalt": f"{suite_dir}/{name}"}
        with matplotlib.rc_context(style):
            try:
                fig = draw()
            except NoData as e:
                item.skipped = str(e)
                rendered.append(item)
                continue
            # Detection and segmentation: the head and the image size it was measured at.
            caption = task_caption(rows)
            finish(fig, f"{title}\n{suite_dir}: {facet}" + (f"; {caption}" if caption else ""))
            (out / suite_dir).mkdir(parents=True, exist_ok=True)
            for fmt in formats:
                rel = f"{suite_dir}/{name}.{fmt}"
                meta = {"Date": None} if fmt == "svg" else None  # reproducible SVG
                fig.savefig(out / rel, format=fmt, bbox_inches="tight", metadata=meta)
                item.files.append(rel)
            svg = io.StringIO()
            fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
            item.svg = svg.getvalue()
        rendered.append(item)
    return rendered


def _kind_missing(rows: pd.DataFrame, kind) -> str:
    """Why `rows` have no figure of `kind`, or "" when some have one."""
    if rows["peak_bytes"].notna().any():
        return ""
    methods = ", ".join(sorted(set(rows["method"])))
    return f"no {kind.name} memory: no {methods} record has {kind.column}" + (
        " (NVML process memory: cuda runs only)" if kind.name == "process" else ""
    )
