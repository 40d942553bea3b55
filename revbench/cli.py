"""revbench: memory-profiling benchmark suite for reversible vision networks.

Exit codes, for every command: 0 done; 1 only from `gate`, a regression; 2 bad input (one
line naming the bad value, nothing written); 3 an internal error (a bug in revbench: the
traceback is printed); 4 the machine refused a write (no space, read-only, no permission: one
line naming the path; finished rows are kept); 130 interrupted (`run`: every finished cell is
saved), 143 terminated (SIGTERM, as a scheduler's time limit sends it: handled as Ctrl-C is).
"""

# Imports stay light at module level: `revbench --help`, `--version` and `list --suites`
# must answer at once, so torch, timm, pandas and matplotlib are imported by the command
# that needs them, inside its function.

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import os
import shlex
import signal
import sys
import traceback
from dataclasses import replace

from . import __version__, status
from .budget import resolve_budgets
from .cell import model_label
from .cli_args import (
    add_axis_flags,
    add_optimizer_flag,
    add_run_dir_flags,
    axis_overrides,
    csv_list,
    make_console,
)
from .environment import cuda_devices_present
from .errors import ENVIRONMENT_ERRNOS, ENVIRONMENT_EXIT_CODE, UsageError
from .jobs import AUTO, default_jobs, parse_jobs, usable_cores
from .methods import resolve_device
from .outputs import EMPTY, check_output_dir, check_output_file, fit_table
from .worker import cpu_slots, discard_prestarted, prestart


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # an abbreviation can turn ambiguous later
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


INTERNAL_ERROR = 3


# ------------------------------------------------------------------------------- run


def _prestart_first_worker(args: argparse.Namespace) -> None:
    """Start the run's first worker at once (2 s on one core: torch), while this process
    reads the suite and the estimate cache (which load no torch): settled by the arguments
    alone for GPU-free runs in local workers. A run that wants another worker, or none
    (cached, resumed to the end), leaves it to be killed."""
    if "torch" in sys.modules:  # main called in-process (tests): their pools start their own
        return
    if args.dry_run or not args.isolate or args.launcher != "local" or args.gpus:
        return
    if args.device == "cuda" or (args.device == "auto" and cuda_devices_present()):
        return  # cuda cells start their own workers, pinned to their cards
    try:
        jobs = parse_jobs(args.jobs)
    except UsageError:
        return  # said by the run's own checks
    if jobs is None:  # RunConfig's default; without a GPU, auto means the estimator
        jobs = default_jobs("cpu" if args.device == "cpu" else "estimate", local=True)
    jobs = usable_cores() if jobs == AUTO else jobs
    prestart(cpu_slots(jobs)[0] if jobs > 1 else None)


def cmd_run(args: argparse.Namespace) -> int:
    _prestart_first_worker(args)
    # start-up: pandas, the run spine and the registry (with its plugins) load with these,
    # when a run starts, so that --help and --version answer at once
    from .analysis import per_sample_fit
    from .loading import export_csv, load
    from .runner import RunConfig, run_suite
    from .suite import expand, load_suite

    # Where it writes is checked first: a typo must not cost a run.
    if args.resume is None:
        check_output_dir(args.out, "--out", run_root=True)
    if args.csv is not None:
        check_output_file(args.csv, "--csv")
    console = make_console()
    suite = load_suite(args.suite)
    method, fallback_note = resolve_device(args.device)
    args.scenario = _ddp_scenario(args.scenario, args.world_size)
    cells = expand(suite, method=method, **axis_overrides(args))
    if args.budget is not None:  # cells predicted not to fit are skipped; cuda caps at it
        budgets = resolve_budgets(args.budget)
        if len(budgets) != 1:
            raise UsageError(f"--budget {','.join(args.budget)}: run takes one budget")
        cells = [replace(cell, budget_bytes=budgets[0]) for cell in cells]
    config = RunConfig(  # checked before anything is written
        method=method,
        out=args.out,
        resume=args.resume,
        isolate=args.isolate,
        memory_snapshot=args.memory_snapshot,
        thop=not args.no_thop,
        command=shlex.join(["revbench", *args.argv]),
        note=fallback_note,
        cache=not args.no_cache,
        cancel_pending=args.cancel_pending,
        **_scale_out_options(args),
    )
    if args.dry_run:
        for cell in cells:
            print(cell.label())
        return 0
    summary = run_suite(suite, cells, config, console=console)
    store = summary.store
    df = load(store.results_path) if store.results_path.is_file() else None
    fit = per_sample_fit(df) if df is not None and not df.empty else None
    records = summary.records
    if records:
        # Every row where they are few; where many, the fit says it shorter, and only the
        # cells that did not finish are listed.
        failed = [r for r in records if r.status != status.OK]
        if len(records) <= RAW_ROWS_SHOWN or fit is None or fit.empty:
            console.print(_summary_table(records, console.width))
        elif failed:
            console.print(_summary_table(failed, console.width))
        if fit is not None and not fit.empty:
            console.print(_fit_table(fit, console.width))
            pairs = _mode_pairs(fit)
            if pairs is not None:
                console.print(_pairs_table(pairs, console.width))
    if args.csv and df is not None and not df.empty:
        export_csv(df, args.csv)
    # soft_wrap: a path stays whole on one line, to be copied
    console.print(f"results: {store.results_path}", highlight=False, soft_wrap=True)
    if records and not summary.interrupted:
        plot = shlex.join(["revbench", "plot", str(store.dir)])
        console.print(f"next: {plot}  (figures and report in reports/)", highlight=False,
                      soft_wrap=True)  # fmt: skip
    return 130 if summary.interrupted else 0


