import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
PLUGIN = "revbench_test_models"

# Test-only models: imported here for in-process tests, and through REVBENCH_PLUGINS (with
# this folder on PYTHONPATH) by the subprocess workers the launcher starts.
sys.path.insert(0, str(TESTS))
os.environ["REVBENCH_PLUGINS"] = PLUGIN
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
__import__(PLUGIN)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def own_estimate_cache(tmp_path_factory, monkeypatch):
    """Each test its own, empty estimate cache: no test answers from another's estimates,
    and none writes to the user's ~/.cache."""
    monkeypatch.setenv("REVBENCH_CACHE", str(tmp_path_factory.mktemp("estimate-cache")))


@pytest.fixture
def one_thread():
    """One torch thread for the test: large-model tests then do not fight over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_cli(tmp_path, capsys):
    """Run `revbench ...` in-process; returns (exit code, stdout, stderr)."""
    from revbench.cli import main

    def run(*argv: str):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def suite_file(tmp_path):
    """Writes a suite's TOML text to a file in the test's folder; returns its path."""

    def write(text: str, name: str = "suite") -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return str(path)

    return write
