"""Reading run configs (YAML, presets, --set overrides) and command options, with one-line errors."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from gts_megatron.config.run import RunConfig, _Section
from gts_megatron.errors import GtsError

MAX_EXPANDED_NODES = 100_000  # a config has hundreds of values; an alias bomb has billions


def _expanded_size(node, sizes: dict) -> int:
    """Values in ``node`` once every alias is written out (memoised: aliases share nodes)."""
    if id(node) not in sizes:
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.1 wants a dot, users do not write one),
    refuses a key given twice in one mapping (YAML would keep the last silently) and bounds
    alias expansion."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise yaml.YAMLError(f"its aliases (*name) expand to more than {MAX_EXPANDED_NODES} values; "
                                 f"write the values out")
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {str(key)[:80]!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|"
               r"^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text, turning syntax errors into a one-line GtsError naming ``source``."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0][:200]
        raise GtsError(f"{source}{where}: not valid YAML ({problem})") from None


def read_utf8(path: Path) -> str:
    """A text file's contents, or a one-line GtsError at the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GtsError(f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                       f"save it as UTF-8") from None


def model_presets() -> list[str]:
    """Names of the model presets shipped with the package (``model: <name>`` in a run config)."""
    root = resources.files("gts_megatron") / "configs" / "models"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def packaged_configs() -> dict[str, str]:
    """The run configs shipped with the package, by name (``demo``: the demo's), with their paths."""
    root = resources.files("gts_megatron") / "configs"
    return {p.name[:-5]: str(p) for p in root.iterdir() if p.name.endswith(".yaml")}


def _resolve_model(raw: dict, source: str) -> dict:
    """``model: <preset>`` or ``model: {preset: <name>, field: value, ...}`` -> plain fields."""
    model = raw.get("model")
    if isinstance(model, str):
        return {**raw, "model": _load_model_preset(model, source)}
    if isinstance(model, dict) and "preset" in model:
        rest = {k: v for k, v in model.items() if k != "preset"}
        return {**raw, "model": {**_load_model_preset(str(model["preset"]), source), **rest}}
    return raw


def _load_model_preset(name: str, source: str) -> dict:
    if name not in model_presets():
        raise GtsError(f"{source}: model: unknown preset {name!r}; valid presets: {', '.join(model_presets())}")
    text = (resources.files("gts_megatron") / "configs" / "models" / f"{name}.yaml").read_text()
    return parse_yaml(text, f"preset {name}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.field=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise GtsError(f"override {item!r}: expected section.field=value, e.g. train.steps=5")
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise GtsError(f"override {item!r}: {parts[0]} is not a section")
        section[parts[1]] = parse_yaml(value, f"override {item!r}")
    return raw


def _section_of(annotation) -> Any:
    """The config class a field holds (through Optional), or None for a plain value."""
    return next((a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), None)


def describe_error(error: dict, source: str, root: type = RunConfig) -> str:
    """One line for a pydantic error in a config of class ``root`` read from ``source``: an
    unknown field lists the valid ones of its section."""
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        section: Any = root
        for part in error["loc"][:-1]:
            section = _section_of(section.model_fields[part].annotation) if part in section.model_fields else None
            if section is None:
                break
        valid = ", ".join(section.model_fields) if section is not None else ""
        return f"{source}: unknown field {loc}" + (f"; valid fields: {valid}" if valid else "")
    msg = error["msg"].removeprefix("Value error, ")
    got = "" if error["type"] == "value_error" else f" (got {error.get('input')!r})"
    return f"{source}: {loc}: {msg}{got}"


def build_config(raw: Any, source: str) -> RunConfig:
    """Validate a raw dict into a RunConfig; the first problem becomes a one-line GtsError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GtsError(f"{source}: expected a mapping with sections model, parallel, train, data")
    raw = _resolve_model(dict(raw), source)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise GtsError(describe_error(exc.errors()[0], source)) from None


def load_config(path: Optional[str | Path], overrides: list[str] = ()) -> RunConfig:
    """Read a run config from YAML (or the defaults when ``path`` is None) plus overrides."""
    source = str(path) if path is not None else "defaults"
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise GtsError(f"config file {p} does not exist")
        raw = parse_yaml(read_utf8(p), source) or {}
    if overrides:
        if not isinstance(raw, dict):
            raise GtsError(f"{source}: expected a mapping with sections model, parallel, train, data")
        raw = apply_overrides(_resolve_model(dict(raw), source), list(overrides))
        source = f"{source} (with overrides)"
    return build_config(raw, source)


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, round-trippable through :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _field_line(name: str, field, indent: str = "") -> str:
    default = field.get_default(call_default_factory=True) if not field.is_required() else "(required)"
    return f"{indent}{name}: {yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}  # {field.description}"


def describe_fields(root: type = RunConfig) -> str:
    """Every field of a config class (``gts config show``: the run config's) with its default and
    meaning, section by section."""
    lines = []
    for name, field in root.model_fields.items():
        section = _section_of(field.annotation)
        if section is None:
            lines.append(_field_line(name, field))
            continue
        about = section.__doc__.strip().splitlines()[0]
        lines.append(f"{name}:  # " + (f"{field.description}: {about}" if field.description else about))
        lines += [_field_line(key, f, "  ") for key, f in section.model_fields.items()]
    return "\n".join(lines)


def build_options(section: type[_Section], values: dict) -> _Section:
    """Validate a command's options (given as --flags) into ``section``; the first problem
    becomes a one-line GtsError naming the flag."""
    try:
        return section.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = f"--{str(error['loc'][0]).replace('_', '-')}: " if error["loc"] else ""
        got = "" if error["type"] == "value_error" else f" (got {error.get('input')!r})"
        raise GtsError(f"{flag}{error['msg'].removeprefix('Value error, ')}{got}") from None
