"""The one reader of YAML configs: a file plus `--set key=value` overrides -> a typed pydantic model, or one sentence.

Every `--config` (tiling, pretraining, training, experiment grid, demo) is read by `load_config(Model, path, sets)`.
The models say what a file may hold; each lives beside the code it configures and forbids unknown keys:

    slides/params.py      TilingParams (tiling section), TissueParams (its `tissue:` section)
    train/pretrain.py     PretrainConfig (= PretrainSettings + stores, out, exclude_test_of)
    train/finetune.py     TrainConfig (= TrainSettings + cohort, stores, out, bags, mixer, ...), MixerSetting
    models/mixer.py       MixerOverrides (the `mixer:` sections)
    eval/experiments.py   GridConfig, Task
    studies/demo.py        DemoConfig
    studies/benchmark.py   BenchmarkConfig

A failure names the file and line (or the --set that caused it), the key, and what is allowed: never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .fileio import FileTooLargeError, UnsafePathError, read_bytes_limited

M = TypeVar("M", bound=BaseModel)

# Upper bounds on what a config may set (docs/formats.md, "Config bounds"). Generous for the paper's scale (mixer dim
# 1536, 12 layers, batch 4096 across many GPUs, 200 M samples); what they stop is a slip such as `1e9` or `1e30`
# that would otherwise crash with a traceback, or fill memory, an hour into a run.
MAX_WIDTH = 1 << 16  # hidden sizes, projector widths
MAX_DIM = 1 << 14  # embedding and mixer dimensions (a store holds at most 16,384-d embeddings)
MAX_DEPTH = 256  # transformer layers
MAX_HEADS = 1024
MAX_LR = 1.0  # learning rates (the paper's are below 1e-2)
MAX_WEIGHT_DECAY = 10.0
MAX_BATCH = 1 << 20  # samples or specimens per step
MAX_STEPS = 10**9  # optimiser steps, warm-up steps, logging intervals
MAX_EPOCHS = 100_000
MAX_WORKERS = 256  # data-loading processes
MAX_SEED = 2**32 - 1  # what numpy's and torch's generators take everywhere
MAX_RESAMPLES = 10**6  # bootstrap resamples
MAX_MEMORY_MB = 1 << 24  # 16 TiB, for memory budgets given in MiB
MAX_CONFIG_CHARS = 1_000_000
MAX_CONFIG_VALUES = 100_000  # after expanding aliases: a "billion laughs" file is refused before it is built
KeyPath = tuple[Any, ...]


def load_config(
    model: type[M],
    path: str | Path | None,
    sets: Sequence[str] | None = None,
    *,
    section: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> M:
    """Validate `path` (a YAML mapping; with `section`, that key's mapping when the file has one), then the
    `--set key=value` strings (dotted keys reach into sections: mixer.depth=4), then `options` (command-line flags
    already parsed; None values are left out) as one `model`."""
    data, lines = ({}, {}) if path is None else read_yaml_mapping(path)
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
        lines = {key[1:]: line for key, line in lines.items() if key[:1] == (section,)}
    overridden: dict[KeyPath, str] = {}
    for item in sets or []:
        key, value = parse_set(item)
        _merge(data, key, value)
        overridden[key] = f"--set {item}"
    for key, value in _leaves(options or {}, ()):
        _merge(data, key, value)
        overridden[key] = f"the command line ({_dotted(key)} = {value!r})"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, model, path, lines, overridden) for error in exc.errors()]
        raise ConfigError("; ".join(problems)) from None


def read_yaml_mapping(path: str | Path) -> tuple[dict, dict[KeyPath, int]]:
    """The file's mapping and the line (1-based) of every key path in it; one ConfigError sentence otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file; give a YAML config file")
    try:
        text = read_bytes_limited(path, MAX_CONFIG_CHARS * 4, what="config file").decode("utf-8-sig")
    except (UnsafePathError, FileTooLargeError) as exc:
        raise ConfigError(f"{exc}; give a YAML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start} cannot be decoded); give a YAML config file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{path}: {len(text):,} characters is too large for a config (at most {MAX_CONFIG_CHARS:,})")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{path}: expands to more than {MAX_CONFIG_VALUES:,} values through YAML aliases (*name); "
                "write the settings out"
            )
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; fix the file") from None
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark or exc.context_mark, exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        opened = (
            f" {exc.context} from line {context.line + 1}" if exc.context and context and context is not mark else ""
        )
        tab = " (YAML indents with spaces, never tabs)" if "\\t" in str(exc.problem) or "\t" in str(exc.problem) else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {exc.problem}{opened}{tab}; fix the file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the file") from None
    if node is None or data is None:
        raise ConfigError(f"{path}: the file is empty; it should hold `key: value` settings")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} line {node.start_mark.line + 1}: expected a mapping of `key: value` settings, "
            f"found a {_yaml_kind(data)}"
        )
    lines: dict[KeyPath, int] = {}
    try:
        _key_lines(path, node, (), lines)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; fix the file") from None
    return data, lines


