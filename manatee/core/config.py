"""Configuration files: load JSON (or YAML), validate every key, fail with one clear message.

Every daemon describes its file as a pydantic model derived from `ConfigModel`. Unknown keys,
wrong types, out-of-range values and missing required keys are all errors, reported as
``config FILE: key 'a.b': what is wrong`` so an operator can fix the file without reading code.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


def _types_in(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (int | None -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_types_in(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return {annotation}


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys are errors, loaded configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v: Any, info: ValidationInfo) -> Any:
        """JSON true/false is not a number: `"postgresPort": true` must not become port 1."""
        if isinstance(v, bool) and info.field_name:
            admitted = _types_in(cls.model_fields[info.field_name].annotation)
            if bool not in admitted and admitted & {int, float}:
                raise ValueError("must be a number, not true/false")
        return v


# Keys whose values are never shown in an error message (a typo'd secret must not reach a log).
SECRET_KEY_WORDS = ("secret", "password", "token", "key")


def _is_secret_key(key: str | None) -> bool:
    last = (key or "").rsplit(".", 1)[-1].lower()
    return any(w in last for w in SECRET_KEY_WORDS) and not last.endswith(("file", "path"))


class ConfigError(Exception):
    """A config file that cannot be used. `key` is dotted ('postgresMgrCfg.dataDir') or None."""

    def __init__(self, file: str, key: str | None, problem: str):
        self.file = file
        self.key = key
        self.problem = problem
        where = f"key '{key}': " if key else ""
        super().__init__(f"config {file}: {where}{problem}")


M = TypeVar("M", bound=BaseModel)


def parse_text(text: str, file: str) -> Any:
    """JSON first (the original's format); YAML for .yaml/.yml files or when JSON fails."""
    is_yaml = file.endswith((".yaml", ".yml"))
    if not is_yaml:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            if file.endswith(".json"):
                raise ConfigError(file, None, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(file, None, f"not valid JSON or YAML: {getattr(e, 'problem', e)}{at}") from None


def _describe(err: dict) -> tuple[str | None, str]:
    key = ".".join(str(p) for p in err.get("loc", ())) or None
    kind = err.get("type", "")
    got = err.get("input")
    if kind == "missing":
        return key, "is required but missing"
    if kind == "extra_forbidden":
        return key, "is not a known key (check its spelling; docs/configuration.md lists every key)"
    msg = err.get("msg", "is invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = msg[0].lower() + msg[1:] if msg else msg
    if _is_secret_key(key):
        return key, f"{msg} (value not shown: it is a secret)"
    if isinstance(got, (dict, list)):  # a whole section: the message says what is wrong with it
        return key, msg
    shown = json.dumps(got) if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
    return key, f"{msg} (got {shown})"


def validate(data: Any, model: type[M], file: str = "<config>") -> M:
    """Validate parsed data against `model`; the first problem becomes a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(file, None, f"must be a JSON object at the top level, not {type(data).__name__}")
    try:
        return model.model_validate(data, strict=False)
    except pydantic.ValidationError as e:
        errors = e.errors(include_url=False)
        key, problem = _describe(errors[0])
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ConfigError(file, key, problem) from None


def read_config_data(path: str | os.PathLike) -> Any:
    """Read and parse a config file (JSON or YAML) without validating it; ConfigError naming
    the file when it is missing, unreadable or not parseable."""
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(file, None, f"cannot be read: {e}") from None
    return parse_text(text, file)


def load_config(path: str | os.PathLike, model: type[M]) -> M:
    """Read, parse and validate a config file; every failure is a ConfigError naming the file."""
    return validate(read_config_data(path), model, str(path))


def replaced_key(old: str, why: str) -> Any:
    """A model validator refusing `old`, a key an earlier version took, with `why` (what replaced it)."""
    def refuse(cls: type, data: Any) -> Any:
        if isinstance(data, dict) and old in data:
            raise ValueError(why)
        return data

    return model_validator(mode="before")(classmethod(refuse))


def seconds(ms_key: str) -> property:
    """A read-only seconds view of the millisecond key `ms_key` of a config model.

    Config files give durations in milliseconds (the original's keys); code reads them in
    seconds through these views only (``heartbeat_interval_s = seconds("heartbeatInterval")``),
    so the conversion is written once, here, and never by a caller.
    """
    return property(lambda self: getattr(self, ms_key) / 1000, doc=f"{ms_key}, in seconds")


# ---------------------------------------------------------------------- shared security keys


class HttpServerCfg(ConfigModel):
    """Bounds of a daemon's HTTP server (see manatee.core.httpserver)."""

    maxConnections: int = Field(256, ge=8, le=100000, description="open connections at most; beyond it the oldest idle one is closed")
    idleTimeout: int = Field(10000, ge=500, le=3600000, description="a connection with no request in progress is closed after this long without data (ms)")
    idle_timeout_s = seconds("idleTimeout")


def check_secret_file(v: Optional[str]) -> Optional[str]:
    if v is not None and not v.startswith("/"):
        raise ValueError("must be an absolute path to a root-only file holding the shard secret")
    return v


def check_secret_mode(secret_file: Optional[str], insecure: bool) -> None:
    """The one rule every daemon shares: a shard secret, or an explicit insecure mode."""
    if insecure and secret_file:
        raise ValueError("secretFile and insecure: true contradict each other (remove one)")
    if not insecure and not secret_file:
        raise ValueError("secretFile is required: a root-only file holding the shard secret "
                         "(docs/security.md); or insecure: true to run without authentication (not for production)")
