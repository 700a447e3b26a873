"""``sync_core.registry.retry.retrying`` and ``sync_core.errors.is_transient``, table by table.

``retrying`` runs a scripted operation (each attempt returns the next value or raises the next
exception of its script) with an injected ``sleep`` that records the waits; the jitter of the
backoff is replaced by its upper bound, so every wait is exact. ``is_transient`` is checked over
every error class of the core, the HTTP statuses that matter, and the exceptions of the HTTP stack.
"""

from __future__ import annotations

import email.utils
import json
import types

import pytest
import requests
import urllib3

from sync_core.errors import (
    AuthError,
    CatalogForbidden,
    ConfigError,
    CredentialsRefused,
    DigestMismatch,
    ForeignHostError,
    InvalidContent,
    NameRejected,
    NotFound,
    ProtocolError,
    RegistryError,
    SecretUnavailable,
    SetupError,
    SkipImage,
    SourceStreamError,
    SyncError,
    TokenExpired,
    is_transient,
)
from sync_core.registry import retry as retry_module
from sync_core.registry.retry import RetryLater, RetryPolicy, retry_after_seconds, retrying


@pytest.fixture(autouse=True)
def jitter_at_its_bound(monkeypatch):
    """Full jitter draws from [0, bound]: take the bound, so that waits can be compared exactly."""
    monkeypatch.setattr(retry_module, "random", types.SimpleNamespace(uniform=lambda low, high: high))


def policy(attempts: int = 5, **kwargs) -> RetryPolicy:
    return RetryPolicy(
        attempts=attempts, **{"backoff_base": 0.5, "backoff_cap": 20.0, "retry_after_cap": 60.0, **kwargs}
    )


def unavailable() -> RegistryError:
    return RegistryError("registry.example answered 503", status=503)


# -- retrying ----------------------------------------------------------------------------------------

RETRYING = [
    # (script, policy, outcome: a value or the exception type raised, waits)
    pytest.param(["ok"], policy(), "ok", [], id="success-at-once"),
    pytest.param(
        [unavailable(), requests.ConnectionError("reset"), "ok"],
        policy(),
        "ok",
        [0.5, 1.0],
        id="transient-then-success",
    ),
    pytest.param(
        [unavailable()] * 5 + ["ok"],
        policy(6, backoff_base=1, backoff_cap=3),
        "ok",
        [1, 2, 3, 3, 3],
        id="backoff-doubles-up-to-its-cap",
    ),
    pytest.param(
        [NotFound("no such manifest", status=404), "ok"],
        policy(),
        NotFound,
        [],
        id="not-transient-raised-at-once",
    ),
    pytest.param(
        [ValueError("a bug"), "ok"], policy(), ValueError, [], id="unexpected-exception-raised-at-once"
    ),
    pytest.param(
        [unavailable(), AuthError("refused", status=401), "ok"],
        policy(),
        AuthError,
        [0.5],
        id="not-transient-after-a-transient-one",
    ),
    pytest.param(
        [RegistryError("503 after 5 attempts", status=503, exhausted=True), "ok"],
        policy(),
        RegistryError,
        [],
        id="exhausted-raised-at-once",
    ),
    pytest.param(
        [unavailable(), RegistryError("gave up", status=None, exhausted=True), "ok"],
        policy(),
        RegistryError,
        [0.5],
        id="exhausted-after-a-retry",
    ),
    pytest.param(
        [unavailable(), unavailable(), unavailable(), "ok"],
        policy(3),
        RegistryError,
        [0.5, 1.0],
        id="attempts-bound-the-tries",
    ),
    pytest.param([unavailable(), "ok"], policy(1), RegistryError, [], id="one-attempt-no-retry"),
    pytest.param([unavailable(), "ok"], policy(0), RegistryError, [], id="zero-attempts-still-one-try"),
    pytest.param(
        [RetryLater("429", delay=7.0), "ok"], policy(), "ok", [7.0], id="retry-later-delay-honoured"
    ),
    pytest.param(
        [RetryLater("429", delay=3600.0), "ok"], policy(), "ok", [60.0], id="retry-later-delay-capped"
    ),
    pytest.param([RetryLater("429", delay=0.0), "ok"], policy(), "ok", [0.0], id="retry-later-no-wait"),
    pytest.param(
        [RetryLater("429", delay=90.0), "ok"],
        policy(backoff_cap=1.0),
        "ok",
        [60.0],
        id="retry-later-delay-not-bound-by-backoff-cap",
    ),
    pytest.param(
        [unavailable(), RetryLater("busy"), "ok"],
        policy(),
        "ok",
        [0.5, 1.0],
        id="retry-later-without-delay-backs-off",
    ),
    pytest.param(
        [RetryLater("429", delay=1.0), RetryLater("429", delay=1.0)],
        policy(2),
        RetryLater,
        [1.0],
        id="retry-later-on-the-last-attempt-raised",
    ),
    pytest.param(
        [DigestMismatch("damaged on the way"), "ok"], policy(), "ok", [0.5], id="digest-mismatch-retried"
    ),
    pytest.param(
        [TokenExpired("401 mid-upload", status=401), "ok"], policy(), "ok", [0.5], id="token-expired-retried"
    ),
]


