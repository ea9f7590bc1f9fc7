"""The one error hierarchy of Saga Orchestrator.

This module is a leaf: it imports nothing from the project, so every layer may use it.

    SagaError
    ├── DefinitionError            a definition is malformed or breaks a rule
    │   └── DefinitionConflict     same name+version registered with another body
    ├── ExpressionError            a CEL expression failed to compile or evaluate
    ├── NotFound                   definition, instance or handler does not exist
    ├── InvalidInput               a start context or operator request is invalid
    ├── InvalidTransition          an operation is not allowed in the current state
    │   └── AttemptNotInFlight     a callback names an attempt that is over (expired token)
    ├── InvalidCompletionToken     a completion callback's token is forged or malformed
    ├── Unauthenticated            no valid credentials (401)
    ├── Forbidden                  authenticated, but the role does not allow it (403)
    ├── RateLimited                over a tenant's limit (429)
    ├── StoreError                 the database failed or refused a write
    │   ├── SequenceConflict       another writer moved the instance first
    │   ├── LeaseLost              another node took the instance over (fenced write)
    │   └── StoreUnavailable       the database cannot be reached
    ├── StepError                  raised by step handlers to classify a failure
    │   ├── RetryableStepError
    │   └── NonRetryableStepError
    └── ConfigurationError         settings are invalid
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal


class SagaError(Exception):
    """Root of every error raised by Saga Orchestrator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """One broken rule: where (a node path such as ``steps[2].branches[0][1]``) and why."""

    location: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message} [{self.rule}]"


class DefinitionError(SagaError):
    """A definition breaks one or more rules of the saga language."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(str(v) for v in self.violations))


class DefinitionConflict(SagaError):
    """A version is immutable: the same name and version were registered with another body."""


class ExpressionError(SagaError):
    """A CEL expression could not be compiled or evaluated."""


class NotFound(SagaError):
    """The requested definition, instance or handler does not exist (for this tenant)."""


class InvalidInput(SagaError):
    """A request carries data that cannot be accepted (e.g. context fails the input schema).

    ``violations``, when given, name each field refused, as a request that fails validation
    does (the API lists them in its problem document)."""

    def __init__(self, message: str, *, violations: Sequence[Violation] = ()) -> None:
        super().__init__(message)
        self.violations = tuple(violations)


class InvalidTransition(SagaError):
    """The operation is not allowed in the instance's current state (e.g. cancel after pivot)."""


class AttemptNotInFlight(InvalidTransition):
    """A callback or heartbeat names an attempt that already ended (timed out, completed, or
    superseded by a retry): its completion token no longer works."""


class InvalidCompletionToken(SagaError):
    """A completion token is malformed, forged, or names another instance or step."""


class Unauthenticated(SagaError):
    """No valid bearer token: the API answers 401 with ``WWW-Authenticate: Bearer ...``.

    ``error`` is the RFC 6750 code (``invalid_request`` when the header is missing or not a
    bearer token, ``invalid_token`` otherwise); ``description`` is a fixed phrase, safe to send
    back: it never contains the token or anything taken from it.
    """

    def __init__(
        self,
        description: str,
        *,
        error: Literal["invalid_request", "invalid_token"] = "invalid_token",
    ) -> None:
        super().__init__(description)
        self.description = description
        self.error = error


class Forbidden(SagaError):
    """The caller is authenticated but its roles do not allow the operation."""


class RateLimited(SagaError):
    """The tenant (or principal) is over its rate limit; ``headers`` say when to come back."""

    def __init__(self, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.headers = dict(headers)


class StoreError(SagaError):
    """The store failed to read or write."""


class SequenceConflict(StoreError):
    """An append expected a sequence number another writer has already used."""


class LeaseLost(StoreError):
    """This node no longer owns the instance: its lease was taken over (the write is fenced
    by the lease's epoch), so it must stop driving the instance at once."""


class StoreUnavailable(StoreError):
    """The database cannot be reached."""


class StepError(SagaError):
    """Raised by a step handler to classify its failure.

    ``error_type`` names the failure for ``non_retryable_errors`` matching; it defaults to
    the exception class name.
    """

    retryable: bool = True

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


class RetryableStepError(StepError):
    """A transient failure: the step's retry policy applies."""

    retryable = True


class NonRetryableStepError(StepError):
    """A definite failure (a business rejection): no further attempts."""

    retryable = False


class ConfigurationError(SagaError):
    """Settings are missing or invalid."""
