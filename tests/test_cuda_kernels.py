"""The kernels an estimate for a card runs where the CPU runs others
(revbench.methods.cuda_kernels): attention by sdp_utils.cpp's rules, dropout's fused kernel,
each pinned to what it saves, on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from revbench.methods import estimate
from revbench.methods.cuda_kernels import attention_kernel
from revbench.methods.cuda_terms import library_rules
from revbench.methods.estimate import StepEstimator, estimate_memory

HEADS, DIM = 2, 8


class AttentionNet(nn.Module):
    """Pixels as tokens -> packed qkv -> scaled_dot_product_attention -> mean -> classes."""

    num_classes = 10

    def __init__(self, dim: int = DIM, p: float = 0.0):
        super().__init__()
        self.dim, self.p = dim, p
        self.qkv = nn.Linear(3, 3 * HEADS * dim)
        self.head = nn.Linear(HEADS * dim, self.num_classes)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)  # (B, L, 3)
        b, n, _ = tokens.shape
        qkv = self.qkv(tokens).reshape(b, n, 3, HEADS, self.dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.p)
        return self.head(out.transpose(1, 2).reshape(b, n, -1).mean(1))


class CheckpointedAttention(AttentionNet):
    """The attention recomputed in the backward, as checkpointed and reversible models do."""

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(super().forward, x, use_reentrant=False)


class DropoutNet(nn.Module):
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 64)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(64, self.num_classes)

    def forward(self, x):
        return self.fc2(self.drop(self.fc1(x.mean((2, 3)))))


def _allocs(net, card, batch_size=4, resolution=6, **kw):
    est = StepEstimator(net, resolution=resolution, card=card, **kw)
    memory = est.estimate(batch_size)
    return [e.size for e in memory.events if e.action == "alloc"], est


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize(
    "capability, release, dtype, head_dim, grad, dropout, kernel",
    [
        ((8, 0), (2, 11), F32, 64, True, 0.0, "efficient"),  # flash: 16-bit inputs only
        ((8, 0), (2, 11), F16, 64, True, 0.0, "flash"),
        ((8, 0), (2, 11), BF16, 64, True, 0.0, "flash"),
        ((8, 0), (2, 11), F16, 60, True, 0.0, "flash"),  # padded to 64 (attention.cpp)
        ((8, 0), (2, 11), F16, 264, True, 0.0, "efficient"),  # flash: head dim up to 256
        ((8, 6), (2, 11), F16, 224, True, 0.0, "efficient"),  # sm86: no flash backward
        ((8, 6), (2, 11), F16, 224, False, 0.0, "flash"),  # ... but its forward
        ((8, 6), (2, 11), F16, 256, True, 0.0, "flash"),
        ((8, 6), (2, 11), F16, 256, True, 0.1, "efficient"),
        ((7, 0), (2, 11), F16, 64, True, 0.0, "efficient"),  # no flash before sm80
        ((7, 0), (2, 11), BF16, 64, True, 0.0, "math"),  # nor bf16 in the efficient kernel
        ((7, 0), (2, 11), F16, 60, True, 0.0, "math"),  # efficient: 8-element alignment
        ((7, 0), (2, 11), F32, 62, True, 0.0, "efficient"),  # ... 1 in float32 on sm70
        ((8, 0), (2, 11), F32, 62, True, 0.0, "math"),  # ... 4 in float32 on sm80+
        ((9, 0), (2, 10), F16, 64, True, 0.0, "flash"),
        ((9, 0), (2, 11), F16, 64, True, 0.0, "cudnn"),  # cuDNN first on sm90 from 2.11
        ((9, 0), (2, 11), F16, 264, True, 0.0, "efficient"),
        ((9, 0), (2, 11), F32, 64, True, 0.0, "efficient"),  # cuDNN: 16-bit only
        ((8, 9), (2, 11), F16, 64, True, 0.0, "flash"),
        ((10, 0), (2, 6), F16, 64, True, 0.0, "math"),  # built up to sm90 then
        ((10, 0), (2, 8), F16, 64, True, 0.0, "flash"),
        ((10, 0), (2, 11), F16, 64, True, 0.0, "cudnn"),
    ],
)
def test_attention_kernel_by_card_release_dtype_and_head_dim(
    capability, release, dtype, head_dim, grad, dropout, kernel
):
    chosen = attention_kernel(
        capability,
        release,
        dtype=dtype,
        head_dim=head_dim,
        head_dim_v=head_dim,
        dropout_p=dropout,
        needs_grad=grad,
    )
    assert chosen == kernel


def test_flash_takes_causal_attention_only_when_square():
    kw = dict(dtype=F16, head_dim=64, head_dim_v=64, is_causal=True)
    assert attention_kernel((8, 0), (2, 11), seq_q=16, seq_k=16, **kw) == "flash"
    assert attention_kernel((8, 0), (2, 11), seq_q=16, seq_k=32, **kw) == "efficient"


def test_efficient_attention_saves_log_sum_exp_rows_padded_to_32():
    batch, tokens = 4, 6 * 6  # 36 tokens: 64 rows of log-sum-exp on the card
    cpu, _ = _allocs(AttentionNet, "cpu")
    card, est = _allocs(AttentionNet, "generic")
    assert est.kernels.chosen == {"efficient": 1}
    assert batch * HEADS * 64 * 4 in card and batch * HEADS * 64 * 4 not in cpu
    assert batch * HEADS * tokens * 4 in cpu  # the CPU's flash kernel: one row per token


def test_amp_attention_runs_flash_on_sm80_and_efficient_on_v100():
    _, a100 = _allocs(AttentionNet, "a100", precision="amp-fp16")
    _, v100 = _allocs(AttentionNet, "v100", precision="amp-fp16")
    assert a100.kernels.chosen == {"flash": 1} and v100.kernels.chosen == {"efficient": 1}


def test_attention_dropout_keeps_fused_kernels_on_the_card_and_math_on_the_cpu():
    # On the CPU dropout rules its flash kernel out: the math path saves the (L, L)
    # weights and the dropout mask; the card's efficient kernel saves neither.
    batch, tokens = 4, 36
    weights = batch * HEADS * tokens * tokens * 4
    cpu, _ = _allocs(lambda: AttentionNet(p=0.1), "cpu")
    card, est = _allocs(lambda: AttentionNet(p=0.1), "generic")
    assert est.kernels.chosen == {"efficient": 1}
    assert weights in cpu and weights not in card


def test_dropout_on_a_card_saves_a_one_byte_mask():
    batch = 4
    cpu, _ = _allocs(DropoutNet, "cpu", batch_size=batch)
    card, _ = _allocs(DropoutNet, "generic", batch_size=batch)
    assert batch * 64 * 4 in cpu  # the CPU's noise tensor, float32
    assert batch * 64 in card and cpu.count(batch * 64 * 4) > card.count(batch * 64 * 4)


def test_card_kernels_keep_extrapolation_exact_and_categories_summing():
    direct = StepEstimator(AttentionNet, resolution=6, card="generic")
    from_two = StepEstimator(AttentionNet, resolution=6, card="generic")
    from_two.estimate(2), from_two.estimate(4)
    assert from_two.estimate(8) == direct.estimate(8)
    memory = estimate_memory(AttentionNet, batch_size=4, resolution=6, card="h100")
    assert memory.peak_bytes == sum(memory.by_category.values())


def test_flash_pads_the_head_dimension_to_eight():
    batch, tokens = 4, 36
    allocs, est = _allocs(lambda: AttentionNet(dim=6), "a100", precision="amp-fp16")
    assert est.kernels.chosen == {"flash": 1}
    padded = batch * HEADS * tokens * 8 * 2  # q, k and v copied at head dim 8, fp16
    assert allocs.count(padded) >= 3


def test_random_state_on_the_host_is_not_counted(monkeypatch):
    # The memory-efficient kernel's seed and offset are host scalars; flash's are on the
    # card from torch 2.7 ((2,) and () uint64), on the host before.
    _, est = _allocs(AttentionNet, "generic")
    assert est.kernels.chosen == {"efficient": 1}
    efficient = _ledger_sizes(est)
    assert 8 not in efficient
    flash = _ledger_sizes(_allocs(AttentionNet, "a100", precision="amp-fp16")[1])
    assert 16 in flash and 8 in flash
    old = library_rules((8, 0), "2.6.0", {})
    monkeypatch.setattr(estimate, "card_library", lambda card: old)
    flash_26 = _ledger_sizes(_allocs(AttentionNet, "a100", precision="amp-fp16")[1])
    assert 16 not in flash_26 and 8 not in flash_26


def _ledger_sizes(est) -> list[int]:
    return list(est._traced[0].sizes)


def test_a_recomputation_in_the_backward_runs_the_card_kernel_too():
    # Autograd runs the backward without the caller's torch function modes: the card's
    # kernel must still be the one recomputed (checkpoint compares what both saved).
    _, est = _allocs(CheckpointedAttention, "generic")
    assert est.kernels.chosen == {"efficient": 2}


def test_the_cpu_card_runs_the_cpu_kernels():
    _, est = _allocs(AttentionNet, "cpu")
    assert est.kernels is None
