"""Read a policy file into plain data that remembers the line of every key.

This is the one place where YAML and file-system errors become
:class:`~aegis.errors.PolicyError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from aegis.errors import PolicyError

__all__ = ["LineDict", "LineList", "line_of", "load_yaml"]

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineDict(dict[str, Any]):
    """A mapping read from YAML: ``line`` is where it starts, ``key_lines`` where each key is."""

    __slots__ = ("key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


class LineList(list[Any]):
    """A sequence read from YAML: ``line`` is where it starts."""

    __slots__ = ("line",)

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line


def line_of(mapping: object, key: object = None) -> int | None:
    """The 1-based line of ``key`` in ``mapping`` (of the mapping itself without a key)."""
    if isinstance(mapping, LineList):
        return mapping.line
    if not isinstance(mapping, LineDict):
        return None
    if key is None:
        return mapping.line
    return mapping.key_lines.get(key, mapping.line)


class _LineLoader(_BaseLoader):  # type: ignore[misc]  # yaml's loaders are untyped
    """A safe loader whose mappings are :class:`LineDict` and refuse duplicate keys."""


def _construct_mapping(loader: Any, node: yaml.MappingNode) -> Any:
    data = LineDict(node.start_mark.line + 1)
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in data
        except TypeError:
            raise PolicyError(
                f"a mapping key must be a plain value such as a name or a number, not"
                f" {_kind(key)}; write the key as text",
                line=line,
            ) from None
        if duplicate:
            raise PolicyError(
                f"key {key!r} appears twice in the same mapping (first on line"
                f" {data.key_lines[key]}); remove one of them",
                line=line,
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"  # a !!set


def _construct_sequence(loader: Any, node: yaml.SequenceNode) -> Any:
    data = LineList(node.start_mark.line + 1)
    yield data
    data.extend(loader.construct_sequence(node, deep=True))


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


#: deeper nesting than this is refused before it is composed: libyaml's
#: composer recurses in C and crashes the interpreter some 30,000 levels down
MAX_DEPTH: Final = 100

_OPENING = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSING = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def _check_tokens(text: str) -> None:
    """Refuse anchors, aliases and deep nesting before the document is built.

    An alias bomb (a few lines whose aliases expand to billions of values)
    would hang whatever walks the data, and deep nesting would exhaust the
    stack, so both are refused on the flat token stream.
    """
    depth = 0
    for token in yaml.scan(text, Loader=_BaseLoader):
        if isinstance(token, _OPENING):
            depth += 1
            if depth > MAX_DEPTH:
                raise PolicyError(
                    f"the policy is nested too deeply (more than {MAX_DEPTH} levels);"
                    " a policy needs only a few levels",
                    line=token.start_mark.line + 1,
                )
        elif isinstance(token, _CLOSING):
            depth -= 1
        elif isinstance(token, yaml.AnchorToken | yaml.AliasToken):
            raise PolicyError(
                "anchors and aliases (&name / *name) are not supported in policy files;"
                " write the values out in full",
                line=token.start_mark.line + 1,
            )


def load_yaml(path: str | Path) -> Any:
    """Parse the YAML file at ``path``; mappings in the result are :class:`LineDict`.

    Raises:
        PolicyError: the file cannot be read or is not valid YAML.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PolicyError(
            f"policy file not found; check the path (relative paths start from {Path.cwd()})",
            path=name,
        ) from exc
    except IsADirectoryError as exc:
        raise PolicyError("is a directory, not a policy file", path=name) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"policy file is not UTF-8 text (byte {exc.start}); save it as UTF-8", path=name
        ) from exc
    except OSError as exc:
        raise PolicyError(f"cannot read policy file: {exc.strerror or exc}", path=name) from exc
    try:
        _check_tokens(text)
        return yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: no arbitrary objects
    except PolicyError as exc:
        raise PolicyError(exc.message, path=name, line=exc.line) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise PolicyError(
            f"invalid YAML: {problem}{context}; check the indentation and quoting",
            path=name,
            line=line,
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid YAML: {exc}", path=name) from exc
