"""The values a cell's axes may take (scenario, precision, optimizer), named without torch.

Suite expansion validates against these; the step (`revbench.scenario`) and data-parallel
runs (`revbench.ddp`) build what they name. Kept free of heavy imports so that checking a
suite or a command line costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("train", "infer")
# and `ddp-N`: the train step under DistributedDataParallel on N ranks (revbench.ddp)
DDP_SCENARIO = "ddp"
SCENARIO_CHOICES = (*SCENARIOS, f"{DDP_SCENARIO}-N")
PRECISIONS = ("fp32", "amp-bf16", "amp-fp16")
OPTIMIZERS = ("sgd", "adamw")


def world_size_of(scenario: str) -> int | None:
    """N for a `ddp-N` scenario, None for any other."""
    prefix = DDP_SCENARIO + "-"
    if scenario.startswith(prefix) and scenario[len(prefix) :].isdigit():
        n = int(scenario[len(prefix) :])
        return n if n >= 1 else None
    return None


def check_scenario(name: str) -> str:
    """`name` if it is a scenario (train, infer, ddp-N with N >= 1), else a ValueError."""
    if name in SCENARIOS or world_size_of(name) is not None:
        return name
    raise ValueError(f"scenario {name!r} is invalid; valid: {', '.join(SCENARIO_CHOICES)}")


@dataclass(frozen=True)
class DdpConfig:
    """The DistributedDataParallel settings a cell runs (and the estimator models) with."""

    world_size: int
    bucket_cap_mb: float | None = None  # None: DDP's default (25 MiB, first bucket 1 MiB)
    gradient_as_bucket_view: bool = False


def cell_ddp(cell) -> DdpConfig | None:
    """The DDP settings of a `ddp-N` cell (DDP's defaults), None for any other scenario."""
    world_size = world_size_of(cell.scenario)
    return None if world_size is None else DdpConfig(world_size)