RAW_ROWS_SHOWN = 20  # a run's rows printed in full up to this many


def _mode_pairs(fit):
    """Reversible models measured in both modes: memory per sample each way and the
    ratio, the papers' headline claim; None when the run has no such pair."""
    keys = ["model", "variant", "resolution", "precision", "scenario", "method"]
    modes = fit[fit["mode"].isin(["reversible", "vanilla"])]
    wide = modes.pivot_table(index=keys, columns="mode", values="bytes_per_sample")
    if not {"reversible", "vanilla"} <= set(wide.columns):
        return None
    wide = wide.dropna(subset=["reversible", "vanilla"])
    return None if wide.empty else wide.reset_index()


def _pairs_table(pairs, width: int):
    columns = ["model", "res", "prec", "reversible MB/sample", "vanilla MB/sample", "vanilla/rev"]
    rows = [
        [
            model_label(r["model"], r["variant"]),
            str(r["resolution"]),
            r["precision"],
            f"{r['reversible'] / 1e6:.1f}",
            f"{r['vanilla'] / 1e6:.1f}",
            f"{r['vanilla'] / r['reversible']:.1f}x" if r["reversible"] > 0 else EMPTY,
        ]
        for _, r in pairs.iterrows()
    ]
    title = "reversible vs vanilla: activation memory the reversible engine saves"
    return fit_table(title, columns, rows, ("model", "prec"), width)


def _ddp_scenario(scenario: str | None, world_size: int | None) -> str | None:
    """`--scenario ddp --world-size N` is the scenario ddp-N (revbench.ddp)."""
    if world_size is None:
        if scenario == "ddp":
            raise UsageError("--scenario ddp needs --world-size N (ranks, N >= 1)")
        return scenario
    if scenario != "ddp" or world_size < 1:
        raise UsageError(
            f"--world-size {world_size} is invalid here; valid: an integer >= 1, with "
            "--scenario ddp"
        )
    return f"ddp-{world_size}"


def _scale_out_options(args: argparse.Namespace) -> dict:
    """RunConfig's jobs/gpus/launcher fields from --jobs, --gpus, --launcher, --slurm-*."""
    from .runner import resolve_gpus  # start-up: the run spine (0.1 s), when a run is asked for

    options = {
        "partition": args.slurm_partition,
        "time_min": args.slurm_time,
        "gpus_per_task": args.slurm_gpus_per_task,
        "array_parallelism": args.array_parallelism,
        "folder": args.submitit_folder,
    }
    if args.launcher != "submitit" and any(v is not None for v in options.values()):
        raise UsageError(
            "--slurm-*, --array-parallelism and --submitit-folder apply to --launcher "
            f"submitit, not {args.launcher}"
        )
    return {
        "jobs": args.jobs,
        "gpus": None if args.gpus is None else resolve_gpus(args.gpus),
        "launcher": args.launcher,
        "launcher_options": options,
    }


def _summary_table(records, width: int):
    columns = [
        "model",
        "mode",
        "res",
        "batch",
        "prec",
        "status",
        "peak MB",
        "ms/step",
        "img/s",
    ]
    rows = [
        [
            model_label(r.model, r.variant),
            r.mode,
            str(r.resolution),
            str(r.batch_size),
            r.precision,
            r.status,
            _fmt(r.peak_bytes, 1e6, ".1f"),
            _fmt(r.step_time_ms_median, 1, ".1f"),
            _fmt(r.throughput_samples_per_s, 1, ".1f"),
        ]
        for r in records
    ]
    left = ("model", "mode", "status", "prec")
    return fit_table("revbench results", columns, rows, left, width)


def _fmt(value, scale: float, spec: str, unit: str = "") -> str:
    return EMPTY if value is None else format(value / scale, spec) + unit


def _given(value):
    """None for a missing figure (pandas gives NaN)."""
    return None if value is None or value != value else value


