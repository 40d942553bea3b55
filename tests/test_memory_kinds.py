"""The three memory kinds (allocated, reserved, process), predicted and measured.

- The estimator's reserved prediction: the step's allocation trace agrees with its
  allocated peak, the batch is counted, figures are deterministic.
- Amp estimates make CUDA's autocast casts (expected dtypes from PyTorch's documented CUDA
  op lists, as data here), and the CPU's own rules come back after.
- A recorded snapshot replays to "simulated vs real reserved" from the command line.
- The cuda method's NVML reading, on a fake pynvml; a calibration on a real GPU.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from revbench import allocator
from revbench.autocast_policy import CUDA_POLICY, cpu_overrides, cuda_cast_policy
from revbench.caching_allocator import MiB, peak_live_bytes, round_size
from revbench.environment import cuda_settings, environment
from revbench.measurement import Measurement
from revbench.methods import cuda
from revbench.methods.estimate import estimate_memory
from revbench.methods.estimate_method import EstimateMethod, measurement_of
from revbench.records import RECORD_FIELDS, check_record
from revbench.trackers import cuda_peak

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, num_classes=10)


class TinyNet(nn.Module):
    """conv -> BN -> pool -> linear: 4 images of 3x16x16."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


# ------------------------------------------------------------------ reserved, predicted


def test_trace_agrees_with_the_allocated_peak_and_reserved_covers_it():
    est = estimate_memory("revvit_small", batch_size=4, resolution=64, **TINY_VIT)
    # The recorded events hold the same tensors as the tracker: same peak, to the byte.
    assert peak_live_bytes(est.events) == est.peak_bytes
    stats = est.reserved
    # c10's allocated counter can only exceed the tensor bytes (unsplit cached blocks).
    assert stats.peak_allocated_bytes >= est.peak_bytes
    assert est.peak_reserved_bytes >= stats.peak_allocated_bytes
    assert est.peak_reserved_bytes % (2 * MiB) == 0  # whole segments
    assert (
        est.fragmentation_bytes == est.peak_reserved_bytes - stats.allocated_at_reserved_peak_bytes
    )
    again = estimate_memory("revvit_small", batch_size=4, resolution=64, **TINY_VIT)
    assert (again.peak_bytes, again.peak_reserved_bytes, again.fragmentation_bytes) == (
        est.peak_bytes,
        est.peak_reserved_bytes,
        est.fragmentation_bytes,
    )


def test_the_estimate_counts_the_batch():
    # The batch lives on the GPU during a real step: images (4x3x16x16 fp32) and labels
    # (4 int64), each a 512-byte-rounded block, count as "other".
    est = estimate_memory(TinyNet, batch_size=4, resolution=16)
    assert est.by_category["other"] == round_size(4 * 3 * 16 * 16 * 4) + round_size(4 * 8)
    assert sum(est.by_category.values()) == est.peak_bytes


def test_the_reserved_replay_can_be_skipped():
    est = estimate_memory(TinyNet, batch_size=2, resolution=16, predict_reserved=False)
    assert est.peak_reserved_bytes is None and est.fragmentation_bytes is None
    assert est.peak_bytes == estimate_memory(TinyNet, batch_size=2, resolution=16).peak_bytes


def test_a_hand_built_step_reserves_one_small_segment():
    # Every tensor of TinyNet at batch 2 is far below 1 MiB: one 2 MiB small-pool segment.
    est = estimate_memory(TinyNet, batch_size=2, resolution=16, card="cpu")
    assert est.peak_reserved_bytes == 2 * MiB
    assert est.fragmentation_bytes == 2 * MiB - est.reserved.allocated_at_reserved_peak_bytes


def test_a_cards_cublas_workspaces_share_one_large_segment():
    # On a card the forward's and the backward's cuBLAS workspaces (8,519,680 bytes each,
    # over 1 MiB: the large pool) come first from one 20 MiB segment (c10 gives allocations
    # between 1 and 10 MiB a 20 MiB segment), beside the small pool's 2 MiB.
    est = estimate_memory(TinyNet, batch_size=2, resolution=16, card="generic")
    cpu = estimate_memory(TinyNet, batch_size=2, resolution=16, card="cpu")
    assert est.by_category["library_workspace"] == 2 * 8_519_680
    assert est.peak_bytes == cpu.peak_bytes + 2 * 8_519_680
    assert est.peak_reserved_bytes == 2 * MiB + 20 * MiB