@pytest.mark.parametrize("script, how, outcome, waits", RETRYING)
def test_retrying(script, how, outcome, waits):
    attempts: list[int] = []
    retried: list[tuple[BaseException, int, float]] = []
    slept: list[float] = []

    def operation(attempt: int):
        attempts.append(attempt)
        step = script[len(attempts) - 1]
        if isinstance(step, BaseException):
            raise step
        return step

    def run():
        return retrying(
            operation,
            how,
            what="scripted",
            sleep=slept.append,
            on_retry=lambda error, attempt, delay: retried.append((error, attempt, delay)),
        )

    if isinstance(outcome, type):
        with pytest.raises(outcome) as info:
            run()
        assert info.value is script[len(attempts) - 1]  # the last failure, as it was raised
    else:
        assert run() == outcome
    assert slept == waits
    assert attempts == list(range(len(waits) + 1))  # attempt numbers 0, 1, ...: one more than the waits
    assert [(error, attempt, delay) for error, attempt, delay in retried] == [
        (script[i], i, waits[i]) for i in range(len(waits))
    ]  # on_retry sees each failure that is retried, with its attempt and wait


def test_retrying_uses_the_predicate_it_is_given():
    slept: list[float] = []
    script = iter([KeyError("x"), "ok"])

    def operation(attempt: int):
        step = next(script)
        if isinstance(step, BaseException):
            raise step
        return step

    assert (
        retrying(
            operation, policy(), what="x", transient=lambda e: isinstance(e, KeyError), sleep=slept.append
        )
        == "ok"
    )
    assert slept == [0.5]


def test_retrying_never_catches_what_is_not_an_exception():
    calls: list[int] = []

    def operation(attempt: int):
        calls.append(attempt)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrying(operation, policy(), what="x", transient=lambda e: True, sleep=lambda s: None)
    assert calls == [0]


def test_backoff_is_full_jitter_within_its_bound(monkeypatch):
    drawn: list[tuple[float, float]] = []
    monkeypatch.setattr(
        retry_module, "random", types.SimpleNamespace(uniform=lambda a, b: drawn.append((a, b)) or a)
    )
    how = policy(backoff_base=0.5, backoff_cap=3.0)
    assert [how.delay(n) for n in range(5)] == [0.0] * 5
    assert drawn == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 3.0), (0, 3.0)]


# -- Retry-After -------------------------------------------------------------------------------------

NOW = 1_750_000_000.0

RETRY_AFTER = [
    # (header value, seconds)
    pytest.param(None, None, id="absent"),
    pytest.param("", None, id="empty"),
    pytest.param("0", 0.0, id="zero"),
    pytest.param("120", 120.0, id="seconds"),
    pytest.param(" 7 ", 7.0, id="seconds-with-spaces"),
    pytest.param(email.utils.formatdate(NOW + 30, usegmt=True), 30.0, id="http-date"),
    pytest.param(email.utils.formatdate(NOW - 30, usegmt=True), 0.0, id="http-date-in-the-past"),
    pytest.param("-5", None, id="negative"),
    pytest.param("1.5", None, id="fraction"),
    pytest.param("soon", None, id="garbage"),
]


@pytest.mark.parametrize("value, seconds", RETRY_AFTER)
def test_retry_after_seconds(value, seconds):
    assert retry_after_seconds(value, now=lambda: NOW) == seconds


# -- is_transient ---------------------------------------------------------------------------------------

