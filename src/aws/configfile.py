"""``--config aws.toml``: every option in one file (stdlib ``tomllib``).

Keys are the :class:`aws.config.Config` field names (``header_timeout``, not
``--header-timeout``); values are read by the same parsers as the flags, so a file and a
command line cannot disagree about what a value means. The pattern rules are tables::

    [cache_control]
    "/static/assets/*" = "public, max-age=31536000, immutable"

    [header."*"]
    "X-Content-Type-Options" = "nosniff"

``root``, ``access_log``, ``tls_cert`` and ``tls_key`` are relative to the file's folder.
An unknown key or a bad value stops the start with the key's name and its line
(:class:`ConfigFileError`).
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from dataclasses import Field
from typing import Any

from aws import config

_RELATIVE_TO_FILE = ("root", "access_log", "tls_cert", "tls_key")


class ConfigFileError(ValueError):
    """The file cannot be used; the message names the file, the line and the key."""


def load(path: str) -> dict[str, Any]:
    """Field name -> value for the keys the file sets."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigFileError(f"{path}: {exc.strerror}") from None
    text = raw.decode("utf-8", "replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    known = {f.name: f for f in config.flags() if f.name != "config"}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        where = f"{path}:{_line_of(text, key)}"
        f = known.get(key)
        if f is None:
            raise ConfigFileError(f"{where}: unknown key {key!r}")
        try:
            out[key] = _value(f, value, text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise ConfigFileError(f"{where}: {key}: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    for key in _RELATIVE_TO_FILE:
        if isinstance(out.get(key), str) and out[key] != "-":
            out[key] = os.path.join(base, out[key])
    return out


def _value(f: Field[Any], value: Any, text: str) -> Any:
    meta = f.metadata
    parse = meta["parse"]
    if f.name == "cache_control":
        table = _table(value, "a table of PATTERN = VALUE")
        return tuple(
            _rule(text, pattern, config.cache_rule, f"{pattern}={_text(v)}")
            for pattern, v in table.items()
        )
    if f.name == "header":
        rules = []
        for pattern, fields in _table(value, 'tables [header."PATTERN"]').items():
            table = _table(fields, f"[header.{pattern!r}] to be a table of NAME = VALUE")
            for name, v in table.items():
                rule = f"{pattern}={name}: {_text(v)}"
                rules.append(_rule(text, name, config.header_rule, rule))
        return tuple(rules)
    if meta["repeat"]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        return tuple(_one(meta, v) for v in value)
    if parse is bool:
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if isinstance(value, (dict, list, bool)):
        raise TypeError(f"expected a single value, not {type(value).__name__}")
    return _one(meta, str(value))


def _one(meta: Any, text: str) -> Any:
    value = meta["parse"](text)
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ValueError(f"{value!r} is not one of {', '.join(meta['choices'])}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {value!r}")
    return value


def _table(value: Any, expected: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected {expected}")
    return value


def _rule(text: str, key: str, parse: Any, *args: Any) -> Any:
    """A rule parsed, its error naming the line of its own key."""
    try:
        return parse(*args)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"line {_line_of(text, key)}: {key!r}: {exc}") from None


def _line_of(text: str, key: str) -> int:
    """The line where ``key`` is set or opens a table (1 when it cannot be told)."""
    quoted = re.escape(key)
    rx = re.compile(
        rf"^[ \t]*(?:\[+[ \t]*)?(?:{quoted}|\"{quoted}\"|'{quoted}')[ \t]*(?:=|\.|\])",
        re.MULTILINE,
    )
    m = rx.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else 1