def test_estimate_records_carry_reserved_and_fragmentation():

    m = measurement_of(estimate_memory(TinyNet, batch_size=2, resolution=16, card="cpu"))
    assert m.peak_reserved_bytes == 2 * MiB and m.fragmentation_bytes > 0
    new = {"fragmentation_bytes", "process_peak_bytes", "cuda_context_bytes", "num_ooms"}
    assert new <= set(RECORD_FIELDS)
    assert new <= set(Measurement.__dataclass_fields__)
    assert EstimateMethod.name == "estimate"


@pytest.mark.parametrize("column", ["fragmentation_bytes", "process_peak_bytes", "num_ooms"])
def test_new_columns_are_validated_like_the_others(column):
    from revbench.records import SCHEMA_VERSION

    row = {
        **dict.fromkeys(RECORD_FIELDS),
        "model": "m", "variant": "", "mode": "vanilla", "precision": "fp32",
        "scenario": "train", "method": "cuda", "optimizer": "sgd", "card": "", "suite": "s",
        "group": "g", "family": "f", "kind": "baseline", "size": "", "task": "classify",
        "resolution": 32, "batch_size": 2, "status": "ok",
        "schema_version": SCHEMA_VERSION,
    }  # fmt: skip
    check_record({**row, column: 5}, "here")
    with pytest.raises(Exception, match=f"{column} is -1"):
        check_record({**row, column: -1}, "here")


# ------------------------------------------------------------------------------- AMP

# PyTorch's documented CUDA autocast op lists (docs: "Autocast Op Reference", CUDA Ops):
# these run in the autocast dtype, these in float32, and an op on neither list (batch_norm)
# runs in its input's dtype. The CPU's lists keep norms and softmax in the input's dtype.
CUDA_LOWER_PRECISION = ("conv2d", "linear", "matmul", "scaled_dot_product_attention")
CUDA_FLOAT32 = ("layer_norm", "group_norm", "softmax", "log_softmax", "sum", "exp")