STATUSES = (None, 401, 403, 404, 408, 429, 500, 503)
# Errors that carry the registry's HTTP status: transient or not, per status.
BY_STATUS = {
    #                   None 401  403  404  408  429  500  503
    RegistryError: "yes  no   no   no   yes  yes  yes  yes",
    AuthError: "no   no   no   no   yes  yes  yes  yes",
    CredentialsRefused: "no   no   no   no   yes  yes  yes  yes",
    CatalogForbidden: "no   no   no   no   yes  yes  yes  yes",
    TokenExpired: "yes  yes  yes  yes  yes  yes  yes  yes",
    SourceStreamError: "yes  yes  yes  yes  yes  yes  yes  yes",
    NotFound: "no   no   no   no   no   no   no   no",
    ProtocolError: "no   no   no   no   no   no   no   no",
    ForeignHostError: "no   no   no   no   no   no   no   no",
}

WITH_STATUS = [
    pytest.param(cls, status, verdict == "yes", id=f"{cls.__name__}-{status}")
    for cls, row in BY_STATUS.items()
    for status, verdict in zip(STATUSES, row.split(), strict=True)
]


@pytest.mark.parametrize("cls, status, transient", WITH_STATUS)
def test_is_transient_by_status(cls, status, transient):
    error = cls(f"registry.example answered {status}", status=status)
    assert is_transient(error) is transient
    assert (
        is_transient(cls("the same, exhausted", status=status, exhausted=True)) is transient
    )  # for the queue


OTHERS = [
    # (exception, transient)
    pytest.param(SyncError("x"), False, id="SyncError"),
    pytest.param(ConfigError(["SOURCE_REGISTRY: missing"]), False, id="ConfigError"),
    pytest.param(SetupError("x"), False, id="SetupError"),
    pytest.param(SecretUnavailable("x"), False, id="SecretUnavailable"),
    pytest.param(InvalidContent("x"), False, id="InvalidContent"),
    pytest.param(DigestMismatch("x"), True, id="DigestMismatch"),
    pytest.param(SkipImage("x"), False, id="SkipImage"),
    pytest.param(NameRejected("x"), False, id="NameRejected"),
    # the HTTP stack: the connection broke, timed out, or a body ended early
    pytest.param(requests.ConnectionError("reset"), True, id="requests-ConnectionError"),
    pytest.param(requests.exceptions.ConnectTimeout("x"), True, id="requests-ConnectTimeout"),
    pytest.param(requests.exceptions.ReadTimeout("x"), True, id="requests-ReadTimeout"),
    pytest.param(requests.exceptions.ChunkedEncodingError("x"), True, id="requests-ChunkedEncodingError"),
    pytest.param(urllib3.exceptions.ProtocolError("Connection aborted"), True, id="urllib3-ProtocolError"),
    pytest.param(
        urllib3.exceptions.ReadTimeoutError(None, "/v2/", "read timed out"),
        True,
        id="urllib3-ReadTimeoutError",
    ),
    pytest.param(urllib3.exceptions.IncompleteRead(10, 90), True, id="urllib3-IncompleteRead"),
    pytest.param(ConnectionResetError(104, "reset"), True, id="ConnectionResetError"),
    pytest.param(BrokenPipeError(32, "broken pipe"), True, id="BrokenPipeError"),
    pytest.param(TimeoutError("x"), True, id="TimeoutError"),
    # everything else is not worth the same request again
    pytest.param(requests.exceptions.InvalidURL("x"), False, id="requests-InvalidURL"),
    pytest.param(requests.HTTPError("x"), False, id="requests-HTTPError"),
    pytest.param(json.JSONDecodeError("x", "{", 0), False, id="JSONDecodeError"),
    pytest.param(OSError(28, "No space left on device"), False, id="OSError-disk-full"),
    pytest.param(ValueError("x"), False, id="ValueError"),
    pytest.param(KeyError("x"), False, id="KeyError"),
    pytest.param(KeyboardInterrupt(), False, id="KeyboardInterrupt"),
]


def test_a_digest_mismatch_on_every_attempt_is_the_content_itself():
    failures = [DigestMismatch(f"attempt {i}") for i in range(3)]

    def operation(attempt: int):
        raise failures[attempt]

    with pytest.raises(DigestMismatch) as info:
        retrying(operation, policy(3), what="damaged at the source", sleep=lambda _: None)
    assert info.value is failures[-1] and info.value.exhausted and not is_transient(info.value)
    assert not any(f.exhausted for f in failures[:-1])  # those were retried as damage on the way


@pytest.mark.parametrize("error, transient", OTHERS)
def test_is_transient(error, transient):
    assert is_transient(error) is transient
