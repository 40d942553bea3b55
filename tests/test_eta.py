"""The time left: expected cell costs from the data table, corrected by the pace."""

from __future__ import annotations

from dataclasses import replace

import pytest

from revbench.eta import (
    DENSE_SECONDS,
    DENSE_SIDE,
    EXTRAPOLATED,
    SETTLED,
    SHARED_PARTS,
    Eta,
    model_cost,
    model_seconds,
    suite_seconds,
)
from revbench.progress import time_left
from revbench.suite import make_cell


def _cells(model: str, batches=(8, 16, 32), **fields):
    cell = make_cell(model, resolution=224, batch_size=batches[0], **fields)
    return [replace(cell, batch_size=b) for b in batches]


def test_every_cost_in_the_table_is_a_registered_model_of_its_family():
    from revbench.models import get_info

    for model, (family, seconds) in model_seconds().items():
        assert get_info(model).family == family and seconds > 0


def test_a_model_not_in_the_table_costs_its_familys_median():
    family = [s for f, s in model_seconds().values() if f == "RevBiFPN"]
    assert model_cost("no_such_model", "RevBiFPN") == sorted(family)[len(family) // 2]


def test_estimator_cells_share_their_configurations_cost():
    cells = _cells("revbifpn_s0")
    eta = Eta(cells, shares_work=True)
    whole = model_cost("revbifpn_s0", "RevBiFPN")
    assert eta.left_cost == pytest.approx(whole * (sum(SHARED_PARTS) + EXTRAPOLATED))
    eta.done(cells[2].key)  # whichever finishes first carries the first part
    assert eta.done_cost == pytest.approx(whole * SHARED_PARTS[0])


def test_time_left_is_the_cost_left_at_the_pace_so_far():
    # A cheap model's three cells, then a model ten times its cost: after the cheap one
    # the mean pace per cell promises little; the costs know better.
    cheap, dear = _cells("revvit_small", mode="vanilla"), _cells("revbifpn_s6")
    eta = Eta(cheap + dear, shares_work=False)
    for cell in cheap:
        eta.done(cell.key)
    pace = 30.0 / eta.done_cost  # 30 s for the cheap model's cells
    assert eta.seconds_left(30.0) == pytest.approx(pace * 3 * model_cost("revbifpn_s6", ""))
    assert time_left(30.0, 3, 6) == "<1 min"  # the mean pace per cell: another 30 s
    assert time_left(30.0, 3, 6, eta) != "<1 min"


def test_nothing_finished_yet_is_unknown():
    eta = Eta(_cells("revvit_small"), shares_work=True)
    assert eta.seconds_left(10.0) is None and time_left(10.0, 0, 3, eta) == "?"


def test_a_dense_cell_runs_on_its_own_and_costs_minutes():
    # torchvision's detectors run a real CPU step per cell on the estimator: no shared
    # traces, 1-3 minutes each.
    cells = _cells("revvit_small")  # 224 px
    eta = Eta(cells, shares_work=True, dense=lambda cell: cell.batch_size > 8)
    whole = model_cost("revvit_small", "RevViT")
    dense = sum(DENSE_SECONDS) / 2 * (224 / DENSE_SIDE) ** 2  # the work goes with the pixels
    assert eta.left_cost == pytest.approx(whole * SHARED_PARTS[0] + 2 * dense)


def test_a_suites_cost_is_its_cells():
    cells = _cells("revbifpn_s0") + _cells("resnet50", mode="vanilla")
    assert suite_seconds(cells) == pytest.approx(
        (model_cost("revbifpn_s0", "") + model_cost("resnet50", ""))
        * (sum(SHARED_PARTS) + EXTRAPOLATED)
    )


def test_before_the_pace_settles_the_table_over_the_workers_is_the_guess():
    # The first cell's time is mostly the workers' start-up: with little of the cost done,
    # the time left is the table's seconds left over the run's workers, not the pace.
    cells = _cells("revvit_small") + _cells("revbifpn_s6") + _cells("revcol_large")
    eta = Eta(cells, shares_work=False, workers=2)
    eta.done(cells[0].key)
    assert eta.done_cost < SETTLED * (eta.done_cost + eta.left_cost)
    assert eta.seconds_left(60.0) == pytest.approx(eta.left_cost / 2)  # whatever the clock


def test_costliest_configurations_go_first_each_in_its_own_order():
    vit = _cells("vit_small_patch16_224")
    s0 = _cells("revbifpn_s0", mode="reversible")
    s0_vanilla = _cells("revbifpn_s0", batches=(2, 4, 8), mode="vanilla")
    col = _cells("revcol_tiny", mode="reversible")
    cells = vit + s0 + col + s0_vanilla
    assert model_cost("revbifpn_s0", "RevBiFPN") > model_cost("revcol_tiny", "RevCol")
    assert model_cost("revcol_tiny", "RevCol") > model_cost("vit_small_patch16_224", "ViT")
    ordered = Eta(cells, shares_work=True).costliest_first(cells)
    # equal costs keep the suite's order; a configuration's batch sizes stay in theirs
    assert ordered == s0 + s0_vanilla + col + vit
