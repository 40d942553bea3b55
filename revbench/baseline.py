"""Writing a gate baseline: the current records, typed as the run wrote them, and a
manifest naming the environment they were produced in."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .environment import environment
from .errors import UsageError
from .loading import load_manifests
from .records import RECORD_FIELDS, SCHEMA_VERSION, Record
from .store import MANIFEST_FILE, RESULTS_FILE


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (a killed write leaves the old file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


_INT_FIELDS = {f.name for f in fields(Record) if re.match(r"int\b", str(f.type))}


def plain_records(df: pd.DataFrame) -> list[dict]:
    """Rows as Record dicts again: pandas turns missing values into NaN and ints into
    floats; the baseline file keeps the types the run wrote."""
    out = []
    for _, row in df.iterrows():
        record = {}
        for name in RECORD_FIELDS:
            v = row[name]
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif hasattr(v, "item"):  # numpy scalar
                v = v.item()
            if name in _INT_FIELDS and v is not None:
                v = int(v)
            record[name] = v
        out.append(record)
    return out


def baseline_files(baseline: Path) -> tuple[Path, Path]:
    """(results file, manifest) that --update writes for a baseline file or run directory."""
    if baseline.suffix == ".jsonl":
        return baseline, baseline.parent / MANIFEST_FILE
    if baseline.is_dir():
        others = [p for p in baseline.rglob("*.jsonl") if p != baseline / RESULTS_FILE]
        if others:
            raise UsageError(
                f"baseline directory {baseline} holds other results files ({others[0]}); "
                "give a run directory or a .jsonl file"
            )
    return baseline / RESULTS_FILE, baseline / MANIFEST_FILE


def update_baseline(
    baseline: Path, current: pd.DataFrame, sources: list[str], command: str
) -> Path:
    """Replace the baseline with the current records: results.jsonl + manifest.json."""
    results_path, manifest_path = baseline_files(baseline)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    manifests = load_manifests(*sources)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "suite": ",".join(sorted(set(current["suite"]))),
        # The environment the figures were produced in, not the one that copied them.
        "environment": manifests[-1].get("environment") if manifests else environment(),
        "invocations": [
            *(inv for m in manifests for inv in m.get("invocations", [])),
            {
                "command": command,
                "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cells": len(current),
            },
        ],
    }
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in plain_records(current))
    write_atomic(results_path, lines)
    write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return results_path
