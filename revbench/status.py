"""The status of a measured cell, defined once: records, the runner, the gate and the report
all speak this vocabulary."""

from __future__ import annotations

OK = "ok"  # measured
OOM = "oom"  # out of memory at the requested batch size: a result, not a failure
TIMEOUT = "timeout"  # killed at the cell's timeout
ERROR = "error"  # anything else went wrong; the record's message says what
SKIPPED = "skipped"  # not run: the estimator predicts it exceeds the run's --budget

STATUSES = (OK, OOM, TIMEOUT, ERROR, SKIPPED)

# Statuses that are a result: --resume skips these cells and a baseline may hold them.
FINAL = (OK, OOM, SKIPPED)

# How bad a status is, for the gate: a higher rank than the baseline's is a regression.
RANK = {OK: 0, OOM: 1, SKIPPED: 1, TIMEOUT: 2, ERROR: 2}

# Terminal colour of each status (rich style names).
STYLE = {OK: "green", OOM: "yellow", TIMEOUT: "red", ERROR: "red", SKIPPED: "yellow"}