def cast_decisions(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Output dtype of each op under autocast on fake CPU tensors (float32 inputs, except
    the norms, softmax and batch_norm, which get a lower-precision activation as in a net)."""
    with FakeTensorMode():
        x = torch.randn(2, 4, 8, 8)
        w = torch.randn(6, 4, 3, 3, requires_grad=True)
        lin = nn.Linear(8, 8)
        bn = nn.BatchNorm2d(4)
        q = torch.randn(2, 2, 16, 8)
        with torch.autocast("cpu", dtype=dtype):
            half = x.to(dtype)  # an activation as a lower-precision op leaves it
            return {
                "conv2d": F.conv2d(x, w).dtype,
                "linear": lin(x).dtype,
                "matmul": torch.matmul(x, x).dtype,
                "scaled_dot_product_attention": F.scaled_dot_product_attention(q, q, q).dtype,
                "layer_norm": F.layer_norm(half, (8,)).dtype,
                "group_norm": F.group_norm(half, 2).dtype,
                "softmax": torch.softmax(half, -1).dtype,
                "log_softmax": torch.log_softmax(half, -1).dtype,
                "sum": half.sum().dtype,
                "exp": half.exp().dtype,
                "batch_norm": bn(half).dtype,
            }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_decisions_follow_cuda_lists(dtype):
    with cuda_cast_policy():
        got = cast_decisions(dtype)
    expected = {
        **dict.fromkeys(CUDA_LOWER_PRECISION, dtype),
        **dict.fromkeys(CUDA_FLOAT32, torch.float32),
        "batch_norm": dtype,  # on no list: the input's dtype
    }
    assert got == expected


def test_cpu_rules_apply_again_after_the_block():
    with cuda_cast_policy():
        pass
    cpu = cast_decisions(torch.bfloat16)
    # The CPU's lists: layer_norm and softmax keep their bf16 input (the difference the
    # policy corrects); if this changes, the CPU's lists changed, not revbench.
    assert cpu["layer_norm"] == cpu["softmax"] == torch.bfloat16


def test_policy_table_matches_the_dispatcher():
    registered = {
        n.removeprefix("aten::")
        for n in torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA")
        if n.startswith("aten::")  # torchvision's (roi_align, nms, ...) keep their own
    }
    if not torch.__version__.startswith("2.14"):
        pytest.skip(f"CUDA_POLICY was transcribed for torch 2.14; this is {torch.__version__}")
    assert set(CUDA_POLICY) == registered
    kernels, fallthrough = cpu_overrides()
    assert "layer_norm" in kernels and "linear" not in kernels  # linear keeps the cast cache
    assert "cat" in fallthrough  # the CPU promotes cat's inputs; CUDA does not cast them


class ConvGroupNorm(nn.Module):
    """conv -> GroupNorm -> conv, as in RevCol's and ConvNeXt-style blocks."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 10, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x)).relu()).mean((2, 3))


def test_amp_estimate_keeps_norm_outputs_in_float32():
    # The conv writes bf16; CUDA's GroupNorm reads it and writes float32 (the CPU's rules
    # would write bf16): the float32 output, saved for the ReLU and the second conv's cast,
    # costs more than the CPU rules claim. (On a net this small amp even costs more than
    # fp32: the input casts outweigh what two convolutions save.)
    kw = dict(batch_size=4, resolution=32)
    bf16 = estimate_memory(ConvGroupNorm, precision="amp-bf16", **kw)
    import revbench.methods.estimate as estimate_module

    cuda_rules = estimate_module.amp_policy
    try:
        estimate_module.amp_policy = lambda precision: contextlib.nullcontext()
        bf16_cpu = estimate_memory(ConvGroupNorm, precision="amp-bf16", **kw)
    finally:
        estimate_module.amp_policy = cuda_rules
    assert bf16.activation_bytes > bf16_cpu.activation_bytes


# --------------------------------------------------------------------------- snapshots


def test_snapshot_replay_from_the_command_line(tmp_path, capsys):
    # A hand-made trace in PyTorch's format: 5 MiB (a new 20 MiB segment), 100 B (a 2 MiB
    # small segment), the 5 MiB freed, empty_cache. Real reserved peak 22 MiB, end 2 MiB.
    def entry(action, addr, size):
        return {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": 0}

    large, small = 0x7F00_0000_0000, 0x7F10_0000_0000
    snapshot = {
        "segments": [
            {
                "device": 0, "address": small, "total_size": 2 * MiB, "stream": 0,
                "segment_type": "small",
                "blocks": [
                    {"address": small, "size": 512, "requested_size": 100,
                     "state": "active_allocated"},
                    {"address": small + 512, "size": 2 * MiB - 512, "state": "inactive"},
                ],
            }
        ],
        "device_traces": [[
            entry("segment_alloc", large, 20 * MiB),
            entry("alloc", large, 5 * MiB),
            entry("segment_alloc", small, 2 * MiB),
            entry("alloc", small, 100),
            entry("free_requested", large, 5 * MiB),
            entry("free_completed", large, 5 * MiB),
            entry("segment_free", large, 20 * MiB),
        ]],
        "allocator_settings": {"max_split_size": -1, "expandable_segments": False},
    }  # fmt: skip
    path = tmp_path / "snapshot.pickle"
    path.write_bytes(pickle.dumps(snapshot))
    assert allocator.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"real reserved peak       {22 * MiB:>15,d} B" in out
    assert f"simulated reserved peak  {22 * MiB:>15,d} B" in out and "difference +0 B" in out

    bad = tmp_path / "not.pickle"
    bad.write_bytes(b"not a pickle")
    assert allocator.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: snapshot") and err.count("\n") == 1


# ----------------------------------------------------------------------- cuda and NVML


def fake_pynvml(processes=(), init_error: bool = False) -> types.ModuleType:
    """A pynvml with the calls revbench makes; `processes` are (pid, used bytes)."""
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        if init_error:
            raise NVMLError("Driver Not Loaded")

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = init
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: ("uuid", uuid)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("index", i)
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda handle: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes
    ]
    return nvml


def test_nvml_reads_this_process(monkeypatch):
    import os

    me = os.getpid()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(me + 1, 7), (me, 1_234_567_890)]))
    reader, why = cuda.ProcessMemory.open("abcd-ef", 0)
    assert why is None and reader._handle == ("uuid", "GPU-abcd-ef")
    assert reader.read() == 1_234_567_890


