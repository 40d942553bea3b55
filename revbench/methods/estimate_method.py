"""The `estimate` method as the harness sees it: its facts, the estimator's version, and
which cells it steps on real tensors. The estimator itself (revbench.methods.estimate and
estimate_dense, with torch) loads with the first cell the method measures, so a run whose
cells all come from the estimate cache never loads it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from revbench.models import get_info

from ..axes import cell_ddp
from ..cell import Cell
from ..measurement import Measurement
from ..tasks import get_task
from .base import Method

if TYPE_CHECKING:
    from .estimate import StepEstimator
    from .step_trace import MemoryEstimate

# Bump whenever the estimator's output changes for any cell: persistent caches of its
# figures are keyed on it. 2: estimates are for a card (cuBLAS workspaces, the optimizer's
# foreach implementation and host step counts), detectors at their data sizes' maxima.
# 3: the card's attention kernel and fused dropout (cuda_kernels).
ESTIMATOR_VERSION = 3


def on_real_tensors(cell: Cell) -> bool:
    """Whether the cell's step sizes tensors from data (NMS, sampling), which fake tensors
    refuse: then it is estimated on real tensors (estimate_dense.py). The task says which
    of its scenarios are shaped by the batch alone (`Task.shape_only_scenarios`); a
    data-parallel step is a train step."""
    scenario = "train" if cell_ddp(cell) else cell.scenario
    return scenario not in get_task(cell.task).shape_only_scenarios


class EstimateMethod(Method):
    """The estimate method for one cell (see revbench.methods.estimate).

    A worker serves cell after cell: the method keeps a `StepEstimator` per model (the cell
    but its batch size), so a model's other batch sizes, and max-batch's probes, reuse its
    built model and warm-up, and from the third batch size on its two traces.
    """

    name = "estimate"
    batches_share_work = True  # StepEstimator: two traces serve every batch size
    MODELS_KEPT = 4  # estimators kept, least recently used dropped first

    def __init__(self) -> None:
        self._estimators: OrderedDict[Cell, StepEstimator] = OrderedDict()

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        # start-up: the estimator (and torch) load with the first cell measured
        from ..scenario import build_model
        from .estimate import StepEstimator, amp_policy
        from .estimate_dense import estimate_dense_memory

        if on_real_tensors(cell):  # data-dependent detectors: real tensors, see estimate.py
            with amp_policy(cell.precision):
                est = estimate_dense_memory(
                    lambda: build_model(cell),
                    task=cell.task,
                    batch_size=cell.batch_size,
                    resolution=cell.resolution,
                    warmup_resolution=get_info(cell.model).min_resolution,
                    scenario=cell.scenario,
                    precision=cell.precision,
                    optimizer=cell.optimizer,
                    card=cell.card,
                )
            return measurement_of(est)
        key = replace(cell, batch_size=0)
        estimator = self._estimators.pop(key, None)
        if estimator is None:
            ddp = cell_ddp(cell)
            estimator = StepEstimator(
                lambda: build_model(cell),  # the batch size plays no part in the model
                resolution=cell.resolution,
                scenario="train" if ddp else cell.scenario,
                ddp=ddp,
                precision=cell.precision,
                optimizer=cell.optimizer,
                task=cell.task,
                card=cell.card,
            )
        est = estimator.estimate(cell.batch_size)  # a failed step keeps no estimator
        self._estimators[key] = estimator
        while len(self._estimators) > self.MODELS_KEPT:
            self._estimators.popitem(last=False)
        return measurement_of(est)


def measurement_of(est: MemoryEstimate) -> Measurement:
    """A cell's measurement from the estimator's answer."""
    return Measurement(
        peak_bytes=est.peak_bytes,
        peak_reserved_bytes=est.peak_reserved_bytes,
        fragmentation_bytes=est.fragmentation_bytes,
        **{f"mem_{name}_bytes": nbytes for name, nbytes in est.by_category.items()},
        estimator_version=ESTIMATOR_VERSION,
    )
