"""`revbench gate`: compare results against a baseline and fail CI on a regression.

    revbench gate --baseline results/reference/ci --current results/ci/20260101-120000
    revbench gate --suite ci                 # run the ci suite, gate it against its baseline
    revbench gate --suite ci --update        # run it and make it the new baseline

What is compared, how strictly and the verdicts are `revbench.comparison`; the output is
`revbench.gate_render`; the baseline files `revbench.baseline`; `--suite` runs through
`revbench.runner.run_suite`, as `revbench run` does. `--tolerance METRIC=PCT` replaces the
tolerance of a metric for every method. Exit 0 when nothing regressed, 1 on a regression
or on a baseline cell missing from the current results (the gate can no longer vouch for
it), 2 on bad input. Improvements and new cells pass, with a hint to refresh the baseline
with `--update`.
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
from .comparison import FIT_METRIC, OK, compare, parse_tolerances
from .errors import UsageError
from .gate_render import benchmark_entries, markdown, print_text
from .results import load


def load_side(paths: list[str], what: str) -> pd.DataFrame:
    try:
        df = load(*paths)
    except UsageError as e:
        raise UsageError(f"{what}: {e}") from None
    if df.empty:
        raise UsageError(f"{what}: no records in {', '.join(paths)}")
    return df


def check_same_suite(baseline: pd.DataFrame, current: pd.DataFrame) -> None:
    b, c = sorted(set(baseline["suite"])), sorted(set(current["suite"]))
    if b != c:
        raise UsageError(
            f"baseline is suite {', '.join(b)} but current is suite {', '.join(c)}; "
            "gate runs of the same suite"
        )


def cmd_gate(args: argparse.Namespace) -> int:
    # Every input is checked before the suite runs: a typo should not cost a run.
    tolerances = parse_tolerances(args.tolerance)
    if bool(args.current) == bool(args.suite):
        raise UsageError("give either --current RESULTS or --suite NAME (to run it first)")
    suite = None
    if args.suite:
        from .methods import resolve_device
        from .runner import run_suite
        from .suite import load_suite

        suite = load_suite(args.suite)
        method, fallback_note = resolve_device(args.device)
    if args.baseline is None:
        if suite is None:
            raise UsageError("--baseline is required with --current")
        args.baseline = str(Path("results") / "reference" / suite.name)
    baseline = None
    if not args.update:
        baseline = load_side([args.baseline], "baseline")
    elif Path(args.baseline).exists():
        try:
            baseline = load_side([args.baseline], "baseline")
        except UsageError as e:  # an unreadable baseline (an old schema) is what --update fixes
            print(f"note: {e}; --update replaces it", file=sys.stderr)
    if args.update:
        baseline_files(Path(args.baseline))  # refuses a directory it cannot write
    if not args.suite:
        return run_gate(args, baseline, args.current, tolerances)
    with tempfile.TemporaryDirectory(prefix="revbench-gate-") as tmp:
        run = run_suite(
            suite,
            method=method,
            out=args.out or tmp,
            thop=not args.no_thop,
            command=shlex.join(["revbench", *getattr(args, "argv", ["gate"])]),
            note=fallback_note,
            console=Console(stderr=True),
        )
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
        check_same_suite(baseline, current)
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
                report, title, refresh, terminal if terminal.is_terminal else Console(width=220)
            )
    if args.export_json:
        path = Path(args.export_json)
        write_atomic(path, json.dumps(benchmark_entries(current), indent=1) + "\n")
        print(f"benchmark JSON (customSmallerIsBetter): {path}", file=sys.stderr)
    if not args.update:
        return 0 if report.passed else 1
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


def register_cli(sub) -> None:
    gate = sub.add_parser(
        "gate",
        help="compare results against a baseline; exit 1 on a regression",
        description=__doc__.split("\n\n")[0],
        epilog="verdicts: ok, REGRESSION, improved, changed?. exit status: 0 nothing regressed, "
        "1 a regression or a baseline cell missing from the current results, 2 bad input",
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
        "--export-json",
        metavar="PATH",
        help="write github-action-benchmark customSmallerIsBetter JSON of the current results",
    )
    gate.set_defaults(func=cmd_gate)
