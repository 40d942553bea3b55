"""A cell: one measurement of a model at one resolution, batch, precision, mode and method."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

METHODS = ("cuda", "estimate", "cpu")

# The fields that identify a cell; results, --resume and the gate match on them.
KEY_FIELDS = (
    "model",
    "variant",
    "mode",
    "resolution",
    "batch_size",
    "precision",
    "scenario",
    "method",
)


def variant_label(overrides: dict) -> str:
    """Readable, order-independent label of model overrides: 'depth=4,embed_dim=64'."""
    return ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))


@dataclass(frozen=True)
class Cell:
    model: str
    resolution: int
    batch_size: int
    precision: str = "fp32"
    scenario: str = "train"
    mode: str = "vanilla"
    method: str = "estimate"
    optimizer: str = "sgd"
    suite: str = ""
    group: str = ""
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    warmup_steps: int = 2
    measure_steps: int = 10
    timeout_s: float = 600.0

    @property
    def variant(self) -> str:
        return variant_label(self.overrides)

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    def label(self) -> str:
        variant = f"[{self.variant}]" if self.overrides else ""
        return (
            f"{self.model}{variant} {self.mode} {self.resolution}px b{self.batch_size} "
            f"{self.precision} {self.scenario} ({self.method})"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        return cls(**json.loads(text))

    def build_model(self):
        """The cell's model, built on the current default device."""
        from revbench.models import create, get_info

        kwargs = dict(self.overrides, img_size=self.resolution)
        if get_info(self.model).kind == "reversible":
            kwargs["mode"] = self.mode
        return create(self.model, **kwargs)
