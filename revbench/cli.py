"""The `revbench` command line: run, list (plot and gate register here too).

Exit codes, for every command: 0 done; 1 only from `gate`, a regression; 2 bad input (one
line naming the bad value, nothing written); 3 an internal error (a bug in revbench: the
traceback is printed); 130 interrupted (`run`: every finished cell is saved).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback

from rich.console import Console

from .errors import UsageError


def _console() -> Console:
    """Status and tables go to stderr; wide enough for the tables when not on a terminal."""
    c = Console(stderr=True)
    return c if c.is_terminal else Console(stderr=True, width=160)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # an abbreviation can turn ambiguous later
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


INTERNAL_ERROR = 3


def _csv(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"{value!r} names nothing; give a comma-separated list")
    return out


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a comma-separated list of integers"
        ) from None
    return out


# ------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from .methods import resolve_device
    from .outputs import check_output_dir, check_output_file
    from .results import export_csv, load, per_sample_fit
    from .runner import run_suite
    from .suite import expand, load_suite

    # Where it writes is checked first: a typo must not cost a run.
    if args.resume is None:
        check_output_dir(args.out, "--out", run_root=True)
    if args.csv is not None:
        check_output_file(args.csv, "--csv")
    console = _console()
    suite = load_suite(args.suite)
    method, fallback_note = resolve_device(args.device)
    args.scenario = _ddp_scenario(args.scenario, args.world_size)
    cells = expand(
        suite,
        method=method,
        models=args.models,
        resolutions=args.resolutions,
        batch_sizes=args.batch_sizes,
        precisions=args.precision,
        modes=args.modes,
        scenario=args.scenario,
        optimizer=args.optimizer,
    )
    if args.budget is not None:  # cells predicted not to fit are skipped; cuda caps at it
        from dataclasses import replace

        from .maxbatch import resolve_budgets

        budgets = resolve_budgets(args.budget)
        if len(budgets) != 1:
            raise UsageError(f"--budget {','.join(args.budget)}: run takes one budget")
        cells = [replace(cell, budget_bytes=budgets[0]) for cell in cells]
    scale_out = _scale_out_options(args)  # checked before anything is written
    if args.dry_run:
        for cell in cells:
            print(cell.label())
        return 0
    summary = run_suite(
        suite,
        method=method,
        cells=cells,
        out=args.out,
        resume=args.resume,
        isolate=args.isolate,
        memory_snapshot=args.memory_snapshot,
        thop=not args.no_thop,
        command=shlex.join(["revbench", *args.argv]),
        note=fallback_note,
        console=console,
        **scale_out,
    )
    console.print(_summary_table(summary.records))
    store = summary.store
    df = load(store.results_path) if store.results_path.is_file() else None
    if df is not None and not df.empty:
        fit = per_sample_fit(df)
        if not fit.empty:
            console.print(_fit_table(fit))
        if args.csv:
            export_csv(df, args.csv)
    console.print(f"results: {store.results_path}")
    return 130 if summary.interrupted else 0


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
    """run_suite's jobs/gpus/launcher arguments from --jobs, --gpus, --launcher, --slurm-*."""
    from .runner import resolve_gpus

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


def _summary_table(records):
    from rich.markup import escape
    from rich.table import Table

    from .cell import model_label

    table = Table(title="revbench results", show_lines=False)
    left = ("model", "mode", "status", "prec")
    for col in (
        "model",
        "mode",
        "res",
        "batch",
        "prec",
        "status",
        "peak MB",
        "ms/step",
        "samples/s",
        "params M",
        "GMACs",
    ):
        table.add_column(col, justify="left" if col in left else "right")
    for r in records:
        table.add_row(
            escape(model_label(r.model, r.variant)),
            r.mode,
            str(r.resolution),
            str(r.batch_size),
            r.precision,
            r.status,
            _fmt(r.peak_bytes, 1e6, ".1f"),
            _fmt(r.step_time_ms_median, 1, ".1f"),
            _fmt(r.throughput_samples_per_s, 1, ".1f"),
            _fmt(r.params, 1e6, ".2f"),
            _fmt(r.macs, 1e9, ".2f"),
        )
    return table


def _fmt(value, scale: float, spec: str) -> str:
    return "-" if value is None else format(value / scale, spec)


