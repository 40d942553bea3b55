"""What an estimate for a card adds to the CPU kernels' step (revbench.methods.cuda_terms):
each term pinned to the rule it implements, on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from revbench.cards import CARDS, card_capability
from revbench.methods import estimate
from revbench.methods.cuda_terms import (
    LibraryRules,
    blas_call,
    kept_workspaces,
    library_rules,
    workspace_config_bytes,
)
from revbench.methods.estimate import StepEstimator, estimate_memory

MiB = 2**20
DEFAULT_WS = 4096 * 1024 * 2 + 16 * 1024 * 8  # CublasHandlePool.cpp's default: 8,519,680


class LinearNet(nn.Module):
    """Pooled image -> two linear layers (cuBLASLt in the forward, cuBLAS in the backward)."""

    num_classes = 10

    def __init__(self, width: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(3, width)
        self.fc2 = nn.Linear(width, self.num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(x.mean((2, 3))).relu())


class ConvNet(nn.Module):
    """No matrix product at all: cuDNN's, not cuBLAS's (no workspace kept)."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class WideNet(nn.Module):
    """Weights far above the activations at batch 1: the peak is the optimizer step's."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 1024, bias=False)
        self.fc2 = nn.Linear(1024, 1024, bias=False)
        self.fc3 = nn.Linear(1024, self.num_classes, bias=False)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(x.mean((2, 3)))))


# ------------------------------------------------------------------------ the rules


def test_workspace_config_is_the_sum_of_its_pairs():
    assert workspace_config_bytes(":4096:2:16:8") == DEFAULT_WS == 8_519_680
    assert workspace_config_bytes(":4096:8") == 32 * MiB
    assert workspace_config_bytes(":1024:1") == MiB
    assert workspace_config_bytes("nonsense") is None  # torch warns and keeps its default


@pytest.mark.parametrize(
    "version, capability, nbytes, lt",
    [
        ("2.4.0", (8, 0), DEFAULT_WS, "per-call"),
        ("2.8.1", (9, 0), 32 * MiB, "per-call"),  # Hopper: 32 MiB since before 2.4
        ("2.9.0", (9, 0), 32 * MiB, "kept"),
        ("2.11.0+cu128", (10, 0), DEFAULT_WS, "kept"),  # 2.11: compute capability 9.0 only
        ("2.11.0", (7, 0), DEFAULT_WS, "kept"),
        ("2.12.0", (10, 0), 32 * MiB, "shared"),  # pytorch#175344: majors 9, 10, 12
        ("2.12.0", (12, 0), 32 * MiB, "shared"),
        ("2.13.0", (11, 0), DEFAULT_WS, "shared"),
        ("2.14.1", (11, 0), 32 * MiB, "shared"),  # pytorch#189312 adds major 11
        ("2.14.1", (8, 9), DEFAULT_WS, "shared"),
    ],
)
def test_library_rules_by_release_and_card(version, capability, nbytes, lt):
    rules = library_rules(capability, version, environ={})
    assert (rules.cublas_bytes, rules.lt, rules.lt_bytes, rules.verified) == (nbytes, lt, MiB, True)


def test_library_rules_outside_the_covered_releases_say_so():
    old, new = library_rules((8, 0), "2.2.0", {}), library_rules((8, 0), "2.15.0", {})
    assert (old.release, old.verified, new.release, new.verified) == ((2, 4), False, (2, 14), False)
    assert "unverified" in new.describe() and "unverified" not in library_rules((8, 0)).describe()


def test_library_rules_read_the_environment():
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8", "CUBLASLT_WORKSPACE_SIZE": "4096"}
    rules = library_rules((9, 0), "2.10.0", env)
    assert (rules.cublas_bytes, rules.lt_bytes) == (16 * 1024 * 8, 4 * MiB)
    # An unparsable config: the default, as torch falls back to it.
    assert (
        library_rules((8, 0), "2.10.0", {"CUBLAS_WORKSPACE_CONFIG": "x"}).cublas_bytes == DEFAULT_WS
    )


def test_blas_calls_are_classified_as_cuda_dispatches_them():
    a, b, bias = torch.empty(4, 8), torch.empty(8, 16), torch.empty(16)
    aten = torch.ops.aten
    assert blas_call(aten.addmm.default, (bias, a, b), {}) == "lt"
    assert blas_call(aten.addmm.default, (bias, a, b), {"beta": 0}) == "blas"
    assert blas_call(aten.addmm.default, (torch.empty(4, 16), a, b), {}) == "blas"  # 2-D bias
    assert blas_call(aten.addmm.default, (bias, a[:1], b), {}) == "blas"  # a side of 1
    assert blas_call(aten.mm.default, (a, b), {}) == "blas"
    assert blas_call(aten.bmm.default, (a[None], b[None]), {}) == "blas"
    assert blas_call(aten.convolution.default, (), {}) is None
    # Whole under inference_mode: linear is addmm (cuBLASLt) with a bias, mm without.
    w = torch.empty(16, 8)
    assert blas_call(aten.linear.default, (a, w, bias), {}) == "lt"
    assert blas_call(aten.linear.default, (a[None], w, bias), {}) == "lt"  # contiguous 3-D
    assert blas_call(aten.linear.default, (a, w), {}) == "blas"
    assert blas_call(aten.matmul.default, (a, b), {}) == "blas"


def test_kept_workspaces_one_per_thread_plus_cublaslt_where_kept():
    calls = {("forward", "lt"), ("backward", "blas")}
    shared = LibraryRules((2, 14), True, DEFAULT_WS, MiB, "shared")
    kept = LibraryRules((2, 10), True, DEFAULT_WS, MiB, "kept")
    assert [w.nbytes for w in kept_workspaces(shared, calls)] == [DEFAULT_WS, DEFAULT_WS]
    assert [(w.thread, w.library) for w in kept_workspaces(kept, calls)] == [
        ("forward", "cublas"),
        ("forward", "cublaslt"),
        ("backward", "cublas"),
    ]
    assert kept_workspaces(kept, set()) == []


def test_every_card_names_a_capability_but_cpu():
    assert card_capability("cpu") is None
    assert all(card_capability(name) for name in CARDS if name != "cpu")
    assert card_capability("") == card_capability("generic")
    with pytest.raises(ValueError, match="card 'x' is invalid; valid: generic"):
        card_capability("x")


# ------------------------------------------------------------------ in the estimate


def _est(net, card, **kw):
    return estimate_memory(net, batch_size=kw.pop("batch_size", 4), resolution=8, card=card, **kw)


def test_train_step_on_a_card_keeps_a_workspace_per_thread():
    cpu, card = _est(LinearNet, "cpu"), _est(LinearNet, "generic")
    assert card.by_category["library_workspace"] == 2 * DEFAULT_WS
    assert card.peak_bytes == cpu.peak_bytes + 2 * DEFAULT_WS
    assert card.peak_bytes == sum(card.by_category.values())
    assert {k: v for k, v in card.by_category.items() if k != "library_workspace"} == {
        k: v for k, v in cpu.by_category.items() if k != "library_workspace"
    }
    # The allocator model holds them too (as the warm-up made them, before the step).
    alloc = [e.size for e in card.events if e.action == "alloc"]
    assert alloc.count(DEFAULT_WS) == 2


def test_inference_and_matmul_free_models_keep_fewer():
    assert (
        _est(LinearNet, "generic", scenario="infer").by_category["library_workspace"] == DEFAULT_WS
    )
    assert _est(ConvNet, "generic").by_category["library_workspace"] == 0
    assert _est(ConvNet, "generic").peak_bytes == _est(ConvNet, "cpu").peak_bytes


def test_the_card_class_and_the_environment_size_the_workspace(monkeypatch):
    h100 = _est(LinearNet, "h100").by_category["library_workspace"]
    assert h100 == 2 * 32 * MiB  # compute capability 9.0 in every covered release
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":1024:2")
    assert _est(LinearNet, "h100").by_category["library_workspace"] == 2 * 2 * MiB


def test_cublaslt_per_call_workspace_is_a_transient_of_the_call(monkeypatch):
    # torch <= 2.8: gemm_and_bias allocates its 1 MiB for the call, beside the output.
    rules = library_rules((8, 0), "2.8.0", {})
    monkeypatch.setattr(estimate, "card_library", lambda card: rules)
    est = _est(LinearNet, "generic")
    events = list(est.events)
    lt = [i for i, e in enumerate(events) if e.action == "alloc" and e.size == MiB]
    assert len(lt) == 2  # fc1 and fc2, each freed right after
    for i in lt:
        assert events[i + 1].action == "free" and events[i + 1].id == events[i].id
    # The tiny network's peak is at a call, its workspace allocated beside the output.
    assert est.by_category["library_workspace"] == 2 * DEFAULT_WS + MiB


def test_extrapolation_holds_on_a_card():
    direct = StepEstimator(lambda: LinearNet(32), resolution=8, card="a100")
    from_two = StepEstimator(lambda: LinearNet(32), resolution=8, card="a100")
    from_two.estimate(2), from_two.estimate(4)
    assert from_two.estimate(16) == direct.estimate(16)
    assert from_two.steps_run == 2


def test_adamw_on_a_card_runs_foreach_and_keeps_step_counts_on_the_host():
    cpu = _est(WideNet, "cpu", optimizer="adamw", batch_size=1)
    card = _est(WideNet, "generic", optimizer="adamw", batch_size=1)
    sizes = [4 * 3 * 1024, 4 * 1024 * 1024, 4 * 1024 * 10]  # fc1, fc2, fc3 weights
    weights = sum(-(-n // 512) * 512 for n in sizes)
    # The peak is in the optimizer step. On the card: both moments, and foreach's sqrt of
    # every second moment at once (divided and shifted in place); the step counts are host
    # tensors. On the CPU: both moments, the three step counts, and the per-parameter
    # loop's temporaries at fc2: its sqrt and the quotient of it, beside fc1's quotient
    # that the loop variable still holds.
    assert card.by_category["optimizer_state"] == 3 * weights
    assert cpu.by_category["optimizer_state"] == 2 * weights + 3 * 512 + 2 * sizes[1] + sizes[0]
    same = ("parameters", "gradients", "other")
    assert all(card.by_category[k] == cpu.by_category[k] for k in same)
