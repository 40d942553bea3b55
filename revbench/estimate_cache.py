"""A persistent cache of the estimator's answers: a second run of unchanged cells is instant.

The estimator is deterministic: the same cell on the same software gives the same bytes.
So an `estimate` cell's measurement, and its model's parameter and MAC counts, are kept
under `$REVBENCH_CACHE` (default: ~/.cache/revbench) once computed, keyed by everything that
determines them:

- the cell's key (model, overrides, mode, resolution, batch, precision, scenario, optimizer,
  method, budget) and its task;
- the model's resolved configuration (the registered config with the cell's overrides,
  side and mode applied), so a model whose definition changed misses;
- the versions of torch, timm and effdet, and `ESTIMATOR_VERSION`, which is bumped whenever
  the estimator's output changes (the ci gate refuses a changed figure under an unchanged
  version), and the environment variables the estimator reads (the card's workspace
  sizes, `ESTIMATOR_ENVIRON`);
- a digest of the code that builds and steps the model (every file of `revbench.models`,
  a plugin model's own module, and the harness modules the step runs through), so that
  editing a model or a loss while iterating never answers from an older build.

One JSON file per entry, written whole (temporary file, then rename). Every entry holds its
full key: a file that cannot be read, does not parse, or holds another key (a copied or
foreign entry) is ignored with a notice and replaced, never trusted. `revbench run
--no-cache` neither reads nor writes it; `revbench gate` never reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import revbench.methods
import revbench.models
from revbench.models import get_info

from .cell import KEY_FIELDS, Cell
from .environment import torch_build
from .measurement import Counts, Measurement
from .methods.estimate_method import ESTIMATOR_VERSION
from .suite import counts_key

ENV_VAR = "REVBENCH_CACHE"


def default_root() -> Path:
    """$REVBENCH_CACHE, else the user's cache folder."""
    given = os.environ.get(ENV_VAR)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "revbench"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# The environment variables the estimator reads: the card's cuBLAS and cuBLASLt workspace
# sizes (revbench.methods.cuda_terms.library_rules).
ESTIMATOR_ENVIRON = ("CUBLAS_WORKSPACE_CONFIG", "CUBLASLT_WORKSPACE_SIZE")


def software() -> dict:
    """What besides the cell decides the estimator's bytes (torch's version read without
    importing it: a run answered wholly from the cache never loads torch)."""
    return {
        "estimator": ESTIMATOR_VERSION,
        "torch": torch_build()["torch"],
        "timm": _version("timm"),
        "effdet": _version("effdet"),
        "environ": {name: os.environ.get(name) for name in ESTIMATOR_ENVIRON},
    }


# The harness modules an estimate and its counts run through, besides the estimator itself.
STEP_MODULES = (
    "revbench.scenario",
    "revbench.tasks",
    "revbench.autocast_policy",
    "revbench.axes",
    "revbench.cards",
    "revbench.ddp",
    "revbench.execute",
    "revbench.trackers",
    "revbench.counting",
    "revbench.caching_allocator",
)


def code_files(extra_files: tuple[str, ...] = ()) -> list[Path]:
    """The source of revbench.models (models/configs/ included), the step's harness
    modules, the estimator's package and `extra_files` (a plugin's module)."""
    files: set[Path] = set()
    for package in (revbench.models, revbench.methods):
        files.update(Path(package.__file__).parent.rglob("*.py"))
    for name in STEP_MODULES:  # found, not imported: a cached run imports none of them
        files.add(Path(importlib.util.find_spec(name).origin))
    files.update(Path(f) for f in extra_files)
    return sorted(files)


def code_digest(extra_files: tuple[str, ...] = ()) -> str:
    """sha256 over `code_files`."""
    digest = hashlib.sha256()
    for path in code_files(extra_files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def resolved_config(cell: Cell, *, for_counts: bool = False) -> dict:
    """The model's registered config with the cell's overrides, side and mode applied, as
    plain data (with the config's class, so two families' equal fields differ). For counts
    without its memory-only fields (the mode among them): a run counts a model once for
    all their values (`revbench.suite.counts_key`)."""
    info = get_info(cell.model)
    changes = {**dict(cell.overrides), "img_size": cell.resolution}
    config = info.configure(changes if for_counts else {**changes, "mode": cell.mode})
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if for_counts:
        data = {k: v for k, v in data.items() if k not in config.memory_only}
    kind = type(config)
    return {"class": f"{kind.__module__}.{kind.__qualname__}", "fields": data}


def _canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, default=repr, separators=(",", ":"))


