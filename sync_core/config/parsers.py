"""Parsers of setting values: (value, setting name, problems) -> the parsed value, or None after
adding a problem that names the setting. Every problem is collected; nothing raises.

Each parser also carries the JSON Schema fragment of the values it accepts in a configuration
file (``parser.schema``), from which :mod:`sync_core.config.schema` builds the file's schema. A
fragment describes the file's plain form (numbers as numbers, booleans as booleans; a list or a
comma-separated string where the parser takes both) and uses only patterns that mean the same in
Python and ECMA-262 (what editors run). What a schema cannot say (a valid regular expression or
version range, the groups a template names) only the parser checks.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from sync_core.config.model import (
    MappingRule,
    ReferrerPolicy,
    SemverRange,
)
from sync_core.config.registries import canonical_registry
from sync_core.registry.names import REPOSITORY_RE, is_repository, normalize_registry_url

# A platform as a target's `platforms` list names it: os/architecture[/variant].
_PLATFORM_RE = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, setting: str, message: str) -> None:
        self.items.append(f"{setting}: {message}")


T = TypeVar("T")


class Parser(Generic[T]):
    """``parser(value, setting name, problems)``: the parsed value, or None after adding a problem.

    ``schema`` is the JSON Schema fragment of the values the parser accepts in a file.
    """

    def __init__(self, parse: Callable[[Any, str, Problems], T | None], schema: Mapping[str, Any]) -> None:
        self._parse = parse
        self.schema = schema

    def __call__(self, value: Any, name: str, problems: Problems) -> T | None:
        return self._parse(value, name, problems)


def parser(schema: Mapping[str, Any]) -> Callable[[Callable[[Any, str, Problems], T | None]], Parser[T]]:
    """Declares a parse function with the schema fragment of what it accepts."""

    def declare(parse: Callable[[Any, str, Problems], T | None]) -> Parser[T]:
        return Parser(parse, schema)

    return declare


def _full(pattern: str) -> str:
    """A schema ``pattern`` (searched, as JSON Schema does) that matches like ``re.fullmatch``."""
    return f"^(?:{pattern})$"


def _listed(item_pattern: str | None = None, *, non_empty: bool = False) -> dict[str, Any]:
    """A list of strings, or one string of them separated by commas or spaces (as string_list reads)."""
    schema: dict[str, Any] = {"type": ["string", "array"], "items": {"type": "string"}}
    if item_pattern is not None:
        schema["items"]["pattern"] = _full(item_pattern)
        item = f"(?:{item_pattern})"
        listed = f"{item}(?:[,\\s]+{item})*"
        schema["pattern"] = f"^[,\\s]*{listed if non_empty else f'(?:{listed})?'}[,\\s]*$"
    if non_empty:
        schema["minItems"] = 1
    return schema


_STRING = {"type": "string"}


@parser(_STRING)
def text(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a string")
        return None
    return value


@parser(_STRING)  # no format "regex": editors would judge Python's syntax (?P<name>) by ECMA-262's
def regex(value: Any, name: str, problems: Problems) -> re.Pattern[str] | None:
    if not isinstance(value, str):
        problems.add(name, "must be a regular expression (a string)")
        return None
    try:
        return re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}: OverflowError
        problems.add(name, f"invalid regular expression {value[:200]!r}: {exc}")
        return None


def number(
    *, integer: bool = False, minimum: float = 0.0, maximum: float | None = None, exclusive: bool = False
) -> Parser[float | int]:
    """A number (``integer``: a whole one) at least ``minimum`` (``exclusive``: greater than it)."""
    lowest = f"greater than {minimum:g}" if exclusive else f"at least {minimum:g}"

    def parse(value: Any, name: str, problems: Problems) -> float | int | None:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = int(value) if integer else float(value)
            if integer and isinstance(value, float) and not value.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            problems.add(name, f"must be {'a whole number' if integer else 'a number'}, got {value!r}")
            return None
        too_low = number <= minimum if exclusive else number < minimum
        if too_low or number != number or number in (float("inf"), float("-inf")):
            problems.add(name, f"must be {lowest}, got {value!r}")
            return None
        if maximum is not None and number > maximum:
            problems.add(name, f"at most {maximum:g}, got {number}")
            return None
        return number

    schema: dict[str, Any] = {
        "type": "integer" if integer else "number",
        "exclusiveMinimum" if exclusive else "minimum": _plain(minimum),
    }
    if maximum is not None:
        schema["maximum"] = _plain(maximum)
    return Parser(parse, schema)


def _plain(value: float) -> float | int:
    """``6.0`` as ``6`` in the schema."""
    return int(value) if float(value).is_integer() else value


@parser(
    {
        "type": "string",
        "pattern": _full(r"(?:https?://)?(?:[^\s/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/?"),
    }
)
def registry(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a registry host or URL")
        return None
    try:
        url = normalize_registry_url(value)
    except ValueError as exc:
        problems.add(name, str(exc))
        return None
    return canonical_registry(url)


@parser({"type": "string", "pattern": f"^/*(?:{REPOSITORY_RE.pattern})?/*$"})
def namespace(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a string")
        return None
    path = value.strip("/")
    if path and not is_repository(path):
        problems.add(name, f"{path!r} is not a valid repository path")
        return None
    return path


@parser(_listed())
def string_list(value: Any, name: str, problems: Problems) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return tuple(v.strip() for v in re.split(r"[,\s]+", value) if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    problems.add(name, "must be a list of strings (or a comma-separated string)")
    return None


@parser(_listed(REPOSITORY_RE.pattern))
def repositories(value: Any, name: str, problems: Problems) -> tuple[str, ...] | None:
    names = string_list(value, name, problems)
    for repo in names or ():
        if not is_repository(repo):
            problems.add(name, f"{repo!r} is not a valid repository name")
    return names


@parser(_listed())
def types(value: Any, name: str, problems: Problems) -> frozenset[str] | None:
    names = string_list(value, name, problems)
    return None if names is None else frozenset(names)


def choice(kind: type[enum.Enum]) -> Parser[enum.Enum]:
    allowed = [m.value for m in kind]

    def parse(value: Any, name: str, problems: Problems) -> enum.Enum | None:
        text = value.lower() if isinstance(value, str) else value
        try:
            return kind(text)
        except ValueError:
            problems.add(name, f"must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
            return None

    return Parser(parse, {"type": "string", "enum": allowed})


@parser({"type": "boolean"})
def boolean(value: Any, name: str, problems: Problems) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    problems.add(name, f"must be true or false, got {value!r}")
    return None


@parser(_STRING)
def semver(value: Any, name: str, problems: Problems) -> SemverRange | None:
    import semantic_version

    if not isinstance(value, str):
        problems.add(name, "must be a version range such as '>=1.2.0 <2'")
        return None
    text = re.sub(r"(^|[\s<>=~^|,-])v(?=\d)", r"\1", value)  # v1.2.0 -> 1.2.0 inside the range
    try:
        return SemverRange(value, semantic_version.NpmSpec(text))
    except ValueError as exc:
        problems.add(name, f"invalid version range {value!r}: {exc}")
        return None


@parser(_listed(_PLATFORM_RE.pattern, non_empty=True))
def platforms(value: Any, name: str, problems: Problems) -> frozenset[str] | None:
    names = string_list(value, name, problems)
    if names is None:
        return None
    bad = [p for p in names if not _PLATFORM_RE.fullmatch(p)]
    if bad or not names:
        problems.add(
            name, f"must list platforms as os/architecture[/variant] (e.g. linux/amd64), got {bad or names!r}"
        )
        return None
    return frozenset(names)


@parser(
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "match": {"type": "string", "description": "regular expression, full match"},
                "replace": {
                    "type": ["string", "null"],
                    "pattern": "\\S",
                    "description": "the whole target repository (`\\1` refers to groups); null: not mirrored",
                },
            },
            "required": ["match", "replace"],
            "additionalProperties": False,
        },
    }
)
def mappings(value: Any, name: str, problems: Problems) -> tuple[MappingRule, ...] | None:
    if not isinstance(value, list):
        problems.add(name, "must be a list of {match: REGEX, replace: TEMPLATE or null}")
        return None
    rules: list[MappingRule] = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if (
            not isinstance(item, dict)
            or set(item) - {"match", "replace"}
            or "match" not in item
            or "replace" not in item
        ):
            problems.add(
                where, "must be {match: REGEX, replace: TEMPLATE or null} (replace null: not mirrored)"
            )
            continue
        pattern = regex(item["match"], f"{where}.match", problems)
        replace = item["replace"]
        if replace is not None and (not isinstance(replace, str) or not replace.strip()):
            problems.add(f"{where}.replace", "must be a repository name template or null")
            continue
        if pattern is None:
            continue
        if replace is not None:
            problem = _template_problem(pattern, replace)
            if problem:
                problems.add(f"{where}.replace", problem)
                continue
        rules.append(MappingRule(pattern, replace))
    return tuple(rules)


def _template_problem(pattern: re.Pattern[str], template: str) -> str | None:
    """What is wrong with ``template`` for ``pattern`` (a group it names that does not exist)."""
    for ref in re.findall(r"\\(\d+)|\\g<([^>]*)>", template):
        number, named = ref
        key = named or number
        if key.isdigit():
            if int(key) > pattern.groups:
                return f"{template!r} refers to group {key}; the pattern has {pattern.groups}"
        elif key not in pattern.groupindex:
            return f"{template!r} refers to group {key!r}, which the pattern does not name"
    return None


@parser({"anyOf": [{"enum": ["all", "none"]}, _listed(non_empty=True)]})
def referrers(value: Any, name: str, problems: Problems) -> ReferrerPolicy | None:
    if isinstance(value, str) and value.strip().lower() in ("all", "none"):
        return ReferrerPolicy(enabled=value.strip().lower() == "all")
    types = string_list(value, name, problems)
    if types is None:
        return None
    if not types:
        problems.add(name, "must be 'all', 'none' or a list of artifact types")
        return None
    return ReferrerPolicy(types=frozenset(types))


@parser({"type": "string", "pattern": "^https://"})
def https_url(value: Any, name: str, problems: Problems) -> str | None:
    if isinstance(value, str) and value.startswith("https://"):
        return value
    problems.add(name, "must be an https:// URL such as https://myvault.vault.azure.net")
    return None


def matching(pattern: str, problem: str) -> Parser[str]:
    """A string matching ``pattern`` in full; ``problem`` (with ``{value}``) says what is wrong."""
    compiled = re.compile(pattern)

    def parse(value: Any, name: str, problems: Problems) -> str | None:
        if isinstance(value, str) and compiled.fullmatch(value):
            return value
        problems.add(name, problem.format(value=repr(value)))
        return None

    return Parser(parse, {"type": "string", "pattern": _full(pattern)})


queue_name = matching(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", "{value} is not a valid Storage queue name")


schedule = matching(r"\S+(\s+\S+){5}", "must be a six-field CRON expression (seconds first), got {value}")


parse_target_name = matching(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "{value} must be letters, digits, '.', '_' or '-'"
)


#: A request rate: a number of requests per second above 0 (``0.5`` is one every 2 s).
requests_per_second = number(exclusive=True)
