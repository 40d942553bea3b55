"""What the commands share on the command line: the console, list arguments, and the
flags that replace a suite's axes (declared once for `run`, `max-batch` and `gate`).

Light on imports, like the CLI itself: every `revbench` command imports this module.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from .cards import CARDS, DEFAULT_CARD

LOG_WIDTH = 160  # table width when the output is neither a terminal nor COLUMNS-sized


def make_console(stderr: bool = True) -> Console:
    """A console at the terminal's width (or $COLUMNS). Written to a file or a pipe with
    no COLUMNS set, wide enough that labels do not wrap in the log."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(stderr=stderr, width=LOG_WIDTH)


def csv_list(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"{value!r} names nothing; give a comma-separated list")
    return out


def int_list(value: str) -> list[int]:
    try:
        out = [int(v) for v in csv_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a comma-separated list of integers"
        ) from None
    return out


def add_axis_flags(
    parser: argparse.ArgumentParser,
    *,
    models_help: str,
    batch_sizes: bool = True,
    scenario_help: str = "train | infer",
) -> None:
    """--models, --resolutions, [--batch-sizes], --precision, --modes, --scenario and
    --optimizer: each replaces that axis of the suite (`revbench.suite.expand`)."""
    parser.add_argument("--models", type=csv_list, help=models_help)
    parser.add_argument(
        "--resolutions", type=csv_list, help="comma-separated sides in pixels, or 'native'"
    )
    if batch_sizes:
        parser.add_argument("--batch-sizes", type=int_list, help="comma-separated batch sizes")
    parser.add_argument(
        "--precision", type=csv_list, help="fp32, amp-bf16, amp-fp16 (comma-separated)"
    )
    parser.add_argument(
        "--modes", type=csv_list, help="reversible, vanilla, checkpoint (comma-separated)"
    )
    parser.add_argument("--scenario", help=scenario_help)
    parser.add_argument(
        "--card",
        help=f"the card an estimate is for: {' | '.join(CARDS)} (default {DEFAULT_CARD}; "
        "cpu: the CPU kernels' step, no card's libraries)",
    )
    return None


def add_optimizer_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizer", help="sgd (with momentum) | adamw")


def add_run_dir_flags(parser: argparse.ArgumentParser, *, skipping: str) -> None:
    """--out and --resume: where runs go, and which one to continue (`skipping` says what
    a resumed run leaves out)."""
    parser.add_argument("--out", default="results", help="results directory (default: results/)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help=f"continue a run, skipping {skipping}: the latest run of the suite, or RUN_DIR",
    )


def axis_overrides(args: argparse.Namespace) -> dict:
    """The axes given on the command line, as `revbench.suite.expand` takes them."""
    return {
        "models": args.models,
        "resolutions": args.resolutions,
        "batch_sizes": getattr(args, "batch_sizes", None),
        "precisions": args.precision,
        "modes": args.modes,
        "scenario": args.scenario,
        "optimizer": args.optimizer,
        "card": getattr(args, "card", None),
    }
