"""Loading stored runs for analysis: results files as a pandas DataFrame, their manifests,
and CSV export."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cell import KEY_FIELDS
from .errors import UsageError
from .records import BUDGET_FIELDS, RECORD_FIELDS, read_records
from .store import RunStore


def result_files(paths: list[str | Path]) -> list[Path]:
    """results.jsonl files under the given files or directories (searched recursively)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("*.jsonl")))
        else:
            raise UsageError(f"no results at {p}: no such file or directory")
    if not found:
        raise UsageError(f"no results found in {', '.join(map(str, paths))}")
    return found


# What `load` adds to each record: the file it came from, and what the run's manifest says of
# its model (registry rank, native resolution; None where the manifest does not say).
LOADED_FIELDS = ("source_file", "model_rank", "native_resolution")


def load(*paths: str | Path, latest_only: bool = True) -> pd.DataFrame:
    """Records from results files or run directories as a DataFrame.

    With `latest_only`, a cell measured several times (a resumed error, say) keeps its
    last record: the one written last, in file order, files in the order given. How many
    cells had more than one is `df.attrs["repeated_cells"]` (the gate says so). Beside the
    record fields, the `LOADED_FIELDS`.
    """
    rows = []
    for path in result_files(list(paths)):
        facts = _model_facts(path)
        for row in read_records(path):
            row["source_file"] = str(path)
            known = facts.get(row.get("model"))
            row["model_rank"] = _whole(known, "rank")
            row["native_resolution"] = _whole(known, "native_resolution")
            rows.append(row)
    df = pd.DataFrame(rows, columns=[*RECORD_FIELDS, *LOADED_FIELDS])
    for name in BUDGET_FIELDS:  # None, not NaN, where no budget: keys must equal Cell.key
        df[name] = df[name].astype(object).where(df[name].notna(), None)
    if latest_only and not df.empty:
        repeated = int(df.duplicated(subset=list(KEY_FIELDS), keep="last").sum())
        df = df.drop_duplicates(subset=list(KEY_FIELDS), keep="last").reset_index(drop=True)
        df.attrs["repeated_cells"] = repeated
    return df


def _model_facts(results: Path) -> dict:
    """The `models` table of the manifest beside a results file (`suite.model_facts`); empty
    for a results file without one, or a run written before manifests had it."""
    try:
        manifest = RunStore(results.parent).read_manifest() or {}
    except UsageError:  # an unreadable manifest costs the ordering, not the results
        return {}
    facts = manifest.get("models")
    return facts if isinstance(facts, dict) else {}


def _whole(facts, name: str) -> int | None:
    """A non-negative whole number the manifest gives, else None: a hand-edited or foreign
    manifest costs the ordering, never the plot."""
    value = facts.get(name) if isinstance(facts, dict) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def load_manifests(*paths: str | Path) -> list[dict]:
    manifests = []
    for path in result_files(list(paths)):
        manifest = RunStore(path.parent).read_manifest()
        if manifest is not None:
            manifests.append(manifest)
    return manifests


def export_csv(df: pd.DataFrame, path: str | Path) -> None:
    df.to_csv(path, index=False)