def parse_set(item: str) -> tuple[KeyPath, Any]:
    """`mixer.depth=4` -> (("mixer", "depth"), 4); the value is read as YAML (`null`, `[1, 2]`, `{a: 1}`)."""
    key, sep, value = item.partition("=")
    parts = tuple(p.strip() for p in key.split("."))
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set steps=500, --set mixer.depth=4)")
    try:
        return parts, yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {item}: the value {value!r} is not valid YAML; quote it or fix it") from None


def model_default(model: type[BaseModel], name: str) -> Any:
    """A field's default, for command-line help: defaults are written once, in the model."""
    field = model.model_fields[name]
    return field.get_default(call_default_factory=True)


def _merge(data: dict, key: KeyPath, value: Any) -> None:
    for part in key[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[key[-1]] = value


def _leaves(options: Mapping[str, Any], prefix: KeyPath):
    """(key path, value) of every value that is not None; nested mappings are walked, not replaced."""
    for name, value in options.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, (*prefix, name))
        elif value is not None:
            yield (*prefix, name), value


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values the node stands for once aliases are expanded (each shared node counted once per use)."""
    if id(node) not in memo:
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        )
        memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(node)]


def _key_lines(
    path: Path, node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], seen: set[int] | None = None
) -> None:
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: its keys were located where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # safe_load refuses it with its line
            key = (*prefix, key_node.value)
            if key in lines:
                raise ConfigError(
                    f"{path} line {key_node.start_mark.line + 1}: `{_dotted(key)}` is given twice "
                    f"(first on line {lines[key]}); keep one"
                )
            lines[key] = key_node.start_mark.line + 1
            _key_lines(path, value_node, key, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*prefix, i)] = item.start_mark.line + 1
            _key_lines(path, item, (*prefix, i), lines, seen)


def _describe(
    error: Mapping[str, Any], model: type[BaseModel], path: str | Path | None, lines: dict, overridden: dict
) -> str:
    loc = tuple(error["loc"])
    origin = next(
        (label for key, label in overridden.items() if loc and (loc[: len(key)] == key or key[: len(loc)] == loc)), None
    )
    if origin is None:
        if path is None:
            origin = "the settings"
        else:
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            origin = f"{path}" + (f" line {line}" if line else "")
            if not loc and overridden:
                origin += " with " + ", ".join(overridden.values())
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return (
            f"{origin}: unknown setting `{_dotted(loc)}`"
            + (f" (did you mean `{hint[0]}`?)" if hint else "")
            + (f"; known: {', '.join(known)}" if known else "")
        )
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "missing":
        return f"{origin}: `{_dotted(loc)}` is required"
    if loc[-1:] == ("[key]",):  # a mapping's key was refused (e.g. a task name that becomes a folder)
        return f"{origin}: the key {error['input']!r} of `{_dotted(loc[:-2])}`: {message}"
    what = f"`{_dotted(loc)}` = {error['input']!r}: " if loc else ""
    return f"{origin}: {what}{message}"


def _known_keys(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """The keys allowed at `loc` inside `model` (following nested models, dataclasses, lists and dicts)."""
    kind: Any = model
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(part, int) or (typing.get_origin(kind) in (dict, Mapping) and not _fields(kind)):
            args = typing.get_args(kind)
            kind = args[-1] if args else None
        else:
            kind = _fields(kind).get(part)
        if kind is None:
            return []
    return list(_fields(_unwrap(kind)))


def _fields(kind: Any) -> dict[str, Any]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {name: f.annotation for name, f in kind.model_fields.items()}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return {f.name: hints.get(f.name) for f in dataclasses.fields(kind)}
    return {}


def _unwrap(kind: Any) -> Any:
    """Optional[X] / X | None -> X."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def _dotted(loc: KeyPath) -> str:
    return ".".join(str(p) for p in loc) or "(the whole file)"


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "single string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
