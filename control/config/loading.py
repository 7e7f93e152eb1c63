"""YAML and JSON files of services: loading (every problem of every document collected into
one :class:`~mesh_core.errors.ConfigError`) and writing (what is written reads back the
same)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from control.config.convert import (
    MERGE_KEY,
    Converter,
    normalise,
    service_to_dict,
    type_name,
)
from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_problems

_MAX_NESTING = 64
"""Deepest nesting of mappings and lists a document may have (deeper would exhaust the stack)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently, nesting
    deeper than ``_MAX_NESTING`` levels, and scalars Python cannot represent."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused here already: the scanner's look-ahead costs O(depth) per token past this.
        if self.flow_level >= _MAX_NESTING:
            raise yaml.scanner.ScannerError(
                None, None, f"nested more than {_MAX_NESTING} levels deep", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > _MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {_MAX_NESTING} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; the base constructor reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    # The base constructor: SafeConstructor's would merge ``<<`` keys first.
    return yaml.constructor.BaseConstructor.construct_mapping(loader, node, deep=deep)


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    value: str = loader.construct_scalar(node)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:  # escaped UTF-16 surrogate pairs, as JSON writes "\ud83d\ude00", become one character
            value = value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "invalid text: an unpaired surrogate escape (\\ud800-\\udfff)",
                node.start_mark,
            ) from None
    return value


def _checked_scalar(
    construct: Callable[[yaml.SafeLoader, yaml.ScalarNode], Any], what: str
) -> Callable[[_Loader, yaml.ScalarNode], Any]:
    """``construct`` with Python's errors for values it cannot hold (a date that does not
    exist, an integer of more than 4300 digits, a bad explicit ``!!int``) made YAML errors."""

    def checked(loader: _Loader, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, LookupError, AttributeError, OverflowError):
            text = str(node.value)
            shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {what} {shown}", node.start_mark
            ) from None

    return checked


# YAML 1.1 reads a number with an exponent but no dot (``1e-05``, JSON's way) as text; YAML
# 1.2 and JSON read it as a number, and so does this loader. Text of that form is written
# quoted (:class:`Dumper`), so what this module writes reads back the same.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
# A merge key ``<<`` is read as the plain key "<<" (not merged), so the converter can say it is
# not supported at its field path.
_Loader.add_constructor("tag:yaml.org,2002:merge", lambda loader, node: MERGE_KEY)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_safe = yaml.constructor.SafeConstructor
_Loader.add_constructor(
    "tag:yaml.org,2002:bool", _checked_scalar(_safe.construct_yaml_bool, "boolean")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:int", _checked_scalar(_safe.construct_yaml_int, "integer")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:float", _checked_scalar(_safe.construct_yaml_float, "number")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp", _checked_scalar(_safe.construct_yaml_timestamp, "date")
)


@dataclass
class _Document:
    source: str
    number: int
    label: str
    service: Any


def _usable_name(data: Mapping[Any, Any]) -> str | None:
    name = data.get("name")
    if isinstance(name, str) and name and len(name) <= 253 and name.isprintable():
        return name
    return None


def _yaml_documents(text: str) -> Iterator[Any]:
    return iter(yaml.load_all(text, Loader=_Loader))


def _load_text(text: str, source: str) -> tuple[list[_Document], list[str]]:
    documents: list[_Document] = []
    problems: list[str] = []
    number = 0
    try:
        for data in _yaml_documents(text):
            number += 1
            if data is None:
                continue
            if not isinstance(data, Mapping):
                problems.append(
                    f"{source}: document {number}: expected a mapping of service fields, "
                    f"got {type_name(data)}"
                )
                continue
            name = _usable_name(data)
            label = f"{source}: document {number}" + (f" ({name})" if name else "")
            svc = config_pb2.Service()
            conv = Converter()
            conv.fill(svc, data, "")
            normalise(svc)
            found = list(conv.problems)
            for path, message in validate_problems(svc):
                if not any(_under(path, bad) for bad in conv.bad_paths):
                    found.append((path, message))
            problems.extend(
                f"{label}: {path}: {msg}" if path else f"{label}: {msg}" for path, msg in found
            )
            documents.append(_Document(source, number, label, svc))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark is not None else "document"
        message = exc.problem or exc.context or "invalid YAML"
        problems.append(f"{source}: {where}: {message}")
    except yaml.YAMLError as exc:
        problems.append(f"{source}: {exc}")
    return documents, problems


def _under(path: str, bad: str) -> bool:
    return path == bad or path.startswith((bad + ".", bad + "["))


def _duplicate_problems(documents: Sequence[_Document]) -> list[str]:
    problems: list[str] = []
    first: dict[str, _Document] = {}
    for doc in documents:
        name = doc.service.name
        if not name:
            continue
        earlier = first.get(name)
        if earlier is None:
            first[name] = doc
            continue
        where = (
            f"document {earlier.number}"
            if earlier.source == doc.source
            else f"{earlier.source} document {earlier.number}"
        )
        problems.append(f"{doc.label}: name: duplicate service {name!r}, first defined in {where}")
    return problems


def load_documents(text: str, source: str) -> list[Any]:
    """Parses YAML or JSON text holding one service per document into ``mesh.v1.Service``
    messages, validated. Raises ConfigError listing every problem of every document."""
    documents, problems = _load_text(text, source)
    problems.extend(_duplicate_problems(documents))
    if problems:
        raise ConfigError(problems)
    return [doc.service for doc in documents]


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_path(path: Path) -> list[Any]:
    """Loads a file, or every ``*.yaml``, ``*.yml`` and ``*.json`` directly in a directory
    (sorted by name). Raises ConfigError listing every problem of every file, and when they
    hold no service at all (an empty or comment-only file, ``---`` alone, no config files)."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES
        )
        sources = [(p, str(p.relative_to(path))) for p in files]
    else:
        sources = [(path, str(path))]
    documents: list[_Document] = []
    problems: list[str] = []
    for file, source in sources:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{source}: no such file or directory")
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}")
            continue
        except OSError as exc:
            problems.append(f"{source}: cannot read: {exc.strerror or exc}")
            continue
        file_documents, file_problems = _load_text(text, source)
        documents.extend(file_documents)
        problems.extend(file_problems)
    problems.extend(_duplicate_problems(documents))
    if not problems and not documents:
        problems.append(f"{path}: no service documents")
    if problems:
        raise ConfigError(problems)
    return [doc.service for doc in documents]


class Dumper(yaml.SafeDumper):
    """SafeDumper that quotes text the loader would read as a number (``1e5``)."""


Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def dump_yaml(data: Any) -> str:
    """One YAML document for ``data``, keys in their order, read back the same by the loader."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def dump_documents(services: Sequence[Any]) -> str:
    """Multi-document YAML for ``services``, one document each, fields in proto order."""
    return yaml.dump_all(
        [service_to_dict(s) for s in services], Dumper=Dumper, sort_keys=False, allow_unicode=True
    )
