"""Reading configuration files: YAML through a hardened safe loader, and ``--set`` overrides.

The loader is PyYAML's safe one (no ``!!python`` tags) made stricter for files a user may get
from anywhere: a key given twice is an error naming both lines, nesting depth and the values
aliases expand to are bounded (a "billion laughs" is refused in milliseconds), bytes must be
UTF-8, and ``1e-4`` is a number (YAML 1.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vae_study.config.messages import show, show_key
from vae_study.errors import ConfigError
from vae_study.files import atomic_write_text

# What one YAML document may hold. A study file is a few dozen values a few levels deep;
# these refuse the documents that would exhaust the reader instead: nesting thousands deep
# (Python's recursion limit) and anchors whose aliases expand to billions of values.
MAX_DEPTH = 32
MAX_VALUES = 100_000


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (no ``!!python`` tags), stricter: a key given twice in one
    mapping is an error, depth and expanded size are bounded, and a number in scientific
    notation without a dot (``1e-4``) is a float, as in YAML 1.2, not a string."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"the document nests deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        _check_expanded(node)  # before anything is built: aliases are still shared here
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # <<: *base merges on purpose; later keys override it
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.get(key)
                except TypeError:
                    continue  # an unhashable key: the safe loader refuses it itself
                if line is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {show(key)} is given twice (first at line {line + 1}); keep one",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} digits is too long", node.start_mark
            ) from None


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing what ``_Loader`` reads back the same: a string such as
    ``1e5`` is quoted, since ``_Loader`` reads it unquoted as a float."""


_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def dump_yaml(obj: Any) -> str:
    """``obj`` as YAML text that ``read_yaml`` reads back as the same values."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False)


def _check_expanded(root: Any) -> None:
    """Refuse a document whose aliases expand to more than MAX_VALUES values, nest deeper
    than MAX_DEPTH or refer to themselves. Shared nodes are counted once per use, each
    visited once (memoised), so a billion laughs is refused in microseconds."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded
    open_nodes: set[int] = set()

    def visit(node: Any) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to the value that contains it", node.start_mark
            )
        open_nodes.add(id(node))
        values, depth = 1, 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            v, d = visit(child)
            values += v
            depth = max(depth, d + 1)
            if values > MAX_VALUES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"its anchors and aliases expand to more than {MAX_VALUES} values",
                    child.start_mark,
                )
            if depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"its aliases expand to a nesting deeper than {MAX_DEPTH} levels",
                    child.start_mark,
                )
        open_nodes.discard(id(node))
        sizes[id(node)] = (values, depth)
        return values, depth

    visit(root)


def _load_yaml(text: str) -> Any:
    """One YAML document, read by ``_Loader`` (what ``yaml.safe_load`` does, stricter)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


MAX_TEXT_BYTES = 2**22  # 4 MiB: a study file is a few kB; /dev/zero or a data file is not one


def read_text_input(path: Path, what: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a small text file a user names (a study or run file): a ``ConfigError``
    unless it is a regular file (a link to one is fine) of at most ``limit`` bytes. A FIFO
    or device would block or never end; a huge file would fill the memory."""
    import os
    import stat

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"{what} {path} is {kind}; give a YAML file")
    if info.st_size > limit:
        raise ConfigError(
            f"{what} {path} has {info.st_size} bytes, more than the {limit} a {what} may "
            "have; give the YAML file (a study file is a few kB)"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since stat
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} has more than {limit} bytes; give the YAML file")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no ``!!python`` tags), refusing what
    ``read_text_input`` refuses, duplicate keys, undecodable bytes and documents too deep or
    too large once aliases expand."""
    path = Path(path)
    data = read_text_input(path, "config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte 0x{data[exc.start]:02x} "
            f"at line {line} cannot be decoded; save the file as UTF-8"
        ) from None
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML{_yaml_problem(exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data:, model:, ...), got {type(raw).__name__}"
        )
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, from PyYAML's error: ' at line 3, column 5: found ...'."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0]
    if len(problem) > 200:
        problem = problem[:197] + "..."
    return f"{where}: {problem}"


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or top-level ``key=value``, such as ``name=...``)
    strings, values parsed as YAML, to a raw config."""
    raw = _deep_copy(raw)
    for item in overrides:
        shown = show(item)
        if "=" not in item:
            raise ConfigError(f"--set {shown}: expected section.key=value, such as train.beta=0.5")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(
                f"--set {shown}: expected section.key=value or key=value, such "
                "as train.beta=0.5 or name=beta_sweep2"
            )
        try:
            value = _load_yaml(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--set {shown}: the value is not valid YAML{_yaml_problem(exc)}"
            ) from None
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {shown}: {show_key(part)} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, dump_yaml(obj))