@dataclass
class EstimateCache:
    """Estimates and counts kept on disk (see the module). `notices` collects what was
    ignored and why; `hits` counts the cells answered from the cache."""

    root: Path
    hits: int = 0
    notices: list[str] = field(default_factory=list)
    _software: dict | None = None
    _code: dict[str, str] = field(default_factory=dict)  # by the builder's source file

    # ------------------------------------------------------------------------- keys

    def _base(self, cell: Cell, *, for_counts: bool = False) -> dict:
        if self._software is None:
            self._software = software()
        builder = get_info(cell.model).builder_file
        if builder not in self._code:
            self._code[builder] = code_digest((builder,) if builder else ())
        return {
            "software": self._software,
            "code": self._code[builder],
            "config": resolved_config(cell, for_counts=for_counts),
            "task": cell.task,
        }

    def estimate_key(self, cell: Cell) -> dict:
        key = {f: getattr(cell, f) for f in KEY_FIELDS}
        return {"kind": "estimate", "cell": key, **self._base(cell)}

    def counts_key(self, cell: Cell, thop: bool) -> dict:
        model = dict(zip(("model", "variant", "resolution"), counts_key(cell)))
        return {
            "kind": "counts",
            "model": model,
            "thop": thop,
            **self._base(cell, for_counts=True),
        }

    def _key(self, cell: Cell, kind: str, thop: bool = False) -> dict | None:
        """The entry's key, or None (with a notice) where it cannot be formed: such a cell
        is estimated and not kept, never answered from another key."""
        try:
            return self.estimate_key(cell) if kind == "estimate" else self.counts_key(cell, thop)
        except Exception as e:  # a cache is never a reason for a cell to fail
            self.notices.append(f"estimate cache: {cell.label()} not cached ({e})")
            return None

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()
        return self.root / "estimates" / digest[:2] / f"{digest}.json"

    # ----------------------------------------------------------------- read, write

    def _read(self, key: dict) -> dict | None:
        path = self._path(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            self.notices.append(f"estimate cache: ignored {path}: {e.strerror or e}")
            return None
        try:
            entry = json.loads(text)
            stored = entry["key"]
            value = entry["value"]
        except (ValueError, KeyError, TypeError) as e:
            self.notices.append(f"estimate cache: ignored a corrupt entry {path} ({e})")
            return None
        if _canonical(stored) != _canonical(json.loads(_canonical(key))):
            self.notices.append(f"estimate cache: ignored {path}: it holds another cell's entry")
            return None
        return value

    def _write(self, key: dict, value: dict) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(_canonical({"key": key, "value": value}))
            os.replace(tmp, path)
        except OSError as e:  # a cache that cannot be written costs speed, never a row
            self.notices.append(f"estimate cache: could not write {path.parent}: {e}")

    # ------------------------------------------------------------------------- API

    def get_measurement(self, cell: Cell) -> Measurement | None:
        key = self._key(cell, "estimate")
        value = None if key is None else self._read(key)
        if value is None:
            return None
        try:
            return Measurement(**value)
        except TypeError as e:  # fields of another revbench version
            self.notices.append(f"estimate cache: ignored an entry of {cell.label()} ({e})")
            return None

    def put_measurement(self, cell: Cell, measurement: Measurement) -> None:
        key = self._key(cell, "estimate")
        if key is not None:
            self._write(key, asdict(measurement))

    def get_counts(self, cell: Cell, thop: bool) -> Counts | None:
        key = self._key(cell, "counts", thop)
        value = None if key is None else self._read(key)
        if value is None:
            return None
        try:
            return Counts(**value)
        except TypeError as e:
            self.notices.append(f"estimate cache: ignored counts of {cell.label()} ({e})")
            return None

    def put_counts(self, cell: Cell, thop: bool, counts: Counts) -> None:
        key = self._key(cell, "counts", thop)
        if key is not None:
            self._write(key, asdict(counts))