def _fit_table(fit, width: int):
    # Parameters and MACs belong to the model, not the cell: said once per line here.
    columns = ["model", "mode", "res", "prec", "MB/sample", "fixed MB", "batches"]
    columns += ["params", "GMACs"]
    rows = [
        [
            model_label(r["model"], r["variant"]),
            r["mode"],
            str(r["resolution"]),
            r["precision"],
            f"{r['bytes_per_sample'] / 1e6:.1f}",
            f"{r['fixed_bytes'] / 1e6:.1f}",
            r["batch_sizes"],
            _fmt(_given(r["params"]), 1e6, ".2f", "M"),
            _fmt(_given(r["macs"]), 1e9, ".2f"),
        ]
        for _, r in fit.iterrows()
    ]
    title = "memory per sample (least-squares slope over batch size)"
    return fit_table(title, columns, rows, ("model", "mode", "prec", "batches"), width)


# ------------------------------------------------------------------------------ list


def cmd_list(args: argparse.Namespace) -> int:
    if args.suites:
        console = make_console(stderr=False)
        console.print(_suites_table(console.width))
        return 0
    from revbench.models import list_models  # start-up: the registry and its plugins, here only

    families = sorted({info.family for info in list_models()})
    if args.family is not None and args.family not in families:
        raise UsageError(f"family {args.family!r} is invalid; valid: {', '.join(families)}")
    # The published figures' sources are long citations: published.csv has them, and
    # leaving them out keeps the table inside an 80-column terminal.
    columns = ["name", "family", "res", "modes", "params", "GMACs", "top-1"]
    rows = [
        [
            info.name,
            info.family,
            str(info.native_resolution),
            ",".join(MODE_LETTERS.get(m, m) for m in info.modes),
            _fmt(info.published_params, 1e6, ".2f"),
            _fmt(info.published_macs, 1e9, ".2f"),
            _fmt(info.published_top1, 1, ".1f"),
        ]
        for info in list_models(kind=args.kind, family=args.family)
    ]
    console = make_console(stderr=False)
    left = ("name", "family", "modes")
    table = fit_table("registered models", columns, rows, left, console.width)
    table.caption = (
        "res: native resolution; modes: r reversible, v vanilla, c checkpoint; params "
        "(millions), GMACs, top-1: published (sources in revbench/data/published.csv)"
    )
    console.print(table)
    return 0


MODE_LETTERS = {"reversible": "r", "vanilla": "v", "checkpoint": "c"}


def _suites_table(width: int):
    """Every built-in suite: cells, the time a run takes on the estimator, what it is for.

    Each suite expanded (the registry, without torch) and revbench/data/suites.csv's
    timed runs (revbench/catalog.py).
    """
    from .catalog import builtin_suite_entries  # start-up: the suites and the registry, here only

    columns = ["suite", "cells", "time (estimator)", "description"]
    rows = [[e.name, e.cells, e.estimate_time, e.description] for e in builtin_suite_entries()]
    title = "built-in suites (revbench run --suite NAME)"
    table = fit_table(title, columns, rows, ("suite", "description"), width)
    table.caption = (
        "time: the wall time of a timed run on a shared 2-core machine where there is one, "
        "else a per-cell cost model (revbench/catalog.py); a guide, not a promise"
    )
    return table


# ------------------------------------------------------------------------------ main


# Commands defined in their own modules, which import pandas, torch or matplotlib. Only
# the invoked command's module is imported (`revbench --help` must stay instant); the
# others are listed with this help line, which tests/test_cli.py keeps equal to theirs.
MODULE_COMMANDS = {
    "plot": ("revbench.plot", "figures and a Markdown report from results"),
    "gate": ("revbench.gate", "compare results against a baseline; exit 1 on a regression"),
    "max-batch": ("revbench.maxbatch", "the largest training batch that fits a memory budget"),
}


