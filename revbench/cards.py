"""The cards an estimate can be for (`--card`), named without torch.

A CUDA card adds memory a CPU step does not have, through the same caching allocator, so
that it counts in `torch.cuda.max_memory_allocated()`: cuBLAS's workspaces, the attention
kernel CUDA picks and what it saves for backward, the optimizer's multi-tensor (foreach)
implementation. What each adds depends on the card's compute capability and on the torch
release (`revbench.methods.cuda_terms`); the card class names the capability.

`cpu` is the step as the CPU kernels run it, none of those terms: what a CPU training
step's allocator records, the figure the estimator is checked against on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    name: str
    capability: tuple[int, int] | None  # CUDA compute capability; None: no CUDA terms
    description: str


CARDS = {
    card.name: card
    for card in (
        # The default: the capability class whose library defaults hold for most cards in
        # use (Volta to Ada: the 8.5 MB cuBLAS workspace, flash attention for 16-bit).
        Card("generic", (8, 0), "a CUDA card of compute capability 8.x (A100, A10, L4, RTX 30/40)"),
        Card("v100", (7, 0), "V100 (compute capability 7.0: no flash attention)"),
        Card("a100", (8, 0), "A100 (compute capability 8.0)"),
        Card("l4", (8, 9), "L4, RTX 40 (compute capability 8.9)"),
        Card("h100", (9, 0), "H100, H200 (compute capability 9.0)"),
        Card("b200", (10, 0), "B200 (compute capability 10.0)"),
        Card("cpu", None, "no card: the step as the CPU kernels run it"),
    )
}
DEFAULT_CARD = "generic"

# What an estimate for a card leaves out, each for a reason docs/measuring.md gives ("What
# a card adds"): no rule sizes the first three without the card; masked or grouped-head
# attention is not routed to the card's kernel. Said in the run's manifest
# (`revbench.methods.cuda_terms.card_terms`) and by max-batch.
LEFT_OUT = (
    "cuDNN's convolution workspaces",
    "cuDNN's batch-norm reserve",
    "kernels' own temporaries",
    "masked or grouped-head attention's CUDA kernel (its CPU kernel is counted)",
)


def check_card(name: str) -> str:
    """`name` if it names a card class, else a ValueError listing the valid ones."""
    if name not in CARDS:
        raise ValueError(f"card {name!r} is invalid; valid: {', '.join(CARDS)}")
    return name


def card_capability(name: str) -> tuple[int, int] | None:
    """The compute capability of card class `name` ('' is the default card); None: cpu."""
    return CARDS[check_card(name or DEFAULT_CARD)].capability
