"""`revbench max-batch` and `run --budget`: budgets, the boundary search, both paths, records."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pandas as pd
import pytest
from revbench_launch_helpers import slot_for

from revbench import status
from revbench.budget import parse_budget, parse_margin, resolve_budgets
from revbench.comparison import REGRESSION, compare
from revbench.errors import UsageError
from revbench.launcher import budget_outcome
from revbench.loading import load
from revbench.maxbatch import (
    MAX_BATCH_CAP,
    OVER_BUDGET,
    Probe,
    Prober,
    find_boundary,
    search,
)
from revbench.measurement import Counts, Measurement
from revbench.methods.estimate import estimate_memory
from revbench.outcome import Outcome
from revbench.records import Record
from revbench.suite import make_cell

GiB = 2**30


def _prober(launch) -> Prober:
    """A search's prober whose launches call `launch`, sharing no outcomes."""
    import threading

    return Prober(slot_for(launch), {}, threading.Lock())


# ---------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    "text, nbytes",
    [
        ("16GB", 16_000_000_000),
        ("16GiB", 17_179_869_184),
        ("80GiB", 85_899_345_920),
        ("24 gib", 24 * 2**30),
        ("1.5GiB", 1_610_612_736),
        ("512MiB", 536_870_912),
        ("300MB", 300_000_000),
        ("17179869184", 17_179_869_184),
        ("1000B", 1000),
    ],
)
def test_budgets_parse_decimal_and_binary_units(text, nbytes):
    assert parse_budget(text) == nbytes


def test_auto_budget_is_left_for_the_gpu_and_needs_one():
    assert parse_budget("auto") is None
    if not __import__("torch").cuda.is_available():
        with pytest.raises(UsageError, match="budget 'auto' needs a CUDA GPU"):
            resolve_budgets(["auto"])