def test_nvml_not_listing_this_process_reads_none(monkeypatch):
    import os

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(os.getpid() + 1, 7)]))
    reader, why = cuda.ProcessMemory.open(None, 3)
    assert why is None and reader._handle == ("index", 3)
    assert reader.read() is None  # a container's PID namespace: not a crash, no figure


def test_nvml_absent_or_failing_is_a_note_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert cuda.ProcessMemory.open("x", 0) == (None, cuda.NVML_MISSING)
    assert cuda_settings()["nvml"] == cuda.NVML_MISSING
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=True))
    reader, why = cuda.ProcessMemory.open("x", 0)
    assert reader is None and "Driver Not Loaded" in why


def test_manifest_environment_names_the_cuda_settings(monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env = environment()
    assert env["pytorch_cuda_alloc_conf"] == "expandable_segments:True"
    assert env["cudnn_benchmark"] is torch.backends.cudnn.benchmark
    assert env["tf32_matmul"] is torch.backends.cuda.matmul.allow_tf32
    assert env["tf32_cudnn"] is torch.backends.cudnn.allow_tf32
    assert "nvml" in env and "float32_matmul_precision" in env


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (calibration)")
def test_calibration_reads_a_known_tensor_within_one_percent():
    nbytes = 256 * MiB
    device = torch.device("cuda", 0)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    reader, why = cuda.ProcessMemory.open(cuda._uuid(device), 0)
    before_alloc = torch.cuda.memory_allocated(device)
    before_process = reader.read() if reader else None
    with cuda_peak(device) as peak:
        tensor = torch.empty(nbytes, dtype=torch.uint8, device=device)
    assert abs(peak.allocated_bytes - before_alloc - nbytes) <= 0.01 * nbytes
    assert abs(peak.reserved_bytes - torch.cuda.memory_reserved(device)) == 0
    if before_process is not None:
        after = reader.read()
        assert after is not None and abs(after - before_process - nbytes) <= 0.01 * nbytes, why
    del tensor


def test_torch_build_reads_torch_own_version_file_without_importing_it(monkeypatch):
    from revbench.environment import torch_build

    monkeypatch.delitem(sys.modules, "torch")  # as in a process that has not loaded it
    read = torch_build.__wrapped__()
    monkeypatch.undo()
    assert read == {"torch": str(torch.__version__), "cuda": torch.version.cuda}


def test_without_a_gpu_or_torch_the_manifest_leaves_torch_switches_unread(monkeypatch):
    from revbench import environment as env_module

    monkeypatch.setattr(env_module, "cuda_devices_present", lambda: False)
    monkeypatch.delitem(sys.modules, "torch")
    settings = env_module.cuda_settings()
    monkeypatch.undo()
    assert settings["cudnn_benchmark"] is None and settings["float32_matmul_precision"] is None
    assert "pytorch_cuda_alloc_conf" in settings and "nvml" in settings


def test_a_gpu_is_looked_for_only_where_its_driver_is(monkeypatch):
    from revbench import environment as env_module

    seen = []
    monkeypatch.setattr(env_module.sys, "platform", "linux")
    monkeypatch.setattr(env_module.glob, "glob", lambda p: seen.append(p) or [])
    assert env_module.cuda_devices_present() is False
    assert seen == list(env_module.GPU_DRIVER_PATHS)
    monkeypatch.setattr(env_module.glob, "glob", lambda p: ["/dev/dxg"] if p == "/dev/dxg" else [])
    assert env_module.cuda_devices_present() is True  # WSL2
    monkeypatch.setattr(env_module.sys, "platform", "win32")
    assert env_module.cuda_devices_present() is True  # no /dev to tell by: torch is asked
