"""`revbench gate`: compare results against a baseline and fail CI on a regression.

    revbench gate --baseline results/reference/ci --current results/ci/20260101-120000
    revbench gate --suite ci                 # run the ci suite, gate it against its baseline
    revbench gate --suite ci --update        # run it and make it the new baseline

What is compared, how strictly and the verdicts are `revbench.comparison`; the output is
`revbench.gate_render`; the baseline files `revbench.baseline`; `--suite` runs through
`revbench.runner.run_suite`, as `revbench run` does. `--tolerance METRIC=PCT` replaces the
tolerance of a metric for every method. Exit 0 when nothing regressed, 1 on a regression
or on a baseline cell missing from the current results (the gate can no longer vouch for
it), 2 when the gate cannot judge: bad input (a figure that is not a finite non-negative
number, an unusable output path), or results that are not comparable (another suite,
another method, no cell in common, timings over other step counts); 3 on an internal error.
Exit 1 means a regression and nothing else. Improvements and new cells pass, with a hint
to refresh the baseline with `--update`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import pandas as pd
from rich.console import Console

from . import status
from .baseline import baseline_files, update_baseline, write_atomic
from .cell import KEY_FIELDS, cell_label
from .comparison import FIT_METRIC, OK, compare, parse_tolerances, row_key
from .errors import UsageError
from .gate_render import benchmark_entries, markdown, print_text
from .loading import load
from .methods import resolve_device
from .outputs import check_output_dir, check_output_file


def load_side(paths: list[str], what: str) -> pd.DataFrame:
    try:
        df = load(*paths)
    except UsageError as e:
        raise UsageError(f"{what}: {e}") from None
    if df.empty:
        raise UsageError(f"{what}: no records in {', '.join(paths)}")
    repeated = df.attrs.get("repeated_cells", 0)
    if repeated:
        print(
            f"note: {what}: {repeated} older row(s) of cells measured again in "
            f"{', '.join(paths)}; each cell's last row counts",
            file=sys.stderr,
        )
    return df


def check_comparable(baseline: pd.DataFrame, current: pd.DataFrame) -> None:
    """Refuse to judge results that do not measure the same thing: another suite or
    method, no cell in common (on the full key, optimizer included), or timings sampled
    over other warm-up or measured steps."""
    for column, what in (("suite", "suite"), ("method", "method")):
        b, c = sorted(set(baseline[column])), sorted(set(current[column]))
        if b != c:
            raise UsageError(
                f"baseline is {what} {', '.join(b)} but current is {what} {', '.join(c)}; "
                f"gate runs of the same {what}"
            )
    base = {row_key(row): row for _, row in baseline.iterrows()}
    matched = [(base[row_key(r)], r) for _, r in current.iterrows() if row_key(r) in base]
    if not matched:
        raise UsageError(
            "baseline and current have no cell in common (matched on "
            f"{', '.join(KEY_FIELDS)}); gate runs of the same cells"
        )
    for b, c in matched:
        if pd.isna(b["step_time_ms_median"]) and pd.isna(c["step_time_ms_median"]):
            continue  # untimed: the step counts do not enter any figure
        for name in ("warmup_steps", "measure_steps"):
            if pd.notna(b[name]) and pd.notna(c[name]) and b[name] != c[name]:
                raise UsageError(
                    f"{cell_label(c)} is timed over {name} {int(c[name])} but its baseline "
                    f"over {int(b[name])}; gate runs with the same steps"
                )


def check_outputs(args: argparse.Namespace) -> None:
    """Every path the gate will write, checked before any work is done."""
    if args.export_json is not None:
        check_output_file(args.export_json, "--export-json")
    if args.out is not None:
        check_output_dir(args.out, "--out", run_root=True)
    if args.update:
        if str(args.baseline).strip() == "":
            raise UsageError("--baseline is empty; give a results file or run directory")
        results, manifest = baseline_files(Path(args.baseline))
        check_output_file(results, "--update baseline")
        check_output_file(manifest, "--update baseline manifest")


def cmd_gate(args: argparse.Namespace) -> int:
    # Every input is checked before the suite runs: a typo should not cost a run.
    tolerances = parse_tolerances(args.tolerance)
    if bool(args.current) == bool(args.suite):
        raise UsageError("give either --current RESULTS or --suite NAME (to run it first)")
    if args.jobs is not None and not args.suite:
        raise UsageError(
            f"--jobs {args.jobs} applies to --suite (its workers); --current runs nothing"
        )
    suite = None
    if args.suite:
        # start-up: the run spine and the registry (with its plugins) load only when the
        # gate runs a suite
        from .runner import RunConfig, run_suite
        from .suite import expand, load_suite

        suite = load_suite(args.suite)
        method, fallback_note = resolve_device(args.device)
    if args.baseline is None:
        if suite is None:
            raise UsageError("--baseline is required with --current")
        args.baseline = str(Path("results") / "reference" / suite.name)
    check_outputs(args)
    baseline = None
    if not args.update:
        baseline = load_side([args.baseline], "baseline")
    elif Path(args.baseline).exists():
        try:
            baseline = load_side([args.baseline], "baseline")
        except UsageError as e:  # an unreadable baseline (an old schema) is what --update fixes
            print(f"note: {e}; --update replaces it", file=sys.stderr)
    if not args.suite:
        return run_gate(args, baseline, args.current, tolerances)
    with tempfile.TemporaryDirectory(prefix="revbench-gate-") as tmp:
        config = RunConfig(
            method=method,
            out=args.out or tmp,
            thop=not args.no_thop,
            command=shlex.join(["revbench", *getattr(args, "argv", ["gate"])]),
            note=fallback_note,
            jobs=args.jobs,
        )
        run = run_suite(suite, expand(suite, method=method), config, console=Console(stderr=True))
        if run.interrupted:
            return 130
        code = run_gate(args, baseline, [str(run.store.dir)], tolerances)
        if not args.out:
            print("the run's directory was temporary: --out DIR keeps it", file=sys.stderr)
        return code


def run_gate(
    args: argparse.Namespace,
    baseline: pd.DataFrame | None,
    sources: list[str],
    tolerances: dict[str, float],
) -> int:
    """Compare, print, export, update; the exit code."""
    current = load_side(sources, "current")
    if baseline is not None:
        try:
            check_comparable(baseline, current)
        except UsageError as e:
            if not args.update:
                raise
            # A baseline of other cells (a key field added since) is what --update replaces.
            print(f"note: {e}; --update replaces it", file=sys.stderr)
            baseline = None
    refresh = shlex.join(
        ["revbench", "gate", "--baseline", args.baseline]
        + (["--suite", args.suite] if args.suite else ["--current", *sources])
        + ["--update"]
    )
    report = None
    if baseline is not None:
        report = compare(baseline, current, tolerances)
        title = f"revbench gate: {', '.join(sources)} against baseline {args.baseline}"
        if args.format == "markdown":
            print(markdown(report, title, refresh))
        else:
            terminal = Console()
            print_text(
                report,
                title,
                refresh,
                terminal if terminal.is_terminal else Console(width=220),
                verbose=args.verbose,
            )
    if args.export_json:
        path = Path(args.export_json)
        write_atomic(path, json.dumps(benchmark_entries(current), indent=1) + "\n")
        print(f"benchmark JSON (customSmallerIsBetter): {path}", file=sys.stderr)
    version_problem = estimator_version_problem(baseline, current, report, refresh)
    if version_problem:
        print(version_problem, file=sys.stderr)
    if not args.update:
        return 0 if report.passed and not version_problem else 1
    command = shlex.join(["revbench", *getattr(args, "argv", ["gate"])])
    written = update_baseline(Path(args.baseline), current, sources, command)
    if report is None:
        what = "a new baseline"
    else:
        changed = len({r.cell for r in report.rows if r.verdict != OK and r.metric != FIT_METRIC})
        what = (
            f"{report.cells_compared} kept ({changed} with changes), "
            f"{len(report.new)} new, {len(report.missing)} removed"
        )
    print(f"baseline updated: {written}: {len(current)} cell(s): {what}", file=sys.stderr)
    failed = sorted(set(current["status"]) - set(status.FINAL))
    if failed:
        print(f"note: the new baseline has cells with status {', '.join(failed)}", file=sys.stderr)
    return 0


def estimator_version_problem(
    baseline: pd.DataFrame | None, current: pd.DataFrame, report, refresh: str
) -> str | None:
    """Why the estimator's version does not fit the figures, or None.

    `ESTIMATOR_VERSION` (revbench.methods.estimate_method) is bumped whenever the estimator's
    output changes, so the estimate cache never answers with an older estimator's bytes.
    The gate holds that promise: estimates that differ from the baseline's under the same
    version are refused, and so are a baseline and results of different versions (the
    baseline is refreshed with the bump).
    """
    if baseline is None or report is None:
        return None

    def versions(df: pd.DataFrame) -> set[int]:
        if "estimator_version" not in df:
            return set()
        estimated = df.loc[df["method"] == "estimate", "estimator_version"].dropna()
        return {int(v) for v in estimated}

    before, now = versions(baseline), versions(current)
    if not before or not now:  # a baseline from before versions were recorded
        return None
    if before != now:
        return (
            f"estimator version: the baseline's estimates are version "
            f"{', '.join(map(str, sorted(before)))}, these {', '.join(map(str, sorted(now)))}: "
            f"refresh the baseline ({refresh})"
        )
    changed = sorted(
        {r.cell for r in report.rows if r.verdict != OK and r.cell.endswith("(estimate)")}
    )
    if changed:
        return (
            f"estimator version: {len(changed)} estimated cell(s) changed (first: {changed[0]}) "
            f"while ESTIMATOR_VERSION is still {max(now)}: bump it in "
            "revbench/methods/estimate_method.py (the estimate cache keys on it), then refresh the "
            "baseline"
        )
    return None


def register_cli(sub) -> None:
    gate = sub.add_parser(
        "gate",
        help="compare results against a baseline; exit 1 on a regression",
        description=__doc__.split("\n\n")[0],
        epilog="verdicts: ok, REGRESSION, improved, changed?. exit status: 0 nothing regressed, "
        "1 a regression or a baseline cell missing from the current results, 2 bad input or "
        "results that are not comparable, 3 an internal error",
    )
    gate.add_argument(
        "--baseline",
        help="baseline results file or run directory "
        "(default with --suite: results/reference/SUITE)",
    )
    gate.add_argument("--current", nargs="+", help="results files or run directories to gate")
    gate.add_argument(
        "--suite", help="run this suite first (as `revbench run`) and gate its results"
    )
    gate.add_argument("--device", default="estimate", help="--suite's device (default: estimate)")
    gate.add_argument("--out", help="--suite's results directory (default: a temporary one)")
    gate.add_argument("--no-thop", action="store_true", help="--suite runs without thop")
    gate.add_argument(
        "--jobs",
        help="--suite's worker processes: as `revbench run --jobs` (default: auto for estimate)",
    )
    gate.add_argument(
        "--tolerance",
        action="append",
        metavar="METRIC=PCT",
        help="allowed change in percent, for every method (repeatable; default: exact for "
        "counts and estimates, 5 for measured memory, 10 for time)",
    )
    gate.add_argument(
        "--update",
        action="store_true",
        help="make the current results the baseline (a .jsonl file or a run directory)",
    )
    gate.add_argument("--format", choices=("text", "markdown"), default="text")
    gate.add_argument(
        "--verbose",
        action="store_true",
        help="text format: every compared metric, not only the verdict and what is not ok",
    )
    gate.add_argument(
        "--export-json",
        metavar="PATH",
        help="write github-action-benchmark customSmallerIsBetter JSON of the current results",
    )
    gate.set_defaults(func=cmd_gate)