@pytest.mark.parametrize("text", ["16XB", "GiB", "-4GiB", "16 Gi", "0", "0.1B", "1e9", ""])
def test_bad_budget_names_value_and_units(text):
    with pytest.raises(ValueError, match="budget .* is invalid") as e:
        parse_budget(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize("text, margin", [("5%", 0.05), ("0.05", 0.05), ("0%", 0.0), ("0", 0.0)])
def test_margins_parse_as_a_share(text, margin):
    assert parse_margin(text) == pytest.approx(margin)


@pytest.mark.parametrize("text", ["100%", "5", "-1%", "lots"])
def test_bad_margin_is_refused(text):
    with pytest.raises(ValueError, match="margin .* is invalid"):
        parse_margin(text)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "16XB"], "budget '16XB' is invalid; valid: a size such as 16GiB"),
        (["--budget", "16GiB", "--margin", "150%"], "margin '150%' is invalid"),
        (["--budget", "16GiB", "--device", "cpu"], "device 'cpu' is invalid for max-batch"),
        (["--suite", "smoke"], "no budget to search: give --budget"),
    ],
)
def test_bad_max_batch_input_is_one_line_exit_2_and_writes_nothing(
    run_cli, tmp_path, argv, message
):
    code, out, err = run_cli("max-batch", "--out", str(tmp_path / "r"), *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_run_refuses_a_bad_budget(run_cli, tmp_path):
    code, _, err = run_cli("run", "--suite", "smoke", "--budget", "12 potatoes", "--dry-run")
    assert code == 2 and "budget '12 potatoes' is invalid" in err


# ----------------------------------------------------------------------------- search


def _probe_of(peak, limit):
    """A mocked memory model and the batches the search asked it for."""
    asked = []

    def probe(b: int) -> Probe:
        asked.append(b)
        return Probe(b, peak(b) <= limit, peak(b))

    return probe, asked


def _scanned_boundary(peak, limit) -> int:
    """The boundary by walking every batch up from 1: independent of the search."""
    b = 0
    while peak(b + 1) <= limit:
        b += 1
    return b


LIMIT = 16 * GiB
MODELS = {
    # name: (peak(b) in bytes, most probes allowed)
    "linear": (lambda b: 265_000_000 + 59_300_000 * b, 4),
    "reversible": (lambda b: 273_000_000 + 6_771_000 * b, 4),
    "slightly convex": (lambda b: 300_000_000 + 50_000_000 * b + 8_000 * b * b, 8),
    "concave": (lambda b: 300_000_000 + 400_000_000 * math.sqrt(b), 14),
    # memory that grows every 8 samples (allocator blocks): flat stretches defeat the secant
    "step-wise": (lambda b: 300_000_000 + 400_000_000 * math.ceil(b / 8), 14),
}


@pytest.mark.parametrize("name", MODELS)
def test_search_finds_the_exact_boundary_in_a_handful_of_probes(name):
    peak, most = MODELS[name]
    probe, asked = _probe_of(peak, LIMIT)
    found = find_boundary(probe, LIMIT)
    expected = _scanned_boundary(peak, LIMIT)
    assert found.max_batch == expected
    assert peak(found.max_batch) <= LIMIT < peak(found.max_batch + 1)
    assert found.fit.batch == expected and found.failed.batch == expected + 1
    assert len(asked) <= most, asked
    assert len(asked) == len(set(asked))  # no batch probed twice


def test_linear_memory_takes_two_probes_after_the_fit():
    # peak = 1 GB + 10 MB/sample: 16 GiB holds (17179869184 - 1e9) // 1e7 = 1617 samples
    probe, asked = _probe_of(lambda b: 1_000_000_000 + 10_000_000 * b, LIMIT)
    assert find_boundary(probe, LIMIT).max_batch == 1617
    assert asked == [1, 16, 1617, 1618]


def test_batch_one_that_does_not_fit_is_an_answer_of_zero():
    probe, asked = _probe_of(lambda b: 20 * GiB + b, LIMIT)
    found = find_boundary(probe, LIMIT)
    assert (found.max_batch, found.fit, found.failed.batch) == (0, None, 1)
    assert asked == [1]


def test_a_search_that_reaches_the_cap_says_so():
    probe, asked = _probe_of(lambda b: 1000 + b, LIMIT)
    found = find_boundary(probe, LIMIT)
    assert found.max_batch == MAX_BATCH_CAP and found.capped
    assert len(asked) <= 3


def test_galloping_bounds_a_search_whose_line_points_the_wrong_way():
    # Memory that falls after batch 16 (no real model does): the secant is useless, the
    # gallop still reaches the boundary at 5000 in O(log) probes.
    def peak(b):
        return GiB - 1000 * min(b, 16) + (GiB if b > 5000 else 0)

    probe, asked = _probe_of(peak, int(1.5 * GiB))
    assert find_boundary(probe, int(1.5 * GiB)).max_batch == 5000
    # log2(5000) gallop steps, then at most three probes per halving of the bracket
    assert len(asked) <= math.log2(5000) + 3 * math.log2(4096) + 2


# ------------------------------------------------------------------- the estimate path

TINY_REVVIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
TINY_SUITE = """
description = "tiny max-batch"
[defaults]
budgets = ["24MB"]  # the card's two cuBLAS workspaces (17 MB) and a tiny model
[[group]]
name = "revvit"
models = ["revvit_small"]
resolutions = [32]
modes = ["reversible", "vanilla"]
overrides = { depth = 2, embed_dim = 32, num_heads = 2, patch_size = 8 }
"""


def test_estimate_path_end_to_end_on_a_tiny_model(run_cli, tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    code, _, err = run_cli(
        "max-batch", "--suite", str(suite), "--device", "estimate", "--margin", "10%",
        "--no-isolate", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 0, err
    table = err[err.index("max batch within each budget") : err.index("results: ")]
    assert max(len(line) for line in table.splitlines()) <= 80  # an 80-column terminal
    assert "revvit_small" in table and "max batch" in table
    df = load(tmp_path / "r")
    assert len(df) == 2 and set(df["status"]) == {status.OK}
    limit = int(24_000_000 * 0.9)
    answers = {}
    for _, r in df.iterrows():
        assert (r["batch_size"], r["budget_bytes"], r["margin"]) == (0, 24_000_000, 0.1)
        m = int(r["max_batch"])

        def peak(b, mode=r["mode"]):
            return estimate_memory(
                "revvit_small", batch_size=b, resolution=32, mode=mode, **TINY_REVVIT
            ).peak_bytes

        # The boundary checked against the estimator directly, not through the search.
        assert peak(m) == r["max_batch_peak_bytes"] <= limit < peak(m + 1)
        assert r["next_batch_peak_bytes"] == peak(m + 1)
        assert (r["first_failed_batch"], r["first_failed_status"]) == (m + 1, OVER_BUDGET)
        assert pd.isna(r["peak_bytes"])  # the search is no batch-0 cell
        answers[r["mode"]] = m
    assert answers["reversible"] > answers["vanilla"] > 1
    # --resume skips finished searches: nothing is searched or appended again.
    results = next((tmp_path / "r").rglob("results.jsonl"))
    lines = results.read_text()
    code, _, err = run_cli(
        "max-batch", "--suite", str(suite), "--device", "estimate", "--margin", "10%",
        "--no-isolate", "--out", str(tmp_path / "r"), "--resume",
    )  # fmt: skip
    assert code == 0 and "nothing to resume: all 2 max-batch search(es)" in err
    assert results.read_text() == lines


def test_searches_share_the_estimators_probes_across_budgets():
    launched = []

    def launch(cell, snapshot=None, **_):
        launched.append(cell.batch_size)
        return Outcome(status.OK, measurement=Measurement(peak_bytes=1000 + 10 * cell.batch_size))

    cell = _search_cell(budget=2000)
    alone = search(replace(cell, budget_bytes=3000), _prober(launch)).probes
    launched.clear()
    prober = _prober(launch)
    assert search(cell, prober).max_batch == 100  # (2000 - 1000) / 10
    first = len(launched)
    assert search(replace(cell, budget_bytes=3000), prober).max_batch == 200
    assert len(launched) == len(set(launched))  # batches 1 and 16 launched once for both
    assert len(launched) - first < alone


# ----------------------------------------------------------------------- the cuda path


def _search_cell(budget=16 * GiB, margin=0.0, method="estimate", model="test_tiny_cnn"):
    cell = make_cell(model, resolution=32, batch_size=1, method=method, precision="fp32")
    return replace(cell, batch_size=0, budget_bytes=budget, margin=margin)


class FakeCard:
    """A launcher for both paths: the estimator says 1 GB + 10 MB per sample; the card runs
    batches up to `runs_up_to` and runs out of memory above, and records what it was given."""

    def __init__(self, runs_up_to: int, error_at: int | None = None, estimator_fails=False):
        self.runs_up_to = runs_up_to
        self.error_at = error_at
        self.estimator_fails = estimator_fails
        self.cuda_cells = []

    def __call__(self, cell, snapshot=None, *, counts=False, thop=True):
        b = cell.batch_size
        counted = Counts(params=123) if counts else None
        if cell.method == "estimate" and self.estimator_fails:
            return Outcome(status.ERROR, "NotImplementedError: no fake kernel", counts=counted)
        if cell.method == "estimate":
            m = Measurement(peak_bytes=1_000_000_000 + 10_000_000 * b)
            return Outcome(status.OK, measurement=m, counts=counted)
        self.cuda_cells.append(cell)
        if b == self.error_at:
            return Outcome(status.ERROR, "RuntimeError: cuDNN error", counts=counted)
        if b > self.runs_up_to:
            return Outcome(status.OOM, "OutOfMemoryError: CUDA out of memory", counts=counted)
        m = Measurement(
            peak_bytes=900_000_000 + 10_200_000 * b,
            peak_reserved_bytes=1_000_000_000 + 10_400_000 * b,
            num_alloc_retries=1 if b == self.runs_up_to else 0,
        )
        return Outcome(status.OK, measurement=m, counts=counted)


@pytest.mark.parametrize("runs_up_to", [1500, 1617, 1650, 40])
def test_cuda_bisection_finds_the_largest_batch_that_ran(runs_up_to):
    card = FakeCard(runs_up_to)
    cell = _search_cell(method="cuda", margin=0.05)
    record = search(cell, _prober(card))
    # the estimator's boundary within 16 GiB less 5%: (16320875724 - 1e9) // 1e7
    assert record.estimated_max_batch == 1532
    assert record.status == status.OK
    assert record.max_batch == runs_up_to
    assert (record.first_failed_batch, record.first_failed_status) == (runs_up_to + 1, "oom")
    assert record.max_batch_peak_bytes == 900_000_000 + 10_200_000 * runs_up_to
    assert record.max_batch_reserved_bytes == 1_000_000_000 + 10_400_000 * runs_up_to
    assert record.max_batch_alloc_retries == 1
    assert record.estimated_peak_bytes == 1_000_000_000 + 10_000_000 * runs_up_to
    assert record.params == 123
    tried = [c.batch_size for c in card.cuda_cells]
    assert len(tried) == len(set(tried)) and len(tried) <= 14, tried
    # Every probe ran capped at the budget, never at a smaller batch behind our back.
    assert {(c.budget_bytes, c.margin, c.method) for c in card.cuda_cells} == {
        (16 * GiB, 0.05, "cuda")
    }


def test_cuda_batch_one_oom_is_an_answer_of_zero():
    record = search(_search_cell(method="cuda"), _prober(FakeCard(0)))
    assert (record.status, record.max_batch, record.first_failed_batch) == (status.OK, 0, 1)
    assert record.message.startswith("batch 1 does not fit")


def test_cuda_search_without_an_estimate_starts_from_batch_one():
    card = FakeCard(300, estimator_fails=True)
    record = search(_search_cell(method="cuda"), _prober(card))
    assert (record.status, record.max_batch, record.estimated_max_batch) == (status.OK, 300, None)
    assert card.cuda_cells[0].batch_size == 1


def test_cuda_error_ends_the_search_without_an_answer():
    record = search(_search_cell(method="cuda"), _prober(FakeCard(1700, error_at=1618)))
    assert record.status == status.ERROR
    assert record.max_batch is None
    assert "b=1618" in record.message and "cuDNN error" in record.message


# --------------------------------------------------------------------- run --budget


def test_budget_skips_cells_predicted_not_to_fit():
    card = FakeCard(runs_up_to=10_000)
    cell = replace(_search_cell(method="cuda"), batch_size=2000, budget_bytes=16 * GiB)
    skipped = budget_outcome(cell, slot_for(card))  # 1 GB + 2000 * 10 MB = 21 GB > 16 GiB
    assert skipped.status == status.SKIPPED
    assert skipped.message.startswith("over budget: estimated peak 21.00 GB > 17.18 GB")
    assert card.cuda_cells == []  # nothing ran on the card
    assert budget_outcome(replace(cell, batch_size=100), slot_for(card)) is None  # fits: run it
    estimate_cell = replace(cell, batch_size=100, method="estimate")
    predicted = budget_outcome(estimate_cell, slot_for(card))
    assert predicted.measurement.peak_bytes == 2_000_000_000  # the estimate is the result
    assert budget_outcome(replace(cell, budget_bytes=None), slot_for(card)) is None


def test_run_budget_marks_over_budget_cells_skipped(run_cli, tmp_path, one_thread):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE.replace("[[group]]", "batch_sizes = [1, 4096]\n[[group]]"))
    code, _, err = run_cli(
        "run", "--suite", str(suite), "--device", "estimate", "--budget", "24MB",
        "--modes", "reversible", "--no-isolate", "--no-thop", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 0, err
    df = load(tmp_path / "r").set_index("batch_size")
    assert df.loc[1, "status"] == status.OK and df.loc[1, "peak_bytes"] <= 24_000_000
    assert df.loc[4096, "status"] == status.SKIPPED
    assert df.loc[4096, "message"].startswith("over budget: estimated peak")
    assert set(df["budget_bytes"]) == {24_000_000}


# --------------------------------------------------------------- records and the gate


def _records_file(path, max_batch):
    cell = _search_cell(budget=16 * GiB)
    record = search(cell, _prober(FakeCard(runs_up_to=0)))
    record.max_batch = max_batch
    other = search(replace(cell, budget_bytes=24 * GiB), _prober(FakeCard(runs_up_to=0)))
    path.write_text(record.to_json() + "\n" + other.to_json() + "\n")
    return path


def test_searches_are_records_the_gate_compares_exactly(tmp_path):
    base = load(_records_file(tmp_path / "base.jsonl", 1617))
    assert len(base) == 2  # two budgets of one configuration: two keys
    assert list(base["max_batch"]) == [1617, 2476]  # (budget - 1 GB) // 10 MB
    report = compare(base, load(_records_file(tmp_path / "cur.jsonl", 1616)))
    (row,) = [r for r in report.rows if r.verdict != "ok"]
    assert (row.metric, row.baseline, row.current, row.verdict) == (
        "max_batch",
        1617,
        1616,
        REGRESSION,
    )
    assert "bmax" in row.cell and "within 16GiB" in row.cell
    assert compare(base, base).passed


def test_ordinary_records_keep_matching_without_budget_fields(tmp_path):
    cell = make_cell("test_tiny_cnn", resolution=32, batch_size=2)
    row = json.loads(Record.for_cell(cell, measurement=Measurement(peak_bytes=10)).to_json())
    del row["budget_bytes"], row["margin"]  # written before budgets existed
    (tmp_path / "old.jsonl").write_text(json.dumps(row) + "\n")
    old = load(tmp_path / "old.jsonl")
    assert old.loc[0, "budget_bytes"] is None
    assert tuple(old.loc[0, k] for k in ("batch_size", "budget_bytes")) == (2, None)


def test_report_compares_fp32_searches_on_the_papers_card_with_the_paper(tmp_path):
    from revbench.report import max_batch_table

    cell = _search_cell(model="vit_small_patch16_224")  # 16 GiB: (budget - 1 GB) // 10 MB
    records = [search(c, _prober(FakeCard(0))) for c in (cell, replace(cell, precision="amp-bf16"))]
    (tmp_path / "r.jsonl").write_text("".join(r.to_json() + "\n" for r in records))
    table = max_batch_table(load(tmp_path / "r.jsonl")).splitlines()[2:]  # below the header
    bf16, fp32 = ([cell.strip() for cell in line.split("|")[1:-1]] for line in table)
    assert fp32[4] == "fp32" and fp32[7:] == [
        "1617",
        "17.17",
        "17.18",
        "1618 (over budget)",
        "4",
        "207",
        "7.81",
    ]
    assert bf16[4] == "amp-bf16" and bf16[-2:] == ["-", "-"]  # the paper trained in fp32


# ------------------------------------------------------------------------------ plots


def test_max_batch_bars_overlay_published_batches_on_the_16gb_panel_only():
    from revbench.figures.max_batch import max_batch_bars
    from revbench.figures.style import NoData
    from revbench.published import load_published, max_batch_points

    rows = []
    for rank, (model, family, kind, mode, size) in enumerate(
        [
            ("revbifpn_s0", "RevBiFPN", "reversible", "reversible", "S0"),
            ("tf_efficientnet_b0", "EfficientNet", "baseline", "vanilla", "B0"),
            ("tf_efficientnet_b1", "EfficientNet", "baseline", "vanilla", "B1"),
            ("vit_small_patch16_224", "ViT", "baseline", "vanilla", "S"),
            ("revvit_small", "RevViT", "reversible", "reversible", "S"),
            ("rev_mvit_base", "Rev-MViT", "reversible", "vanilla", "B"),
        ]
    ):
        for budget in (16 * GiB, 80 * GiB):
            row = {"model": model, "variant": "", "mode": mode, "family": family, "kind": kind}
            row |= {"model_rank": rank}  # the order a run's manifest gives (B0 before B1)
            row |= {"size": size, "budget_bytes": budget, "margin": 0.0, "precision": "fp32"}
            row |= {"scenario": "train"}
            rows.append({**row, "max_batch": 300, "first_failed_batch": 301})
    published = max_batch_points(load_published())
    fig = max_batch_bars(pd.DataFrame(rows), published)
    top, bottom = fig.axes[:2]
    assert len(top.patches) == len(bottom.patches) == 6
    assert len(top.collections) == 3 and len(bottom.collections) == 0  # ViT-S, RevViT-S, MViT-B
    # Each baseline stands before the reversible model of the same rank.
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    assert labels == [
        "EfficientNet-B0",
        "RevBiFPN-S0",
        "EfficientNet-B1",
        "ViT-S",
        "RevViT-S",
        "Rev-MViT-B vanilla",
    ]
    bf16 = max_batch_bars(pd.DataFrame(rows).assign(precision="amp-bf16"), published)
    assert len(bf16.axes[0].collections) == 0  # the paper trained in fp32
    with pytest.raises(NoData):
        max_batch_bars(pd.DataFrame(rows).assign(max_batch=None), published)


def test_published_mvit_b_stands_in_for_rev_mvit_vanilla():
    from revbench.published import load_published, max_batch_points

    points = max_batch_points(load_published()).set_index(["model", "mode"])
    assert points.loc[("rev_mvit_base", "vanilla"), "max_batch"] == 89
    assert points.loc[("rev_mvit_base", "vanilla"), "published_model"] == "mvit_base"
    assert points.loc[("revvit_small", "reversible"), "max_batch"] == 1232


def test_small_figures_print_in_a_unit_that_shows_them():
    def launch(cell, snapshot=None, **_):
        return Outcome(status.OK, measurement=Measurement(peak_bytes=5_120))

    cell = replace(_search_cell(method="cuda"), batch_size=4, budget_bytes=1000)
    skipped = budget_outcome(cell, slot_for(launch))
    assert skipped.message == "over budget: estimated peak 5.12 kB > 1.00 kB (1000B)"
    record = search(replace(_search_cell(), budget_bytes=10**6), _prober(launch))
    assert "0.00 GB" not in record.message and "1.00 MB" in record.message
