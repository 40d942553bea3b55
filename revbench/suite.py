"""Suites: declarative TOML files in suites/ that expand to cells.

A suite has `[defaults]` and one or more `[[group]]` tables. Every axis (models,
resolutions, batch_sizes, precisions, modes, overrides) is a list; a group expands to the
product of its axes. `overrides` maps a model config field to a list of values and adds
one axis per field (e.g. `{ depth = [4, 8, 12] }`). "native" as a resolution means each
model's native resolution. `task` (default: each model's own) is checked against the task
each model serves. `budgets` ("16GiB", "80GB", "auto") is read by `revbench max-batch`.
CLI flags replace an axis in every group.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import tomllib

from revbench.models import (
    MODES,
    ModelInfo,
    UnknownModelError,
    get_info,
    list_models,
)

from .axes import OPTIMIZERS, PRECISIONS, check_scenario
from .cards import CARDS
from .cell import Cell, model_label, variant_label
from .errors import UsageError
from .methods import method_names
from .tasks import task_names

AXES = ("models", "resolutions", "batch_sizes", "precisions", "modes", "overrides", "budgets")
SCALARS = ("scenario", "task", "optimizer", "warmup_steps", "measure_steps", "timeout_s")
GROUP_KEYS = {"name", *AXES, *SCALARS}
TOP_KEYS = {"description", "defaults", "group"}

BUILTIN_DEFAULTS = {
    "resolutions": ["native"],
    "batch_sizes": [32],
    "precisions": ["fp32"],
    "modes": ["reversible"],
    "overrides": {},
    "scenario": "train",
    "task": None,  # each model's own
    "optimizer": "sgd",
    "warmup_steps": 2,
    "measure_steps": 10,
    "timeout_s": 600.0,
}

# A batch or a side beyond this overflows the 32-bit indexing of CUDA kernels and cuDNN.
MAX_SIDE = 2**31 - 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_side(v) -> bool:
    return _is_int(v) and 1 <= v <= MAX_SIDE


# What each suite key holds: (check of one value, what the error says it must be). Axes
# are checked item by item and must not be empty; a scalar is checked as a whole.
_ITEM_CHECKS = {
    "models": (lambda v: isinstance(v, str), "a model name (a string)"),
    "resolutions": (lambda v: _is_side(v) or v == "native", f"'native' or 1..{MAX_SIDE}"),
    "batch_sizes": (_is_side, f"an integer in 1..{MAX_SIDE}"),
    "precisions": (lambda v: isinstance(v, str), "a precision name (a string)"),
    "modes": (lambda v: isinstance(v, str), "a mode name (a string)"),
    # Parsed (units, `auto`) by `revbench max-batch`, which alone uses them.
    "budgets": (lambda v: isinstance(v, str), 'a budget string such as "16GiB", "80GB" or "auto"'),
}
_SCALAR_CHECKS = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "scenario": (lambda v: isinstance(v, str), "a scenario name (a string)"),
    "task": (lambda v: isinstance(v, str), "a task name (a string)"),
    "optimizer": (lambda v: isinstance(v, str), "an optimizer name (a string)"),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "measure_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "timeout_s": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf,
        "a finite number of seconds > 0",
    ),
}


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    defaults: dict  # [defaults] resolved against the built-in defaults
    groups: list[dict]  # each group fully resolved against the defaults


def builtin_suites() -> dict[str, Path]:
    """Built-in suite name -> its TOML file, shipped in the revbench.suites package."""
    root = resources.files("revbench.suites")
    return {
        Path(str(p)).stem: Path(str(p))
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".toml")
    }


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a TOML file by path."""
    suites = builtin_suites()
    if name_or_path in suites:
        path = suites[name_or_path]
    elif name_or_path.endswith(".toml") and Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise UsageError(f"unknown suite {name_or_path!r}; valid: {', '.join(suites)}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"malformed suite file {path}: not UTF-8 text ({e.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Normalise tomllib's "(at line L, column C)" / "(at end of document)" to path:L.
        message = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(m.group(1)) if m else max(1, len(text.splitlines()))
        message = re.sub(r"\s*\(at [^)]*\)", "", message)
        raise UsageError(f"malformed suite file {path}:{line}: {message}") from None
    _check_keys(path, text, data.keys(), TOP_KEYS, "suite")
    if not isinstance(data.get("description", ""), str):
        line = _line_of(text, "description")
        raise UsageError(f"malformed suite file {path}:{line}: description must be a string")
    if not isinstance(data.get("group", []), list):
        line = _line_of(text, "group")
        raise UsageError(
            f"malformed suite file {path}:{line}: group must be an array of tables ([[group]])"
        )
    defaults = dict(BUILTIN_DEFAULTS)
    defaults.update(_checked_table(path, text, data.get("defaults", {}), "defaults"))
    groups = []
    raw_groups = data.get("group", [])
    if not raw_groups:
        raise UsageError(f"malformed suite file {path}: it has no [[group]] table")
    for i, raw in enumerate(raw_groups):
        group = dict(defaults)
        group.update(_checked_table(path, text, raw, f"group {i + 1}"))
        group.setdefault("name", f"group{i + 1}")
        if "models" not in group:
            line = _line_of(text, "[[group]]", occurrence=i)
            raise UsageError(f"malformed suite file {path}:{line}: group {i + 1} names no models")
        groups.append(group)
    return Suite(path.stem, path, data.get("description", ""), defaults, groups)


def _checked_table(path: Path, text: str, table: dict, where: str) -> dict:
    if not isinstance(table, dict):
        raise UsageError(f"malformed suite file {path}: {where} must be a table")
    _check_keys(
        path, text, table.keys(), GROUP_KEYS - ({"name"} if where == "defaults" else set()), where
    )
    out = {}
    for key, value in table.items():
        line = _key_line(text, where, key)
        bad = f"malformed suite file {path}:{line}: {where}: {key}"
        if key in AXES and key != "overrides" and not isinstance(value, list):
            value = [value]
        if key == "overrides":
            if not isinstance(value, dict):
                raise UsageError(f"{bad} must be a table, e.g. {{ depth = [4, 8] }}")
            value = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
            for name, values in value.items():
                if not values:
                    raise UsageError(f"{bad}: {name} is empty; give at least one value")
        elif key in _ITEM_CHECKS:
            check, what = _ITEM_CHECKS[key]
            if not value:
                raise UsageError(f"{bad} is empty; give at least one value")
            for item in value:
                if not check(item):
                    raise UsageError(f"{bad} holds {item!r}; each must be {what}")
        elif key in _SCALAR_CHECKS:
            check, what = _SCALAR_CHECKS[key]
            if not check(value):
                raise UsageError(f"{bad} = {value!r} is invalid; it must be {what}")
        out[key] = value
    return out


def _key_line(text: str, where: str, key: str) -> int:
    """The line of `key` in the table `where` ("defaults", "group 2"), or the table's line."""
    if where == "defaults":
        start = _line_of(text, "[defaults]")
    elif where.startswith("group "):
        start = _line_of(text, "[[group]]", occurrence=int(where.split()[1]) - 1)
    else:
        start = 1
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for n, line in enumerate(text.splitlines()[start - 1 :], start):
        if pattern.search(line):
            return n
    return start


def _check_keys(path: Path, text: str, keys, valid: set, where: str) -> None:
    for key in keys:
        if key not in valid:
            line = _line_of(text, key)
            raise UsageError(
                f"malformed suite file {path}:{line}: unknown key {key!r} in {where}; "
                f"valid: {', '.join(sorted(valid))}"
            )


def _line_of(text: str, needle: str, occurrence: int = 0) -> int:
    pattern = re.compile(
        rf"^\s*{re.escape(needle)}\b" if needle.isidentifier() else re.escape(needle)
    )
    hits = [n for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return hits[occurrence] if len(hits) > occurrence else 1


def counts_key(cell: Cell) -> tuple:
    """What a cell's parameter and MAC counts belong to: `Cell.model_key` (no mode) less
    the overrides its family declares memory-only (`ModelConfig.memory_only`: how the step
    keeps its tensors, as `recompute_neck`), so that a run counts a model once for all of
    them. The run's counting (`RunContext`) and the estimate cache's counts entries key on
    it. A model not registered keeps its whole key."""
    try:
        memory_only = get_info(cell.model).config.memory_only
    except UnknownModelError:
        return cell.model_key
    counted = [(k, v) for k, v in cell.overrides if k not in memory_only]
    return (cell.model, variant_label(counted), cell.resolution)


def model_facts(models: Iterable[str]) -> dict[str, dict[str, int]]:
    """What analysis needs of each registered model named that its records do not carry:
    its place in the registry (legends and tables list S0 before S1, T before S before B)
    and its native resolution. `run_suite` writes them into the run's manifest, so figures
    and the report read them with the results, never from the registry."""
    rank = {info.name: i for i, info in enumerate(list_models())}
    return {
        model: {"rank": rank[model], "native_resolution": get_info(model).native_resolution}
        for model in sorted(set(models))
        if model in rank
    }


def expand(
    suite: Suite,
    *,
    method: str,
    models: list[str] | None = None,
    resolutions: list[str] | None = None,
    batch_sizes: list[int] | None = None,
    precisions: list[str] | None = None,
    modes: list[str] | None = None,
    scenario: str | None = None,
    optimizer: str | None = None,
    card: str | None = None,
) -> list[Cell]:
    """Cells of `suite`, with any axis replaced by the CLI's value. Validates everything
    up front, so bad input is reported before a single cell runs. `card`: the card the
    estimates are for (`revbench.cards`; the estimate method only).

    `models` selects: each named model keeps the axes of the groups that list it, and a
    model the suite does not list runs with the suite's defaults.
    """
    _check_choice("method", method, method_names())
    if card is not None:
        _check_choice("card", card, list(CARDS))
        if method != "estimate":
            raise UsageError(
                f"--card {card} is for estimates; the {method} method measures the device "
                "it runs on (use --device estimate)"
            )
    given = {
        "models": models,
        "resolutions": resolutions,
        "batch_sizes": batch_sizes,
        "precisions": precisions,
        "modes": modes,
    }
    for axis, values in given.items():
        if values is not None and len(values) == 0:
            raise UsageError(f"{axis} is empty; give at least one value")
    cli = {
        "resolutions": resolutions,
        "batch_sizes": batch_sizes,
        "precisions": precisions,
        "modes": modes,
        "scenario": scenario,
        "optimizer": optimizer,
    }
    groups = [dict(g) for g in suite.groups]
    if models is not None:
        listed = {m for g in groups for m in g["models"]}
        for g in groups:
            g["models"] = [m for m in g["models"] if m in models]
        extra = [m for m in models if m not in listed]
        if extra:
            groups.append({**suite.defaults, "name": "cli", "models": extra})
    cells: dict[tuple, Cell] = {}
    for group in groups:
        g = dict(group)
        g.update({k: v for k, v in cli.items() if v is not None})
        for cell in _expand_group(suite, g, method):
            if card is not None:
                cell = replace(cell, card=card)
            cells.setdefault(cell.key, cell)  # groups may overlap once the CLI replaces an axis
    if not cells:
        raise UsageError(f"suite {suite.name!r} expands to no cells; give it models to run")
    return list(cells.values())


def _expand_group(suite: Suite, g: dict, method: str) -> list[Cell]:
    try:
        check_scenario(g["scenario"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_choice("optimizer", g["optimizer"], OPTIMIZERS)
    if g["task"] is not None:
        _check_choice("task", g["task"], task_names())
    for p in g["precisions"]:
        _check_choice("precision", p, PRECISIONS)
    for m in g["modes"]:
        _check_choice("mode", m, MODES)
    for b in g["batch_sizes"]:
        if not _is_side(b):
            raise UsageError(f"batch size {b!r} is invalid; valid: an integer in 1..{MAX_SIDE}")
    override_names = sorted(g["overrides"])
    override_values = [g["overrides"][k] for k in override_names]
    out = []
    for model in g["models"]:
        info = _info(model)
        # Baselines have one mode; a reversible model runs in each requested mode it supports.
        model_modes = [m for m in g["modes"] if m in info.modes] or [info.modes[0]]
        for res in g["resolutions"]:
            for combo in itertools.product(*override_values):
                overrides = dict(zip(override_names, combo))
                resolution = _resolution(res, info, overrides)
                for b, p, m in itertools.product(g["batch_sizes"], g["precisions"], model_modes):
                    out.append(
                        make_cell(
                            model,
                            task=g["task"],
                            overrides=overrides,
                            resolution=resolution,
                            batch_size=b,
                            precision=p,
                            scenario=g["scenario"],
                            mode=m,
                            method=method,
                            optimizer=g["optimizer"],
                            suite=suite.name,
                            group=g["name"],
                            warmup_steps=int(g["warmup_steps"]),
                            measure_steps=int(g["measure_steps"]),
                            timeout_s=float(g["timeout_s"]),
                        )
                    )
    return out


def make_cell(
    model: str, *, task: str | None = None, overrides: dict | None = None, **fields
) -> Cell:
    """A cell of a registered model, with what the registry knows of it (family, kind,
    size) and the task it serves with these overrides. `task`, when given, must be that
    task. `fields` are the other Cell fields (resolution, batch_size, ...)."""
    info = _info(model)
    overrides = overrides or {}
    _check_override_types(info, overrides)
    return Cell(
        model=model,
        family=info.family,
        kind=info.kind,
        size=info.size,
        task=_task(info, overrides, task),
        overrides=overrides,
        **fields,
    )


# Config field annotations whose values can be checked before the config is built (others,
# such as `tuple[int, ...] | None`, are left to the config's own validation).
_OVERRIDE_TYPES = {
    "int": (_is_int, "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _check_override_types(info: ModelInfo, overrides: dict) -> None:
    """Refuse an override value of the wrong type, or an integer too large for a tensor
    dimension, before a config is built or a cell runs. Unknown names are the config's to
    refuse (it lists the valid ones)."""
    annotations = {f.name: str(f.type) for f in dataclasses.fields(info.config)}
    for key, value in overrides.items():
        label = f"{info.name}: override {key}={value!r} is invalid"
        if _is_int(value) and abs(value) > MAX_SIDE:
            raise UsageError(f"{label}: too large for a tensor dimension (max {MAX_SIDE})")
        check = _OVERRIDE_TYPES.get(annotations.get(key, ""))
        if check is not None and not check[0](value):
            raise UsageError(f"{label}: {key} takes {check[1]}")


def _info(model: str) -> ModelInfo:
    try:
        return get_info(model)
    except UnknownModelError:
        valid = ", ".join(i.name for i in list_models())
        raise UsageError(f"unknown model {model!r}; valid: {valid}") from None


def _task(info: ModelInfo, overrides: dict, wanted: str | None) -> str:
    """The task `info`'s model serves with `overrides`, checked against `wanted`."""
    try:
        served = info.task_for(overrides)
    except ValueError as e:  # an override the model does not take
        raise UsageError(str(e)) from None
    label = model_label(info.name, variant_label(overrides))
    if wanted is not None and wanted != served:
        raise UsageError(f"task {wanted!r} is invalid for {label}: it serves {served!r}")
    if served not in task_names():
        raise UsageError(
            f"{label} serves task {served!r}, which revbench cannot run; "
            f"valid: {', '.join(task_names())}"
        )
    return served


def _resolution(value, info: ModelInfo, overrides: dict) -> int:
    """The side `value` names ("native" or pixels), checked against the model with
    `overrides` (a patch size, say, changes the multiple it needs)."""
    try:
        resolution = info.native_resolution if value == "native" else int(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"resolution {value!r} is invalid; valid: a positive integer or 'native'"
        ) from None
    if not _is_side(resolution):
        raise UsageError(f"resolution {value!r} is invalid; valid: 'native' or 1..{MAX_SIDE}")
    try:
        info.check_resolution(resolution, overrides)
    except ValueError as e:  # ResolutionError, or an override the model does not take
        raise UsageError(str(e)) from None
    return resolution


def _check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise UsageError(f"{what} {value!r} is invalid; valid: {', '.join(valid)}")
