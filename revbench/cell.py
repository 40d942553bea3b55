"""A cell: one measurement of a model at one resolution, batch, precision, mode and method.

Cells are made by suite expansion (`revbench.suite.make_cell`), which fills in what the
registry knows of the model (family, kind, size, task), so a cell carries everything its
record needs and nothing downstream reads the registry again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .cards import DEFAULT_CARD, check_card

# The fields that identify a cell; results, --resume, load()'s de-duplication and the gate
# match on them. Every field that changes what is measured is here: the optimizer too (AdamW
# keeps two state tensors per parameter, SGD one). The other Cell fields are not, each for a
# reason: family, kind, size and task follow from the model and its overrides (`variant`);
# suite and group only say where the cell was listed; timeout_s decides whether a figure is
# produced, never its value (raising it to rerun timed-out cells is what --resume is for);
# warmup_steps and measure_steps change how a timed figure is sampled, not the step being
# measured: records store them, and --resume and the gate refuse to mix step counts on the
# methods that time steps (`revbench.runner`, `revbench.gate`) rather than treat the same
# step as two cells. budget_bytes and margin are the memory a cell may use (`run --budget`,
# `revbench max-batch`): what fits one budget may not fit another, and a max-batch search
# (batch_size 0: the batch is its answer) is identified by them; None on ordinary cells.
# card is the card an estimate is for (`revbench.cards`): a card's libraries add to the
# figure; a measured cell's is its method's own ("" for cuda: the card it ran on, which
# its record's environment names; "cpu" for cpu).
KEY_FIELDS = (
    "model",
    "variant",
    "mode",
    "resolution",
    "batch_size",
    "precision",
    "scenario",
    "optimizer",
    "method",
    "card",
    "budget_bytes",
    "margin",
)

DEFAULT_OPTIMIZER = "sgd"  # labels name the optimizer only when it is another


def method_card(method: str) -> str | None:
    """The card field of a measured cell: the cuda method measures the card it runs on
    (""), the cpu method the CPU ("cpu"); None for an estimate, which names its card."""
    return {"cuda": "", "cpu": "cpu"}.get(method)


Overrides = tuple[tuple[str, Any], ...]


def freeze_overrides(overrides: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Overrides:
    """Model overrides as sorted (name, value) pairs: hashable, and equal when equal."""
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    return tuple(sorted((str(k), _frozen(v)) for k, v in items))


def _frozen(value: Any) -> Any:
    # TOML and JSON give lists; a tuple hashes and means the same to a model config.
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


def variant_label(overrides: Mapping[str, Any] | Overrides) -> str:
    """Readable, order-independent label of model overrides: 'depth=4,embed_dim=64'.

    Sequences read as the suite wrote them: 'out_indices=[1, 2]'.
    """
    return ",".join(f"{k}={_thawed(v)}" for k, v in freeze_overrides(overrides))


def model_label(model: str, variant: str) -> str:
    """'revvit_small[depth=4]', or the bare name without overrides."""
    return f"{model}[{variant}]" if variant else model


def cell_label(item: Any, batch: str | None = None) -> str:
    """'revvit_small[depth=4] reversible 32px b2 fp32 train (estimate)', with the optimizer
    after the scenario when it is not SGD ('... fp32 train adamw (estimate)').

    `item` is a Cell, a Record or a results row (anything with the key fields by name or
    by item); `batch` replaces the batch size, e.g. "16,32" for a fit over batch sizes.
    """
    get = item.__getitem__ if hasattr(item, "__getitem__") else item.__getattribute__
    b = batch if batch is not None else str(int(get("batch_size")))
    try:
        optimizer = get("optimizer")
    except (KeyError, AttributeError):
        optimizer = DEFAULT_OPTIMIZER
    opt = f" {optimizer}" if optimizer not in (DEFAULT_OPTIMIZER, None) else ""
    try:
        card = get("card")
    except (KeyError, AttributeError):
        card = None
    method = get("method")
    if method == "estimate" and isinstance(card, str) and card not in ("", DEFAULT_CARD):
        method = f"estimate for {card}"
    try:
        budget, margin = get("budget_bytes"), get("margin")
    except (KeyError, AttributeError):
        budget = margin = None
    within = ""
    if _given(budget):
        b = "max" if batch is None and int(get("batch_size")) == 0 else b
        within = f" within {bytes_label(int(budget))}"
        within += f"-{float(margin):.0%}" if _given(margin) and margin else ""
    return (
        f"{model_label(get('model'), get('variant'))} {get('mode')} "
        f"{int(get('resolution'))}px b{b} {get('precision')} {get('scenario')}{opt}{within} "
        f"({method})"
    )


def _given(value: Any) -> bool:
    """Not None and not NaN (results rows carry NaN where a record has None)."""
    return value is not None and value == value


def bytes_label(n: int) -> str:
    """A byte count as written on the command line ('16GiB', '16GB', '300MB'), else in GiB
    or MiB to 2 decimals."""
    units = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20))
    units += (("TB", 10**12), ("GB", 10**9), ("MB", 10**6))
    for unit, size in units:
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    if n < 2**20:
        return f"{n}B"
    return f"{n / 2**30:.2f}GiB" if n >= 2**30 else f"{n / 2**20:.2f}MiB"


def readable_bytes(n: int) -> str:
    """A byte figure in the decimal unit that shows it: '512 B', '1.00 MB', '17.18 GB'
    (never '0.00 GB' for a small budget)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One measurement to make. Equal cells are the same measurement, overrides included."""

    model: str
    family: str  # from the registry: "RevViT", "EfficientNet", ...
    kind: str  # "reversible" or "baseline"
    size: str  # label within the family: "S", "B7", ...
    task: str  # what the step trains: "classify", ...
    resolution: int
    batch_size: int
    precision: str = "fp32"
    scenario: str = "train"
    mode: str = "vanilla"
    method: str = "estimate"
    optimizer: str = "sgd"
    suite: str = ""
    group: str = ""
    overrides: Overrides = ()  # a dict is accepted and frozen
    warmup_steps: int = 2
    measure_steps: int = 10
    timeout_s: float = 600.0
    budget_bytes: int | None = None  # memory the cell may use; None: the whole device
    margin: float | None = None  # fraction of the budget held back (max-batch searches)
    card: str = DEFAULT_CARD  # the card an estimate is for; measured cells: method_card

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides))
        card = method_card(self.method)
        if card is None:  # an estimate: for the card named, the default for ""
            card = check_card(self.card or DEFAULT_CARD)
        object.__setattr__(self, "card", card)

    @property
    def limit_bytes(self) -> int | None:
        """The budget less its margin: what the cuda method caps the allocator at."""
        if self.budget_bytes is None:
            return None
        return int(self.budget_bytes * (1.0 - (self.margin or 0.0)))

    @property
    def variant(self) -> str:
        return variant_label(self.overrides)

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    @property
    def model_key(self) -> tuple:
        """What parameter and MAC counts belong to: the model, its overrides, the side."""
        return (self.model, self.variant, self.resolution)

    @property
    def batchless_key(self) -> tuple:
        """The cell's key but for the batch size: one model's cells at every batch."""
        return tuple(getattr(self, f) for f in KEY_FIELDS if f != "batch_size")

    def label(self) -> str:
        return cell_label(self)

    def to_json(self) -> str:
        data = asdict(self)
        data["overrides"] = dict(self.overrides)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        return cls(**json.loads(text))
