"""The estimate cache: a second run of unchanged cells answers from disk with the same
bytes; anything that decides the bytes misses it; a damaged or foreign entry is ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from revbench_launch_helpers import run_dirs

from revbench import estimate_cache
from revbench.estimate_cache import EstimateCache
from revbench.loading import load
from revbench.measurement import Counts, Measurement
from revbench.suite import make_cell

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["peak_bytes", "peak_reserved_bytes", "fragmentation_bytes", "params", "macs"]
SUITE = """
description = "cache"
[defaults]
batch_sizes = [1, 2]
[[group]]
name = "tiny"
models = ["test_tiny_cnn"]
resolutions = [32]
"""


def _cell(**changes):
    cell = make_cell("test_tiny_cnn", resolution=32, batch_size=2, method="estimate")
    return replace(cell, **changes)


def test_a_second_run_answers_from_the_cache_with_the_same_bytes(run_cli, suite_file, tmp_path):
    suite = suite_file(SUITE, "cache")
    argv = ("run", "--suite", suite, "--device", "estimate", "--no-thop")
    code, _, err = run_cli(*argv, "--out", str(tmp_path / "cold"))
    assert code == 0, err
    assert "from the estimate cache" not in err
    code, _, err = run_cli(*argv, "--out", str(tmp_path / "warm"))
    assert code == 0, err
    assert "2 of 2 cell(s) from the estimate cache" in err
    cold, warm = (load(run_dirs(tmp_path / name)[0]) for name in ("cold", "warm"))
    assert not cold["from_cache"].any() and warm["from_cache"].all()
    assert cold[FIGURES].equals(warm[FIGURES])
    assert cold["params"].notna().all()  # the counts come back from the cache too
    # --no-cache measures again, and a run without the cache writes nothing to it
    code, _, err = run_cli(*argv, "--out", str(tmp_path / "again"), "--no-cache")
    assert code == 0 and "from the estimate cache" not in err
    assert not load(run_dirs(tmp_path / "again")[0])["from_cache"].any()


def test_the_gate_never_reads_the_cache(run_cli, suite_file, tmp_path, monkeypatch):
    suite = suite_file(SUITE, "cache")
    argv = ("run", "--suite", suite, "--device", "estimate", "--no-thop")
    assert run_cli(*argv, "--out", str(tmp_path / "base"))[0] == 0
    # a poisoned cache: any run that read it would report 1 byte
    cache = EstimateCache(estimate_cache.default_root())
    for b in (1, 2):
        cache.put_measurement(_cell(batch_size=b, suite="cache", group="tiny"), Measurement(1))
    baseline = str(run_dirs(tmp_path / "base")[0])
    code, _, err = run_cli(
        "gate", "--suite", suite, "--baseline", baseline, "--no-thop", "--out", str(tmp_path / "g")
    )
    assert code == 0, err
    assert not load(run_dirs(tmp_path / "g")[0])["from_cache"].any()


@pytest.mark.parametrize(
    "change",
    ["torch", "estimator", "environ", "config", "batch", "precision", "mode", "code"],
)
def test_whatever_decides_the_bytes_misses_the_cache(tmp_path, monkeypatch, change):
    cache = EstimateCache(tmp_path)
    cell = _cell(model="revvit_small", resolution=224) if change == "mode" else _cell()
    cache.put_measurement(cell, Measurement(peak_bytes=1234))
    cache.put_counts(cell, False, Counts(params=5, macs=6))
    fresh = EstimateCache(tmp_path)
    assert fresh.get_measurement(cell).peak_bytes == 1234
    assert fresh.get_counts(cell, False).params == 5
    assert fresh.get_counts(cell, True) is None  # counted without thop: no thop figure
    software = estimate_cache.software()
    if change == "torch":
        monkeypatch.setattr(estimate_cache, "software", lambda: {**software, "torch": "9.9"})
    elif change == "estimator":
        version = software["estimator"] + 1
        monkeypatch.setattr(estimate_cache, "software", lambda: {**software, "estimator": version})
    elif change == "code":
        monkeypatch.setattr(estimate_cache, "code_digest", lambda extra=(): "edited")
    elif change == "environ":  # the card's cuBLAS workspaces, which the estimate counts
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    other = {
        "config": _cell(overrides={"width": 16}),
        "batch": _cell(batch_size=3),
        "precision": _cell(precision="amp-bf16"),
        "mode": _cell(model="revvit_small", resolution=224, mode="reversible"),
    }.get(change, cell)
    changed = EstimateCache(tmp_path)
    assert changed.get_measurement(other) is None
    # counts belong to the model at its side: another batch, precision or mode keeps them
    kept = change in ("batch", "precision", "mode")
    assert (changed.get_counts(other, False) is not None) == kept
    assert changed.notices == []  # a miss, not a damaged entry


def test_a_corrupt_or_foreign_entry_is_ignored_with_a_notice(tmp_path):
    cache = EstimateCache(tmp_path)
    cell, other = _cell(), _cell(batch_size=3)
    cache.put_measurement(cell, Measurement(peak_bytes=1234))
    cache.put_measurement(other, Measurement(peak_bytes=99))
    path = cache._path(cache.estimate_key(cell))
    entries = sorted(Path(tmp_path).rglob("*.json"))
    assert len(entries) == 2
    # foreign: another cell's entry copied over this one's
    foreign = next(p for p in entries if p != path)
    path.write_text(foreign.read_text())
    fresh = EstimateCache(tmp_path)
    assert fresh.get_measurement(cell) is None
    assert "holds another cell's entry" in fresh.notices[0]
    # corrupt: torn JSON, or JSON of the wrong shape
    for text in ('{"key": {"kind": "estimate"', json.dumps([1, 2]), "\x00\x01"):
        path.write_text(text)
        fresh = EstimateCache(tmp_path)
        assert fresh.get_measurement(cell) is None
        assert "corrupt entry" in fresh.notices[0]
    # and a fresh estimate replaces it
    fresh.put_measurement(cell, Measurement(peak_bytes=1234))
    assert EstimateCache(tmp_path).get_measurement(cell).peak_bytes == 1234


def test_a_cell_without_a_key_is_estimated_not_cached(tmp_path):
    cache = EstimateCache(tmp_path)
    cell = _cell(model="not_registered")  # its config cannot be resolved
    assert cache.get_measurement(cell) is None
    cache.put_measurement(cell, Measurement(peak_bytes=1))
    assert "not cached" in cache.notices[0]
    assert not list(Path(tmp_path).rglob("*.json"))


def test_every_kind_of_builder_has_a_key(tmp_path):
    # timm baselines register partials, families their classes, plugins their own module
    cache = EstimateCache(tmp_path)
    for name in ("resnet50", "revvit_small", "test_tiny_cnn"):
        cell = make_cell(name, resolution=224 if name != "test_tiny_cnn" else 32, batch_size=2)
        cache.put_measurement(cell, Measurement(peak_bytes=7))
        assert EstimateCache(tmp_path).get_measurement(cell).peak_bytes == 7
    assert cache.notices == []


def test_the_code_digest_covers_the_configs_and_the_step():
    files = {p.relative_to(ROOT).as_posix() for p in estimate_cache.code_files()}
    # a model's sizes (models/configs/), its network, and the harness a step runs through
    for name in (
        "models/configs/revvit.py",
        "models/revvit.py",
        "models/reversible.py",
        "revbench/methods/estimate.py",
        "revbench/cards.py",
        "revbench/scenario.py",
    ):
        assert name in files


COLD_SUITE = """
description = "a built-in model, so that no plugin loads torch"
[defaults]
batch_sizes = [1, 2]
[[group]]
name = "tiny"
models = ["revvit_small"]
resolutions = [32]
overrides = { depth = [1], embed_dim = [48], num_heads = [2] }
"""


def test_a_run_answered_wholly_from_the_cache_never_imports_torch(suite_file, tmp_path):
    suite = suite_file(COLD_SUITE, "cold")
    script = (
        "import sys\n"
        "from revbench.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "REVBENCH_PLUGINS": "", "COLUMNS": "80"}

    def run(out, *extra):
        argv = ["run", "--suite", suite, "--device", "estimate", "--no-thop", "--out", out]
        done = subprocess.run(
            [sys.executable, "-c", script, *argv, *extra], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    cold = run(str(tmp_path / "cold"), "--no-isolate")  # in-process: no worker to start
    assert "from the estimate cache" not in cold.stderr
    warm = run(str(tmp_path / "warm"))
    assert "2 of 2 cell(s) from the estimate cache" in warm.stderr
    assert "torch loaded: False" in warm.stdout
    figures = [load(run_dirs(tmp_path / name)[0])[FIGURES[:3]] for name in ("cold", "warm")]
    assert figures[0].equals(figures[1])
    manifest = json.loads((run_dirs(tmp_path / "warm")[0] / "manifest.json").read_text())
    import torch

    assert manifest["environment"]["torch"] == torch.__version__  # read without torch
    assert manifest["environment"]["cuda"] == torch.version.cuda
