"""Reading params: params.yaml (or a dict) into the typed, validated Params; their flat `section.key`
form (MLflow params, `dvc exp run -S`); the params keys a stage declares in dvc.yaml (what its MLflow
run logs).

An unknown key or a wrong type stops with a message naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from nerdistill.params import Params, ParamsError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `5e-05` as a float, as YAML 1.2 does. PyYAML follows YAML 1.1, where a
    float needs a dot, so it reads `5e-05` as a string; `dvc exp run -S lr=0.00005` writes just that."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


# YAML's true is an int to Python, so bool is excluded from the numbers explicitly.
_SCALARS: dict[type, tuple[typing.Callable[[Any], bool], str]] = {
    bool: (lambda value: isinstance(value, bool), "true or false"),
    int: (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    float: (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    str: (lambda value: isinstance(value, str), "a string"),
}


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameters file not found; run from the repository root or pass --params")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if raw is None:  # a file emptied by mistake would otherwise run every stage on the defaults, unseen
        raise ParamsError(f"{path}: empty (no keys, at most comments); restore it (git checkout -- {path}), or "
                          "write {} in it to run every stage on the defaults")
    try:
        params = _build(Params, raw, "")
        params.validate()
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
    return params


def flat(params: Params) -> dict[str, Any]:
    """`section.key` -> value, the form MLflow params and `dvc exp run -S` use."""
    return dict(_flatten(dataclasses.asdict(params)))


def select(params: Params, keys: typing.Iterable[str]) -> dict[str, Any]:
    """The flat params under `keys`, each a section (`teacher`) or a dotted key (`base.seed`)."""
    prefixes = tuple(keys)
    return {name: value for name, value in flat(params).items()
            if any(name == key or name.startswith(f"{key}.") for key in prefixes)}


def provenance(params: Params, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a saved student carries about how it was made: the teacher, the copied layers, the layer
    map and every param of the stage that trained it last, on top of what earlier stages recorded
    (prune's kept heads). `params` also tells a tagger the window the student was trained with."""
    return {**(earlier or {}), "teacher": params.teacher.model_name,
            "teacher_layers": list(params.student.teacher_layers),
            "layer_map": dataclasses.asdict(params.train.layer_map), "params": flat(params)}


def _flatten(tree: dict[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{key}.")
        else:
            yield key, list(value) if isinstance(value, tuple) else value


def stage_param_keys(dvc_yaml: str | Path, stage: str) -> tuple[str, ...]:
    """The params.yaml keys `stage` declares in dvc.yaml: the one list of what a stage reads."""
    dvc_yaml = Path(dvc_yaml)
    try:
        stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
        entries = stages[stage].get("params", [])
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise ParamsError(f"{dvc_yaml}: cannot read the params of stage {stage!r} ({err!r}); run from the "
                          "repository root, where dvc.yaml declares every stage") from err
    keys: list[str] = []
    for entry in entries:
        # `- key` reads params.yaml; `- params.yaml: [keys]` names the file explicitly.
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict) and set(entry) <= {"params.yaml"}:
            keys.extend(key for listed in entry.values() for key in (listed or []))
        else:
            raise ParamsError(f"{dvc_yaml}: stage {stage!r} declares params {entry!r}; nerdistill reads "
                              "params.yaml only, so list its keys (e.g. - train.temperature)")
    return tuple(keys)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` as `dvc exp run -S` takes it: the value read as YAML (0.5, [1,2,4], true, a path)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"-S {text!r}: expected KEY=VALUE, e.g. -S distill.epochs=2")
    try:
        return key.strip(), yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ParamsError(f"-S {text!r}: the value is not valid YAML ({err})") from None


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Same validation as load_params, for params held in memory (tests, saved provenance)."""
    params = _build(Params, raw, "")
    params.validate()
    return params


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{key or 'top level'}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{key}." if key else ""
        raise ParamsError(f"unknown key {where}{unknown[0]}; allowed keys: {', '.join(sorted(names))}")
    values = {name: _coerce(hints[name], raw[name], f"{key}.{name}" if key else name)
              for name in names if name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key} = {value!r}; allowed values: {', '.join(map(str, allowed))}")
        return value
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):  # a NamedTuple
        fields = typing.get_type_hints(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(fields):
            raise ParamsError(f"{key} = {value!r}; expected a list of {len(fields)} values "
                              f"[{', '.join(fields)}]")
        return hint(*(_coerce(arg, item, f"{key}.{name}") for (name, arg), item in zip(fields.items(), value)))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key} = {value!r}; expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"{key} = {value!r}; expected a list of {len(args)} values")
        return tuple(_coerce(arg, item, f"{key}[{i}]") for i, (arg, item) in enumerate(zip(args, value)))
    if hint in _SCALARS:
        accepts, expected = _SCALARS[hint]
        if not accepts(value):
            raise ParamsError(f"{key} = {value!r}; expected {expected}")
        return float(value) if hint is float else value
    raise TypeError(f"unsupported params type for {key}: {hint}")
