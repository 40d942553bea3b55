"""Fault-injection models for tests/test_faults.py, registered as a user's plugin would be.

Each is the tiny CNN of `revbench_test_models` whose forward fails in one way: it raises,
hangs, segfaults, exits the process, or asks the CPU allocator for more than any machine
has. `test_segfaults_when_counted` trains fine and crashes only in eval mode at batch 1,
which is how the parameter and MAC counters call it.

With REVBENCH_FAULTS_SLOW_START=SECONDS in the environment, importing this module sleeps
that long: a worker whose start-up is slow.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import torch
from revbench_test_models import TinyCNN, TinyConfig

from revbench.models import register_model

if os.environ.get("REVBENCH_FAULTS_SLOW_START"):
    time.sleep(float(os.environ["REVBENCH_FAULTS_SLOW_START"]))


def _segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


class Raises(TinyCNN):
    def forward(self, x):
        raise RuntimeError("forward failed on purpose")


class Hangs(TinyCNN):
    def forward(self, x):
        time.sleep(3600)


class Segfaults(TinyCNN):
    def forward(self, x):
        _segfault()


class Exits(TinyCNN):
    def forward(self, x):
        os._exit(3)


class KilledByHost(TinyCNN):
    def forward(self, x):
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


class CpuOOM(TinyCNN):
    def forward(self, x):
        torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: DefaultCPUAllocator refuses it
        return super().forward(x)


class SegfaultsWhenCounted(TinyCNN):
    def forward(self, x):
        if not self.training and x.shape[0] == 1:
            _segfault()
        return super().forward(x)


for name, builder in {
    "test_raises": Raises,
    "test_hangs": Hangs,
    "test_segfaults": Segfaults,
    "test_exits": Exits,
    "test_cpu_oom": CpuOOM,
    "test_killed_by_host": KilledByHost,
    "test_segfaults_when_counted": SegfaultsWhenCounted,
}.items():
    register_model(name, TinyConfig(), family="Test", size="fault", builder=builder)
