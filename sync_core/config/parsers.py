"""Parsers of setting values: (value, setting name, problems) -> the parsed value, or None after
adding a problem that names the setting. Every problem is collected; nothing raises.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any

from sync_core.config.model import (
    MappingRule,
    ReferrerPolicy,
    SemverRange,
)
from sync_core.config.registries import canonical_registry
from sync_core.registry.names import is_repository, normalize_registry_url

# A platform as a target's `platforms` list names it: os/architecture[/variant].
_PLATFORM_RE = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, setting: str, message: str) -> None:
        self.items.append(f"{setting}: {message}")


Parser = Callable[[Any, str, Problems], Any]


def text(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a string")
        return None
    return value


def regex(value: Any, name: str, problems: Problems) -> re.Pattern[str] | None:
    if not isinstance(value, str):
        problems.add(name, "must be a regular expression (a string)")
        return None
    try:
        return re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}: OverflowError
        problems.add(name, f"invalid regular expression {value[:200]!r}: {exc}")
        return None


def number(*, integer: bool = False, minimum: float = 0.0, maximum: float | None = None) -> Parser:
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
        if number < minimum or number != number or number in (float("inf"), float("-inf")):
            problems.add(name, f"must be at least {minimum:g}, got {value!r}")
            return None
        if maximum is not None and number > maximum:
            problems.add(name, f"at most {maximum:g}, got {number}")
            return None
        return number

    return parse


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


def namespace(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a string")
        return None
    path = value.strip("/")
    if path and not is_repository(path):
        problems.add(name, f"{path!r} is not a valid repository path")
        return None
    return path


def string_list(value: Any, name: str, problems: Problems) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return tuple(v.strip() for v in re.split(r"[,\s]+", value) if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    problems.add(name, "must be a list of strings (or a comma-separated string)")
    return None


def repositories(value: Any, name: str, problems: Problems) -> tuple[str, ...] | None:
    names = string_list(value, name, problems)
    for repo in names or ():
        if not is_repository(repo):
            problems.add(name, f"{repo!r} is not a valid repository name")
    return names


def types(value: Any, name: str, problems: Problems) -> frozenset[str] | None:
    names = string_list(value, name, problems)
    return None if names is None else frozenset(names)


def choice(kind: type[enum.Enum]) -> Parser:
    allowed = [m.value for m in kind]

    def parse(value: Any, name: str, problems: Problems) -> enum.Enum | None:
        text = value.lower() if isinstance(value, str) else value
        try:
            return kind(text)
        except ValueError:
            problems.add(name, f"must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
            return None

    return parse


def boolean(value: Any, name: str, problems: Problems) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    problems.add(name, f"must be true or false, got {value!r}")
    return None


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


def https_url(value: Any, name: str, problems: Problems) -> str | None:
    if isinstance(value, str) and value.startswith("https://"):
        return value
    problems.add(name, "must be an https:// URL such as https://myvault.vault.azure.net")
    return None


def matching(pattern: str, problem: str) -> Parser:
    """A string matching ``pattern`` in full; ``problem`` (with ``{value}``) says what is wrong."""
    compiled = re.compile(pattern)

    def parse(value: Any, name: str, problems: Problems) -> str | None:
        if isinstance(value, str) and compiled.fullmatch(value):
            return value
        problems.add(name, problem.format(value=repr(value)))
        return None

    return parse


queue_name = matching(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", "{value} is not a valid Storage queue name")


schedule = matching(r"\S+(\s+\S+){5}", "must be a six-field CRON expression (seconds first), got {value}")


parse_target_name = matching(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "{value} must be letters, digits, '.', '_' or '-'"
)


def requests_per_second(value: Any, name: str, problems: Problems) -> float | None:
    """A request rate: a number of requests per second above 0 (``0.5`` is one every 2 s)."""
    rate = number()(value, name, problems)
    if rate is not None and rate <= 0:
        problems.add(name, f"must be more than 0 requests per second, got {value!r}")
        return None
    return None if rate is None else float(rate)