def build_parser(load: str | None = "all") -> argparse.ArgumentParser:
    """The full parser. `load` names the one module-defined command to import and define
    in full ("all": every one, None: none); the rest are listed by name and help only."""
    parser = _Parser(
        prog="revbench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"revbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_list(sub)
    for name, (module, help_line) in MODULE_COMMANDS.items():
        if load in ("all", name):
            import importlib

            importlib.import_module(module).register_cli(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="measure a suite's cells")
    run.add_argument("--suite", required=True, help="built-in suite name or path to a .toml file")
    run.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if a GPU is present, else estimate) | cuda | estimate | cpu",
    )
    add_axis_flags(
        run,
        models_help="comma-separated model names (replaces the suite's)",
        scenario_help="train | infer | ddp (with --world-size N; in suites: ddp-N)",
    )
    run.add_argument(
        "--world-size",
        type=int,
        help="ddp: ranks on this machine (gloo on CPU, nccl on GPUs), each with the batch",
    )
    add_optimizer_flag(run)
    add_run_dir_flags(run, skipping="measured cells")
    iso = run.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate",
        dest="isolate",
        action="store_true",
        default=True,
        help="run every cell in a worker process, under its timeout (the default)",
    )
    iso.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="run cells in this process, without timeouts (for debugging)",
    )
    run.add_argument(
        "--memory-snapshot",
        action="store_true",
        help="save each cuda cell's allocator history (PyTorch memory_viz)",
    )
    run.add_argument(
        "--no-thop",
        action="store_true",
        help="skip the thop MAC count (a real CPU forward per model)",
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="estimate every cell again instead of answering unchanged ones from the "
        "estimate cache ($REVBENCH_CACHE, default ~/.cache/revbench)",
    )
    run.add_argument("--csv", help="also export the run's results as CSV to this file")
    run.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    run.add_argument(
        "--budget",
        type=csv_list,
        help="memory budget (16GiB, 24GB, bytes or auto): cells the estimator predicts above "
        "it are skipped, and cuda cells run with the allocator capped at it",
    )
    scale = run.add_argument_group("scale out (docs/scaling.md)")
    scale.add_argument(
        "--jobs",
        help="N worker processes share the cells (estimate, cpu), or auto: one per core "
        "that memory holds (the default for estimate; cpu: 1)",
    )
    scale.add_argument(
        "--gpus", help="cuda: one worker per card, pinned with CUDA_VISIBLE_DEVICES: 0,1,... | all"
    )
    scale.add_argument(
        "--launcher",
        default="local",
        help="local (workers on this machine, the default) | submitit (a job array: Slurm "
        "where sbatch exists, submitit's local executor otherwise)",
    )
    scale.add_argument(
        "--cancel-pending",
        action="store_true",
        help="--resume: cancel an earlier invocation's submitit jobs that are still queued "
        "or running (without it such a resume is refused, so no cell is measured twice)",
    )
    scale.add_argument("--slurm-partition", help="submitit: the Slurm partition")
    scale.add_argument(
        "--slurm-time",
        type=int,
        help="submitit: minutes per job (default: the longest cell timeout + 5)",
    )
    scale.add_argument(
        "--slurm-gpus-per-task", type=int, help="submitit: GPUs per job (default: 1 for cuda)"
    )
    scale.add_argument(
        "--array-parallelism", type=int, help="submitit: jobs of the array running at once"
    )
    scale.add_argument(
        "--submitit-folder", help="submitit: job logs and pickles (default: RUN_DIR/submitit)"
    )
    run.set_defaults(func=cmd_run)


def _add_list(sub) -> None:
    lst = sub.add_parser("list", help="list registered models (or suites)")
    lst.add_argument("--kind", choices=("reversible", "baseline"))
    lst.add_argument("--family", help="one family, e.g. RevViT")
    lst.add_argument("--suites", action="store_true", help="list built-in suites instead")
    lst.set_defaults(func=cmd_list)


def _command_in(argv: list[str]) -> str | None:
    # The top-level options take no value: the first other word is the command.
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if not argv:  # bare `revbench`: what it is and the commands
            build_parser(load=None).print_help()
            return 0
        args = build_parser(load=_command_in(argv)).parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UsageError as e:
        print(f"revbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:  # before a command's own handling (during its imports)
        print("revbench: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            traceback.print_exc()
            print(f"revbench: internal error: {type(e).__name__}: {e}", file=sys.stderr)
            return INTERNAL_ERROR
        # The machine refused a write: one line naming where and why; every finished row
        # is on disk (a torn last line is repaired by --resume).
        where = e.filename or "a file"
        print(f"revbench: error: {where}: {e.strerror}", file=sys.stderr)
        return ENVIRONMENT_EXIT_CODE
    except Exception as e:  # a bug, not bad input: never exit 1, which `gate` gives a regression
        traceback.print_exc()
        print(f"revbench: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        discard_prestarted()  # a run's first worker, started early, that no pool took


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `kill`), raised where Ctrl-C's KeyboardInterrupt
    would be: a run stops its workers, keeps every finished row and says how to resume."""


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


def entry() -> None:
    """The `revbench` command: `main`, its exit handlers (workers killed, logs flushed),
    then the end of the process without the interpreter's teardown: its last garbage
    collection and the module-by-module release of everything torch and timm loaded took
    0.4 s of a cached run's 2.3 s. The run's files are closed by then."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main()
    except Terminated:  # between main's own handlers
        code = 130
    terminated = signal.signal(signal.SIGTERM, previous) is signal.SIG_DFL
    if terminated and code == 130:
        code = 128 + signal.SIGTERM
    gc.freeze()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
    os._exit(0 if code is None else code)


if __name__ == "__main__":
    entry()
