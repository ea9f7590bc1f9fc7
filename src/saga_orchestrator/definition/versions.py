"""Semantic versions of saga definitions and the constraints that select them.

A definition's ``version`` is a strict semantic version (https://semver.org): ``1.2.3``,
``1.2.3-rc.1``, ``1.2.3+build.5``; no ``v`` prefix, no missing parts. Build metadata never
changes precedence (``1.0.0+a`` and ``1.0.0+b`` compare equal).

A :class:`VersionConstraint` (a sub-saga's ``version``, a start request's version) follows
npm's range grammar, restricted to these forms:

=========================== =================================================================
form                        allows
=========================== =================================================================
``None``, ``""``, ``*``,    any version
``latest``
``1.2.3``, ``=1.2.3``       exactly 1.2.3
``1``, ``1.x``, ``1.*``     ``>=1.0.0 <2.0.0``
``1.2``, ``1.2.x``          ``>=1.2.0 <1.3.0``
``>=1.2.0``, ``>1.2.0``,    the comparison; a partial version is filled in the natural way:
``<2.0.0``, ``<=2.0.0``     ``>1`` is ``>=2.0.0``, ``>=1.2`` is ``>=1.2.0``, ``<2`` is
                            ``<2.0.0``, ``<=1.2`` is ``<1.3.0``
``^1.2.3``                  ``>=1.2.3 <2.0.0`` — changes that keep the left-most non-zero part
``^0.2.3``, ``^0.0.3``      ``>=0.2.3 <0.3.0``; ``>=0.0.3 <0.0.4``
``^1.2``, ``^0.0``, ``^1``  ``>=1.2.0 <2.0.0``; ``>=0.0.0 <0.1.0``; ``>=1.0.0 <2.0.0``
``~1.2.3``, ``~1.2``        ``>=1.2.3 <1.3.0``; ``>=1.2.0 <1.3.0`` — patch changes only
``~1``                      ``>=1.0.0 <2.0.0``
``>=1.2.0,<2.0.0``          all of the terms (separated by commas and/or spaces)
=========================== =================================================================

Prereleases follow npm's rule: a prerelease such as ``2.0.0-rc.1`` is allowed only if the
constraint names a prerelease of the same ``major.minor.patch`` (``2.0.0-rc.1``,
``>=2.0.0-rc.0``, ``^2.0.0-beta``). So ``*`` and ``^1.0.0`` never select a prerelease, and
the upper bound ``<2.0.0`` of ``^1.2.3`` does not let ``2.0.0-rc.1`` in. Anything else
(``||``, hyphen ranges ``1.0.0 - 2.0.0``, a ``v`` prefix) is refused with
:class:`~saga_orchestrator.errors.InvalidInput`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final

import semver

from saga_orchestrator.errors import InvalidInput

__all__ = ["Comparator", "VersionConstraint", "parse_version", "resolve", "version_sort_key"]

_ANY_TEXTS: Final = frozenset({"", "*", "latest"})
_WILDCARDS: Final = frozenset({"x", "X", "*"})
_PART = r"(0|[1-9]\d*|[xX*])"
_PARTIAL = re.compile(rf"{_PART}(?:\.{_PART}(?:\.[xX*])?)?")
_TERM = re.compile(r"(<=|>=|<|>|=|\^|~)?(.*)", re.DOTALL)
_OPERATOR_SPACE = re.compile(r"(<=|>=|<|>|=|\^|~)\s+")
_COMPARE: Final[dict[str, Callable[[semver.Version, semver.Version], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
}


def parse_version(text: str) -> semver.Version:
    """Parse a strict semantic version; :class:`InvalidInput` names a bad string."""
    if not isinstance(text, str):
        raise InvalidInput(f"a version must be a string, not {type(text).__name__}")
    try:
        return semver.Version.parse(text)
    except ValueError:
        raise InvalidInput(f"invalid version {text!r}: expected MAJOR.MINOR.PATCH") from None


def version_sort_key(text: str) -> semver.Version:
    """A key that sorts version strings by semantic-version precedence."""
    return parse_version(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparator:
    """One term of a constraint in its desugared form, e.g. ``<2.0.0-0``."""

    op: str
    """One of ``<``, ``<=``, ``>``, ``>=``, ``=``."""
    version: semver.Version
    names_prerelease: bool
    """True if the user wrote a prerelease here (not the ``-0`` of a derived upper bound)."""

    def test(self, version: semver.Version) -> bool:
        return _COMPARE[self.op](version, self.version)


def _bound(op: str, major: int, minor: int = 0, patch: int = 0) -> Comparator:
    if op == "<":  # `<2.0.0-0` keeps 2.0.0's prereleases out of `^1.2.3`
        upper = semver.Version(major, minor, patch, "0")
        return Comparator(op=op, version=upper, names_prerelease=False)
    return Comparator(op=op, version=semver.Version(major, minor, patch), names_prerelease=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionConstraint:
    """Which versions a reference accepts; build it with :meth:`parse`."""

    text: str
    """The constraint as written ("*" when none was given)."""
    comparators: tuple[Comparator, ...]
    """All must hold; empty allows any (non-prerelease) version."""

    @staticmethod
    def parse(text: str | None) -> VersionConstraint:
        """Parse a constraint (see the module docstring); :class:`InvalidInput` if malformed."""
        if text is None:
            return VersionConstraint(text="*", comparators=())
        if not isinstance(text, str):
            raise InvalidInput(f"a version constraint must be a string, not {type(text).__name__}")
        if text.strip().lower() in _ANY_TEXTS:
            return VersionConstraint(text="*", comparators=())
        terms = re.split(r"\s*,\s*|\s+", _OPERATOR_SPACE.sub(r"\1", text.strip()))
        comparators: list[Comparator] = []
        for term in terms:
            if not term:
                raise InvalidInput(f"invalid version constraint {text!r}: empty term")
            comparators.extend(_parse_term(term, text))
        return VersionConstraint(text=text.strip(), comparators=tuple(comparators))

    @property
    def is_any(self) -> bool:
        """True if every (non-prerelease) version is allowed."""
        return not self.comparators

    def allows(self, version: str | semver.Version) -> bool:
        """True if ``version`` satisfies the constraint (prereleases: see the module doc)."""
        parsed = version if isinstance(version, semver.Version) else parse_version(version)
        if not all(comparator.test(parsed) for comparator in self.comparators):
            return False
        if parsed.prerelease is None:
            return True
        release = parsed.to_tuple()[:3]
        return any(
            c.names_prerelease and c.version.to_tuple()[:3] == release for c in self.comparators
        )

    def __str__(self) -> str:
        return self.text


def resolve(
    available: Iterable[str],
    constraint: VersionConstraint,
    *,
    exclude: Collection[str] = (),
) -> str | None:
    """The highest version of ``available`` that ``constraint`` allows, or None.

    Versions in ``exclude`` (deprecated ones) are never chosen. Of versions equal in
    precedence (differing only in build metadata) the greatest string wins, so the answer
    does not depend on the order of ``available``.
    """
    best: tuple[semver.Version, str] | None = None
    for text in available:
        if text in exclude:
            continue
        version = parse_version(text)
        if constraint.allows(version) and (best is None or (version, text) > best):
            best = (version, text)
    return None if best is None else best[1]


def _parse_term(term: str, text: str) -> list[Comparator]:
    match = _TERM.fullmatch(term)
    assert match is not None  # the pattern accepts any string
    op, operand = match.group(1) or "", match.group(2)
    if operand in _WILDCARDS and op in {"", "="}:
        return []
    if semver.Version.is_valid(operand):
        return _full_term(op, semver.Version.parse(operand))
    partial = _PARTIAL.fullmatch(operand)
    if partial is None or partial.group(1) in _WILDCARDS:
        raise InvalidInput(f"invalid version constraint {text!r}: cannot read {term!r}")
    major = int(partial.group(1))
    minor = None if partial.group(2) in (None, *_WILDCARDS) else int(partial.group(2))
    return _partial_term(op, major, minor)


def _full_term(op: str, version: semver.Version) -> list[Comparator]:
    major, minor, patch = version.major, version.minor, version.patch
    names_prerelease = version.prerelease is not None
    exact = Comparator(op=op or "=", version=version, names_prerelease=names_prerelease)
    if op in {"", "=", "<", "<=", ">", ">="}:
        return [exact]
    lower = Comparator(op=">=", version=version, names_prerelease=names_prerelease)
    if op == "~":
        return [lower, _bound("<", major, minor + 1)]
    if major > 0:  # caret: the left-most non-zero part is fixed
        return [lower, _bound("<", major + 1)]
    if minor > 0:
        return [lower, _bound("<", 0, minor + 1)]
    return [lower, _bound("<", 0, 0, patch + 1)]


def _partial_term(op: str, major: int, minor: int | None) -> list[Comparator]:
    """``1`` / ``1.2`` (``x`` parts count as missing) after an operator."""
    # The smallest version above the range `major[.minor].x`:
    above = (major + 1, 0, 0) if minor is None else (major, minor + 1, 0)
    if op == ">":
        return [_bound(">=", *above)]
    if op == ">=":
        return [_bound(">=", major, minor or 0)]
    if op == "<":
        return [_bound("<", major, minor or 0)]
    if op == "<=":
        return [_bound("<", *above)]
    lower = _bound(">=", major, minor or 0)
    if op == "^" and major == 0 and minor is not None:
        return [lower, _bound("<", 0, minor + 1)]  # ^0.2 -> <0.3.0; ^0.0 -> <0.1.0
    if op == "^":
        return [lower, _bound("<", major + 1)]  # ^1.2 -> <2.0.0; ^0 -> <1.0.0
    return [lower, _bound("<", *above)]  # `1`, `1.2`, `=1.2`, `~1`, `~1.2`
