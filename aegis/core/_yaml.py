"""Read a policy file into plain data that remembers the line of every key.

This is the one place where YAML and file-system errors become
:class:`~aegis.errors.PolicyError`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Final

import yaml

from aegis.errors import PolicyError

__all__ = ["LineDict", "LineList", "line_of", "load_yaml", "read_policy_text", "yaml11_warnings"]

#: the largest policy file read; a policy is a few kilobytes, this is ample
MAX_BYTES: Final = 16 * 1024 * 1024

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


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _construct_timestamp(loader: Any, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except (ValueError, OverflowError) as exc:  # 2024-02-30: a date that does not exist
        raise PolicyError(
            f"{node.value} looks like a date but is not one ({exc}); fix it, or quote it:"
            f" '{node.value}'",
            line=_line(node),
        ) from exc


_CANONICAL_BOOLS: Final = frozenset({"true", "false"})


def _construct_bool(loader: Any, node: yaml.ScalarNode) -> Any:
    value = loader.construct_yaml_bool(node)
    if not node.style and node.value.lower() not in _CANONICAL_BOOLS:  # plain: None or ""
        # YAML 1.1: NO (Norway), off, yes, on are booleans unless quoted.
        raise PolicyError(
            f"{node.value} is read by YAML 1.1 as the boolean {str(value).lower()}; write"
            f" '{node.value}' in quotes for the text, or {str(value).lower()} for the boolean",
            line=_line(node),
        )
    return value


_OCTAL: Final = re.compile(r"[-+]?0[0-7_]+")


def _construct_int(loader: Any, node: yaml.ScalarNode) -> Any:
    if _OCTAL.fullmatch(node.value) and node.value.strip("+-0_"):
        # YAML 1.1 reads 012 as the octal number 10: surely not what was meant.
        raise PolicyError(
            f"{node.value} is read by YAML 1.1 as an octal number; write it without the"
            f" leading zero, or quote it: '{node.value}'",
            line=_line(node),
        )
    try:
        return loader.construct_yaml_int(node)
    except ValueError as exc:  # more digits than int() converts (4,300)
        raise PolicyError(
            f"the number starting {node.value[:20]}... has too many digits"
            f" ({len(node.value)}); a policy needs far smaller numbers",
            line=_line(node),
        ) from exc


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
_LineLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


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
    try:
        for token in yaml.scan(text, Loader=_BaseLoader):
            if isinstance(token, _OPENING):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(token.start_mark.line + 1)
            elif isinstance(token, _CLOSING):
                depth -= 1
            elif isinstance(token, yaml.AnchorToken | yaml.AliasToken):
                raise PolicyError(
                    "anchors and aliases (&name / *name) are not supported in policy files;"
                    " write the values out in full",
                    line=token.start_mark.line + 1,
                )
    except yaml.MarkedYAMLError as exc:
        # Some YAML libraries (libyaml 0.2.6, PyYAML 6.0.4) have a nesting limit
        # of their own that their scanner hits while reading ahead, before this
        # loop sees the token past ours; the refusal is still ours to word.
        mark = exc.problem_mark
        line = _flow_depth_line(text, mark.index if mark is not None else len(text))
        if line is not None:
            raise _too_deep(line) from exc
        raise


def _too_deep(line: int) -> PolicyError:
    return PolicyError(
        f"the policy is nested too deeply (more than {MAX_DEPTH} levels);"
        " a policy needs only a few levels",
        line=line,
    )


def _flow_depth_line(text: str, end: int) -> int | None:
    """The line where ``[``/``{`` nesting first passes :data:`MAX_DEPTH` before ``end``, if it does.

    A lexical count (quoted scalars and comments skipped), used only to word
    a refusal the YAML scanner already made.
    """
    depth = 0
    line = 1
    quote = ""
    previous = "\n"
    for char in text[:end]:
        if char == "\n":
            line += 1
            if quote == "#":  # a comment ends with its line; a quoted scalar may go on
                quote = ""
        elif quote:
            if char == quote and quote != "#":
                quote = ""
        elif char in "\"'" or (char == "#" and previous in " \t\n"):
            quote = char
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth -= 1
        previous = char
    return None


def read_policy_text(path: str | Path) -> str:
    """The text of the policy file at ``path``: a regular UTF-8 file of at most :data:`MAX_BYTES`.

    A FIFO, a device such as ``/dev/zero`` or an endless file would block
    or fill memory; each is one clear error instead.

    Raises:
        PolicyError: the file is missing, not a regular file, too large,
            unreadable or not UTF-8.
    """
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        raise PolicyError(
            f"policy file not found; check the path (relative paths start from {Path.cwd()})",
            path=name,
        ) from exc
    except IsADirectoryError as exc:
        raise PolicyError("is a directory, not a policy file", path=name) from exc
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read policy file: {_strerror(exc)}", path=name) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PolicyError("is a directory, not a policy file", path=name)
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(
                "is not a regular file (a pipe, a device or a socket); give the path of"
                " a policy file",
                path=name,
            )
        if info.st_size > MAX_BYTES:
            raise PolicyError(
                f"is {info.st_size:,} bytes; a policy file may be at most {MAX_BYTES:,}",
                path=name,
            )
        chunks = []
        left = MAX_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise PolicyError(f"cannot read policy file: {_strerror(exc)}", path=name) from exc
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:  # it grew while we read it
        raise PolicyError(f"is larger than {MAX_BYTES:,} bytes", path=name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"policy file is not UTF-8 text (byte {exc.start}); save it as UTF-8", path=name
        ) from exc


def _strerror(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


_SEXAGESIMAL: Final = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_YAML11_ONLY_BOOLS: Final = frozenset({"y", "Y", "n", "N"})


def yaml11_warnings(text: str) -> list[tuple[int, str]]:
    """Unquoted scalars that YAML 1.1 tools read otherwise than a reader expects.

    ``y`` and ``n`` are text for PyYAML but booleans for other YAML 1.1 tools;
    ``1:30`` is the base-60 number 90. Returns ``(line, message)`` pairs,
    each saying how to quote the value. Text that does not scan gives none
    (loading reports it).
    """
    warnings = []
    try:
        tokens = list(yaml.scan(text, Loader=_BaseLoader))
    except yaml.YAMLError:
        return []
    for token in tokens:
        if not isinstance(token, yaml.ScalarToken) or not token.plain:
            continue
        line, value = token.start_mark.line + 1, token.value
        if value in _YAML11_ONLY_BOOLS:
            warnings.append(
                (
                    line,
                    f"{value} is a boolean in YAML 1.1 (other tools read it as"
                    f" {'true' if value in ('y', 'Y') else 'false'}); quote it, '{value}',"
                    " if you mean the text",
                )
            )
        elif _SEXAGESIMAL.fullmatch(value):
            warnings.append(
                (
                    line,
                    f"{value} is read by YAML 1.1 as a base-60 number; quote it, '{value}',"
                    " if you mean the text",
                )
            )
    return warnings


def load_yaml(path: str | Path) -> Any:
    """Parse the YAML file at ``path``; mappings in the result are :class:`LineDict`.

    Raises:
        PolicyError: the file cannot be read or is not valid YAML.
    """
    name = str(path)
    text = read_policy_text(path)
    try:
        _check_tokens(text)
        return yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: no arbitrary objects
    except PolicyError as exc:
        raise PolicyError(exc.message, path=name, line=exc.line) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "invalid YAML"
        context = ""
        if exc.context:
            # An unclosed '{' or quote is noticed lines later: name where it opened.
            opened = exc.context_mark.line + 1 if exc.context_mark is not None else line
            where = f" that starts at line {opened}" if opened != line else ""
            context = f" ({exc.context}{where})"
        raise PolicyError(
            f"invalid YAML: {problem}{context}; check the indentation and quoting",
            path=name,
            line=line,
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid YAML: {exc}", path=name) from exc
    except (ValueError, OverflowError, RecursionError) as exc:  # a constructor we did not wrap
        raise PolicyError(f"invalid value in YAML: {exc}", path=name) from exc
