"""Semantic versions and constraints (saga_orchestrator.definition.versions)."""

from __future__ import annotations

import pytest
import semver
from hypothesis import given
from hypothesis import strategies as st

from saga_orchestrator.definition.versions import (
    VersionConstraint,
    parse_version,
    resolve,
    version_sort_key,
)
from saga_orchestrator.errors import InvalidInput

# --- parse and order ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("0.0.0", (0, 0, 0, None, None)),
        ("1.2.3", (1, 2, 3, None, None)),
        ("10.20.30", (10, 20, 30, None, None)),
        ("1.2.3-rc.1", (1, 2, 3, "rc.1", None)),
        ("1.2.3+build.7", (1, 2, 3, None, "build.7")),
        ("1.2.3-alpha+sha.5114f85", (1, 2, 3, "alpha", "sha.5114f85")),
    ],
)
def test_parse_version(text: str, parts: tuple[object, ...]) -> None:
    assert parse_version(text).to_tuple() == parts


@pytest.mark.parametrize(
    "text", ["", "1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", " 1.2.3", "1.2.3\n", "x"]
)
def test_parse_version_rejects_bad_strings_naming_them(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid version") as caught:
        parse_version(text)
    assert repr(text) in str(caught.value)


def test_parse_version_rejects_non_strings() -> None:
    with pytest.raises(InvalidInput, match="must be a string"):
        parse_version(123)  # type: ignore[arg-type]


def test_sort_key_orders_by_precedence() -> None:
    shuffled = [
        "1.10.0",
        "1.0.0",
        "1.0.0-rc.1",
        "2.0.0",
        "1.0.0-alpha",
        "1.2.0",
        "1.0.0-alpha.1",
        "1.0.0-beta.11",
        "1.0.0-beta.2",
        "0.9.9",
    ]
    assert sorted(shuffled, key=version_sort_key) == [
        "0.9.9",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]


def test_build_metadata_does_not_change_precedence() -> None:
    assert version_sort_key("1.0.0+a") == version_sort_key("1.0.0+b")


# --- constraints ----------------------------------------------------------------------------

ALLOWS: list[tuple[str | None, list[str], list[str]]] = [
    # (constraint, allowed, refused)
    (None, ["0.0.1", "1.2.3", "99.0.0"], ["1.0.0-rc.1"]),
    ("", ["1.2.3"], ["1.0.0-rc.1"]),
    ("*", ["1.2.3"], ["2.0.0-alpha"]),
    ("latest", ["0.1.0", "3.0.0"], ["3.1.0-beta"]),
    ("1.2.3", ["1.2.3", "1.2.3+build"], ["1.2.4", "1.2.2", "1.2.3-rc.1"]),
    ("=1.2.3", ["1.2.3"], ["1.2.4"]),
    ("= 1.2.3", ["1.2.3"], ["1.2.4"]),
    ("1.2.3-rc.1", ["1.2.3-rc.1"], ["1.2.3", "1.2.3-rc.2"]),
    (">=1.2.0", ["1.2.0", "1.3.0", "2.0.0"], ["1.1.9", "1.2.0-rc.1", "1.3.0-rc.1"]),
    (">1.2.0", ["1.2.1", "2.0.0"], ["1.2.0", "1.0.0"]),
    ("<2.0.0", ["1.9.9", "0.0.1"], ["2.0.0", "2.0.0-rc.1", "1.5.0-beta"]),
    ("<=2.0.0", ["2.0.0", "1.0.0"], ["2.0.1", "2.0.0-rc.1"]),
    (">1", ["2.0.0", "3.1.0"], ["1.9.9", "1.0.0"]),
    (">1.2", ["1.3.0", "2.0.0"], ["1.2.9"]),
    (">=1", ["1.0.0", "5.0.0"], ["0.9.0"]),
    (">=1.2", ["1.2.0"], ["1.1.9"]),
    ("<2", ["1.9.9"], ["2.0.0", "2.0.0-rc.1"]),
    ("<1.2", ["1.1.9"], ["1.2.0"]),
    ("<=1.2", ["1.2.9", "1.0.0"], ["1.3.0"]),
    ("<=1", ["1.9.9"], ["2.0.0"]),
    (">=1.2.0,<2.0.0", ["1.2.0", "1.9.9"], ["1.1.0", "2.0.0", "2.0.0-rc.1"]),
    (">=1.2.0 <2.0.0", ["1.5.0"], ["2.0.0"]),
    (">= 1.2.0, < 2.0.0", ["1.5.0"], ["2.0.0", "1.0.0"]),
    (">1.0.0 <=1.5.0", ["1.0.1", "1.5.0"], ["1.0.0", "1.5.1"]),
    ("^1.2.3", ["1.2.3", "1.2.4", "1.9.0"], ["1.2.2", "2.0.0", "2.0.0-rc.1", "1.3.0-rc.1"]),
    ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2", "1.0.0"]),
    ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2", "0.1.0"]),
    ("^1.2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0"]),
    ("^1", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"]),
    ("^0.2", ["0.2.0", "0.2.9"], ["0.3.0"]),
    ("^0.0", ["0.0.0", "0.0.9"], ["0.1.0"]),
    ("^0", ["0.0.0", "0.9.9"], ["1.0.0"]),
    ("^1.x", ["1.0.0", "1.5.0"], ["2.0.0"]),
    ("^1.2.3-beta.2", ["1.2.3-beta.2", "1.2.3-beta.3", "1.2.3", "1.5.0"], ["1.2.3-beta.1"]),
    ("^1.2.3-beta.2", [], ["1.2.4-beta.1", "2.0.0"]),
    ("~1.2.3", ["1.2.3", "1.2.9"], ["1.2.2", "1.3.0", "1.3.0-rc.1"]),
    ("~1.2", ["1.2.0", "1.2.9"], ["1.1.9", "1.3.0"]),
    ("~1", ["1.0.0", "1.9.9"], ["2.0.0"]),
    ("~0.2.3", ["0.2.3", "0.2.4"], ["0.3.0"]),
    ("~1.2.3-rc.1", ["1.2.3-rc.1", "1.2.3-rc.2", "1.2.3", "1.2.5"], ["1.2.4-rc.1"]),
    ("1", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0", "1.5.0-rc.1"]),
    ("1.2", ["1.2.0", "1.2.9"], ["1.1.9", "1.3.0"]),
    ("1.x", ["1.0.0", "1.9.9"], ["2.0.0"]),
    ("1.*", ["1.3.0"], ["2.0.0"]),
    ("1.2.x", ["1.2.5"], ["1.3.0"]),
    ("1.x.x", ["1.3.0"], ["2.0.0"]),
    ("=1.2", ["1.2.5"], ["1.3.0"]),
    ("0", ["0.0.0", "0.9.0"], ["1.0.0"]),
    (">=2.0.0-rc.1", ["2.0.0-rc.1", "2.0.0-rc.2", "2.0.0", "3.0.0"], ["2.0.0-beta", "3.0.0-rc.1"]),
    (">=1.0.0 <1.0.0", [], ["1.0.0"]),
]


@pytest.mark.parametrize(("text", "allowed", "refused"), ALLOWS)
def test_constraint_forms(text: str | None, allowed: list[str], refused: list[str]) -> None:
    constraint = VersionConstraint.parse(text)
    assert [v for v in allowed if constraint.allows(v)] == allowed
    assert [v for v in refused if constraint.allows(v)] == []


@pytest.mark.parametrize("text", [None, "", "  ", "*", "latest", "LATEST", "x"])
def test_any_constraint(text: str | None) -> None:
    constraint = VersionConstraint.parse(text)
    assert constraint.is_any
    assert constraint.comparators == ()


def test_constraint_text_and_desugaring() -> None:
    constraint = VersionConstraint.parse("  ^1.2.3 ")
    assert str(constraint) == "^1.2.3"
    assert [(c.op, str(c.version), c.names_prerelease) for c in constraint.comparators] == [
        (">=", "1.2.3", False),
        ("<", "2.0.0-0", False),
    ]
    assert str(VersionConstraint.parse(None)) == "*"
    assert not constraint.is_any


def test_allows_accepts_a_parsed_version() -> None:
    assert VersionConstraint.parse("^1").allows(semver.Version(1, 4, 0))


def test_allows_rejects_a_bad_version() -> None:
    with pytest.raises(InvalidInput, match=r"'1\.2'"):
        VersionConstraint.parse("*").allows("1.2")


@pytest.mark.parametrize(
    "text",
    [
        ">=",
        "^",
        "~",
        "v1.2.3",
        "1.2.3.4",
        "1.0.0 - 2.0.0",
        "^1.0.0 || ^2.0.0",
        ">=1.0.0,,<2.0.0",
        ",1.0.0",
        "01.2",
        ">=x",
        "x.2",
        "1.x.3",
        "1.2.3-",
        "!=1.0.0",
        "latest-1",
        "~>1.2",
    ],
)
def test_malformed_constraints_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid version constraint") as caught:
        VersionConstraint.parse(text)
    assert repr(text.strip()) in str(caught.value)


def test_non_string_constraint_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="must be a string"):
        VersionConstraint.parse(1)  # type: ignore[arg-type]


# --- resolve --------------------------------------------------------------------------------

AVAILABLE = ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1", "0.9.0", "1.10.1-beta.1", "1.9.3"]


@pytest.mark.parametrize(
    ("text", "exclude", "expected"),
    [
        (None, (), "1.10.0"),
        ("latest", (), "1.10.0"),
        ("^1.2.0", (), "1.10.0"),
        ("~1.2", (), "1.2.0"),
        ("<1.0.0", (), "0.9.0"),
        ("1.0.0", (), "1.0.0"),
        ("^3", (), None),
        ("2.0.0-rc.1", (), "2.0.0-rc.1"),
        (">=2.0.0-rc.0", (), "2.0.0-rc.1"),
        ("^1.10.1-beta.0", (), "1.10.1-beta.1"),
        (None, ("1.10.0",), "1.9.3"),
        ("^1", ("1.10.0", "1.9.3"), "1.2.0"),
        ("1.0.0", ("1.0.0",), None),
        (None, ("1.10.0", "1.9.3", "1.2.0", "1.0.0", "0.9.0"), None),
    ],
)
def test_resolve(text: str | None, exclude: tuple[str, ...], expected: str | None) -> None:
    assert resolve(AVAILABLE, VersionConstraint.parse(text), exclude=exclude) == expected


def test_resolve_with_nothing_available() -> None:
    assert resolve([], VersionConstraint.parse(None)) is None


def test_resolve_accepts_any_iterable_and_set_exclude() -> None:
    assert resolve(iter(AVAILABLE), VersionConstraint.parse("1"), exclude={"1.10.0"}) == "1.9.3"


def test_resolve_breaks_build_metadata_ties_by_string() -> None:
    any_version = VersionConstraint.parse(None)
    assert resolve(["1.0.0+b", "1.0.0+a"], any_version) == "1.0.0+b"
    assert resolve(["1.0.0+a", "1.0.0+b"], any_version) == "1.0.0+b"


def test_resolve_rejects_a_bad_available_version() -> None:
    with pytest.raises(InvalidInput, match=r"'1\.2'"):
        resolve(["1.0.0", "1.2"], VersionConstraint.parse(None))


# --- properties -----------------------------------------------------------------------------

numbers = st.integers(min_value=0, max_value=12)
prereleases = st.none() | st.sampled_from(["alpha", "alpha.1", "beta.2", "rc.1", "0", "11"])
versions = st.builds(
    lambda major, minor, patch, pre: str(semver.Version(major, minor, patch, pre)),
    numbers,
    numbers,
    numbers,
    prereleases,
)
constraints = st.one_of(
    st.none(),
    versions,
    st.tuples(st.sampled_from(["", "=", ">", ">=", "<", "<=", "^", "~"]), versions).map("".join),
    st.tuples(st.sampled_from(["", ">", ">=", "<", "<=", "^", "~"]), numbers, numbers).map(
        lambda t: f"{t[0]}{t[1]}.{t[2]}"
    ),
    st.tuples(st.sampled_from(["", ">", "<=", "^", "~"]), numbers).map(lambda t: f"{t[0]}{t[1]}"),
    st.tuples(versions, versions).map(lambda t: f">={t[0]}, <{t[1]}"),
)


@given(available=st.lists(versions, max_size=12), text=constraints, data=st.data())
def test_resolve_returns_the_highest_allowed_version(
    available: list[str], text: str | None, data: st.DataObject
) -> None:
    exclude = set(data.draw(st.lists(st.sampled_from(available)))) if available else set()
    constraint = VersionConstraint.parse(text)
    chosen = resolve(available, constraint, exclude=exclude)
    candidates = [v for v in available if v not in exclude and constraint.allows(v)]
    if chosen is None:
        assert candidates == []
    else:
        assert chosen in candidates
        assert all(version_sort_key(v) <= version_sort_key(chosen) for v in candidates)


@given(a=versions, b=versions)
def test_sort_key_agrees_with_semver_compare(a: str, b: str) -> None:
    key_a, key_b = version_sort_key(a), version_sort_key(b)
    assert (key_a > key_b) - (key_a < key_b) == semver.Version.parse(a).compare(b)