def _fit_table(fit):
    from rich.markup import escape
    from rich.table import Table

    from .cell import model_label

    table = Table(title="memory per sample (least-squares slope over batch size)")
    for col in ("model", "mode", "res", "prec", "MB/sample", "fixed MB", "batches"):
        table.add_column(col)
    for _, r in fit.iterrows():
        table.add_row(
            escape(model_label(r["model"], r["variant"])),
            r["mode"],
            str(r["resolution"]),
            r["precision"],
            f"{r['bytes_per_sample'] / 1e6:.1f}",
            f"{r['fixed_bytes'] / 1e6:.1f}",
            r["batch_sizes"],
        )
    return table


# ------------------------------------------------------------------------------ list


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from revbench.models import list_models

    from .suite import builtin_suites

    if args.suites:
        for name in builtin_suites():
            print(name)
        return 0
    families = sorted({info.family for info in list_models()})
    if args.family is not None and args.family not in families:
        raise UsageError(f"family {args.family!r} is invalid; valid: {', '.join(families)}")
    table = Table(title="registered models")
    for col in (
        "name",
        "family",
        "kind",
        "size",
        "native",
        "modes",
        "params (pub.)",
        "GMACs (pub.)",
        "top-1",
        "source",
    ):
        table.add_column(col)
    for info in list_models(kind=args.kind, family=args.family):
        table.add_row(
            info.name,
            info.family,
            info.kind,
            info.size,
            str(info.native_resolution),
            ",".join(info.modes),
            f"{info.published_params:,}" if info.published_params else "-",
            f"{info.published_macs / 1e9:.2f}" if info.published_macs else "-",
            f"{info.published_top1:.1f}" if info.published_top1 else "-",
            info.source,
        )
    Console(width=200).print(table)
    return 0


# ------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="revbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure a suite's cells")
    run.add_argument("--suite", required=True, help="built-in suite name or path to a .toml file")
    run.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if a GPU is present, else estimate) | cuda | estimate | cpu",
    )
    run.add_argument(
        "--models", type=_csv, help="comma-separated model names (replaces the suite's)"
    )
    run.add_argument(
        "--resolutions", type=_csv, help="comma-separated sides in pixels, or 'native'"
    )
    run.add_argument("--batch-sizes", type=_ints, help="comma-separated batch sizes")
    run.add_argument("--precision", type=_csv, help="fp32, amp-bf16, amp-fp16 (comma-separated)")
    run.add_argument("--modes", type=_csv, help="reversible, vanilla, checkpoint (comma-separated)")
    run.add_argument(
        "--scenario", help="train | infer | ddp (with --world-size N; in suites: ddp-N)"
    )
    run.add_argument(
        "--world-size",
        type=int,
        help="ddp: ranks on this machine (gloo on CPU, nccl on GPUs), each with the batch",
    )
    run.add_argument("--optimizer", help="sgd (with momentum) | adamw")
    run.add_argument("--out", default="results", help="results directory (default: results/)")
    run.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue a run, skipping measured cells: the latest run of the suite, or RUN_DIR",
    )
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
    run.add_argument("--csv", help="also export the run's results as CSV to this file")
    run.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    run.add_argument(
        "--budget",
        type=_csv,
        help="memory budget (16GiB, 24GB, bytes or auto): cells the estimator predicts above "
        "it are skipped, and cuda cells run with the allocator capped at it",
    )
    scale = run.add_argument_group("scale out (README: Scaling out)")
    scale.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="N worker processes share the cells (estimate, cpu; default 1)",
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

    lst = sub.add_parser("list", help="list registered models (or suites)")
    lst.add_argument("--kind", choices=("reversible", "baseline"))
    lst.add_argument("--family", help="one family, e.g. RevViT")
    lst.add_argument("--suites", action="store_true", help="list built-in suites instead")
    lst.set_defaults(func=cmd_list)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    # Commands that live in their own modules (plot, gate) register themselves here.
    import importlib

    for name in ("revbench.plot", "revbench.gate", "revbench.maxbatch"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        yield module.register_cli


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UsageError as e:
        print(f"revbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug, not bad input: never exit 1, which `gate` gives a regression
        traceback.print_exc()
        print(f"revbench: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
