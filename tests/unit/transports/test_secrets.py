"""Secret references: resolution, and the rules confining what a tenant's references reach
(env variables by prefix and tenant allow-list, files in the tenant's own directory, no
literal credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saga_orchestrator.console.serve import secret_policy
from saga_orchestrator.definition.participants import ParticipantService, SecretRef
from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.settings import Settings
from saga_orchestrator.transports.secrets import (
    SecretPolicy,
    SecretRefused,
    SecretUnavailable,
    is_credential_header,
    resolve_secret,
)

ACME, GLOBEX = "acme", "globex"
NODE_ENV = {
    "JWT_SECRET": "node-jwt-key",
    "DATABASE_URL": "postgresql://saga:pw@db/saga",
    "ENCRYPTION_KEYS": "k1=c2VjcmV0",
    "REDIS_URL": "redis://:pw@redis",
    "SAGA_SECRET_TOKEN": "tenant-token",
}


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    root = tmp_path / "secrets"
    for tenant in (ACME, GLOBEX):
        (root / tenant).mkdir(parents=True)
    (root / ACME / "token").write_text("acme-token\n")
    (root / GLOBEX / "token").write_text("globex-token\n")
    return root


@pytest.fixture
def policy(secrets_dir: Path) -> SecretPolicy:
    return SecretPolicy.of([ACME], secrets_dir)


def resolve(
    ref: SecretRef, policy: SecretPolicy, tenant: str = ACME, environ: dict[str, str] | None = None
) -> str:
    return resolve_secret(
        ref, NODE_ENV if environ is None else environ, tenant_id=tenant, policy=policy
    )


def refusal(ref: SecretRef, policy: SecretPolicy, tenant: str = ACME) -> SecretRefused:
    with pytest.raises(SecretRefused) as caught:
        resolve(ref, policy, tenant)
    for value in (*NODE_ENV.values(), "acme-token", "globex-token", "outside-value"):
        assert value not in str(caught.value)
    return caught.value


# --- resolution ---


def test_an_env_secret_is_read_as_is(policy: SecretPolicy) -> None:
    environ = {"SAGA_SECRET_TOKEN": " abc "}
    assert resolve(SecretRef(env="SAGA_SECRET_TOKEN"), policy, environ=environ) == " abc "


@pytest.mark.parametrize(
    ("content", "value"),
    [(b"abc\n", "abc"), (b"abc\r\n", "abc"), (b"abc", "abc"), (b"a b\n", "a b")],
)
def test_a_file_secret_loses_one_trailing_newline(
    secrets_dir: Path, policy: SecretPolicy, content: bytes, value: str
) -> None:
    (secrets_dir / ACME / "secret").write_bytes(content)

    assert resolve(SecretRef(file="secret"), policy) == value


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "secret env:SAGA_SECRET_TOKEN is not set"),
        ({"SAGA_SECRET_TOKEN": ""}, "secret env:SAGA_SECRET_TOKEN is empty"),
        ({"SAGA_SECRET_TOKEN": "a\nb"}, "secret env:SAGA_SECRET_TOKEN contains a line break"),
        ({"SAGA_SECRET_TOKEN": "caf\u00e9"}, "secret env:SAGA_SECRET_TOKEN is not ASCII"),
    ],
)
def test_unusable_env_secrets(policy: SecretPolicy, environ: dict[str, str], reason: str) -> None:
    with pytest.raises(SecretUnavailable) as caught:
        resolve(SecretRef(env="SAGA_SECRET_TOKEN"), policy, environ=environ)

    assert str(caught.value).startswith(reason)
    assert not isinstance(caught.value, SecretRefused)  # retryable: the secret may come
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.reference == "env:SAGA_SECRET_TOKEN"


def test_unusable_file_secrets(secrets_dir: Path, policy: SecretPolicy) -> None:
    (secrets_dir / ACME / "empty").write_bytes(b"\n")
    (secrets_dir / ACME / "binary").write_bytes(b"\xff\xfe")
    (secrets_dir / ACME / "folder").mkdir()

    reasons = []
    for path in ("missing", "empty", "binary", "folder"):
        with pytest.raises(SecretUnavailable) as caught:
            resolve(SecretRef(file=path), policy)
        reasons.append(str(caught.value))

    assert reasons == [
        "secret file:missing cannot be read (No such file or directory)",
        "secret file:empty is empty",
        "secret file:binary is not UTF-8 text",
        "secret file:folder cannot be read (Is a directory)",
    ]


def test_an_oversized_secret_file_is_refused(secrets_dir: Path, policy: SecretPolicy) -> None:
    (secrets_dir / ACME / "big").write_bytes(b"x" * 20_000)

    with pytest.raises(SecretUnavailable, match="is larger than 16384 bytes"):
        resolve(SecretRef(file="big"), policy)


# --- environment variables: the prefix and the tenants ---


NOT_PREFIXED = ["JWT_SECRET", "DATABASE_URL", "ENCRYPTION_KEYS", "REDIS_URL", "SAGA_SECRET_",
                "saga_secret_TOKEN", "XSAGA_SECRET_TOKEN"]  # fmt: skip


@pytest.mark.parametrize("name", NOT_PREFIXED)
def test_only_prefixed_variables_are_reachable(policy: SecretPolicy, name: str) -> None:
    refused = refusal(SecretRef(env=name), policy)

    assert refused.reference == f"env:{name}"
    assert "starting with SAGA_SECRET_" in str(refused)


def test_env_references_are_for_the_allowed_tenants_only(secrets_dir: Path) -> None:
    ref = SecretRef(env="SAGA_SECRET_TOKEN")
    only_acme = SecretPolicy.of([ACME], secrets_dir)

    assert resolve(ref, only_acme, ACME) == "tenant-token"
    refused = refusal(ref, only_acme, GLOBEX)
    assert "not enabled for tenant 'globex' (SECRET_ENV_TENANTS)" in str(refused)
    assert resolve(ref, SecretPolicy.of(["*"]), GLOBEX) == "tenant-token"
    assert resolve(ref, SecretPolicy.of([ACME, GLOBEX]), GLOBEX) == "tenant-token"
    refusal(ref, SecretPolicy.of([]), ACME)
    refusal(ref, SecretPolicy(), ACME)  # the default reaches nothing


# --- files: the tenant's own directory ---


@pytest.mark.parametrize("path", ["token", "./token", "sub/key", "..data/key"])
def test_relative_paths_inside_the_tenant_directory_are_read(
    secrets_dir: Path, policy: SecretPolicy, path: str
) -> None:
    for folder in ("sub", "..data"):  # "..data": how Kubernetes names a mounted secret's files
        (secrets_dir / ACME / folder).mkdir(exist_ok=True)
        (secrets_dir / ACME / folder / "key").write_text("acme-token")

    assert resolve(SecretRef(file=path), policy) == "acme-token"


def test_a_symbolic_link_inside_the_tenant_directory_is_followed(
    secrets_dir: Path, policy: SecretPolicy
) -> None:
    (secrets_dir / ACME / "current").symlink_to("token")  # a rotation by re-linking

    assert resolve(SecretRef(file="current"), policy) == "acme-token"


def test_an_absolute_path_is_refused_even_inside_the_tenant_directory(
    secrets_dir: Path, policy: SecretPolicy
) -> None:
    for path in ("/proc/self/environ", str(secrets_dir / ACME / "token")):
        refused = refusal(SecretRef(file=path), policy)

        assert refused.reference == f"file:{path}"
        assert "relative to the tenant's secrets directory" in str(refused)


@pytest.mark.parametrize("path", ["../globex/token", "sub/../../globex/token", "..", "a/.."])
def test_dot_dot_is_refused(secrets_dir: Path, policy: SecretPolicy, path: str) -> None:
    (secrets_dir / ACME / "sub").mkdir()

    assert "may not contain '..'" in str(refusal(SecretRef(file=path), policy))


def test_another_tenants_file_is_out_of_reach(secrets_dir: Path, policy: SecretPolicy) -> None:
    for path in ("../globex/token", str(secrets_dir / GLOBEX / "token")):
        refusal(SecretRef(file=path), policy, ACME)
    # A name that looks like the other tenant's directory is a name in one's own.
    with pytest.raises(SecretUnavailable, match="cannot be read"):
        resolve(SecretRef(file="globex/token"), policy, ACME)
    assert resolve(SecretRef(file="token"), policy, GLOBEX) == "globex-token"


@pytest.mark.parametrize("target", ["globex-file", "globex-dir", "outside-file", "outside-dir"])
def test_a_symbolic_link_leading_out_of_the_tenant_directory_is_refused(
    tmp_path: Path, secrets_dir: Path, policy: SecretPolicy, target: str
) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "token").write_text("outside-value")
    targets = {
        "globex-file": secrets_dir / GLOBEX / "token",
        "globex-dir": secrets_dir / GLOBEX,
        "outside-file": tmp_path / "outside" / "token",
        "outside-dir": tmp_path / "outside",
    }
    (secrets_dir / ACME / "link").symlink_to(targets[target])
    path = "link" if target.endswith("file") else "link/token"

    refused = refusal(SecretRef(file=path), policy)

    assert "leads out of the tenant's secrets directory" in str(refused)


def test_a_dangling_link_out_is_refused_before_its_target_exists(
    tmp_path: Path, secrets_dir: Path, policy: SecretPolicy
) -> None:
    (secrets_dir / ACME / "later").symlink_to(tmp_path / "not-yet")

    refusal(SecretRef(file="later"), policy)


@pytest.mark.parametrize("path", ["\x00", "a\x00b", "", "\ud800", "\udc80x"])
def test_what_names_no_file_is_refused(policy: SecretPolicy, path: str) -> None:
    refused = refusal(SecretRef.model_construct(file=path), policy)

    assert "is not a file path" in str(refused)
    str(refused).encode("utf-8")  # a message that can be written as JSON


def test_file_references_are_refused_without_a_secrets_dir(secrets_dir: Path) -> None:
    unset = SecretPolicy.of([ACME])

    refused = refusal(SecretRef(file="token"), unset)

    assert "set SECRETS_DIR" in str(refused)
    assert resolve(SecretRef(env="SAGA_SECRET_TOKEN"), unset) == "tenant-token"


@pytest.mark.parametrize("tenant", ["..", ".", ".hidden", "a/b", ""])
def test_a_tenant_id_that_is_no_directory_name_reaches_no_file(
    secrets_dir: Path, tenant: str
) -> None:
    assert "cannot name a secrets directory" in str(
        refusal(SecretRef(file="token"), SecretPolicy.of([], secrets_dir), tenant)
    )


def test_a_relative_secrets_dir_is_made_absolute(
    secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(secrets_dir.parent)
    policy = SecretPolicy.of([], "secrets")
    monkeypatch.chdir("/")

    assert policy.secrets_dir == str(secrets_dir)
    assert resolve(SecretRef(file="token"), policy) == "acme-token"


# --- credential headers ---


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("X-Auth-Token", True),
        ("X-Client-Secret", True),
        ("X-Password", True),
        ("X-Passwd", True),
        ("X-Api-Key", True),
        ("X_API_KEY", True),
        ("ApiKey", True),
        ("X-Credentials", True),
        ("X-Tenant", False),
        ("Accept", False),
        ("X-Request-Source", False),
    ],
)
def test_credential_headers(name: str, credential: bool) -> None:
    assert is_credential_header(name) is credential


# --- registration: every problem of an entry, by field ---


def service(**fields: Any) -> ParticipantService:
    return ParticipantService(base_url="https://api.example.com", **fields)


def test_a_valid_entry_has_no_problems(policy: SecretPolicy) -> None:
    entry = service(
        headers={
            "Authorization": {"secret": {"env": "SAGA_SECRET_TOKEN"}, "prefix": "Bearer "},
            "X-Api-Key": {"secret": {"file": "token"}},
            "X-Tenant": "acme",
        },
        tls={"ca_file": "ca.pem", "client_cert": "client.pem", "client_key": "client.key"},
    )

    assert policy.problems(ACME, entry) == []


def test_each_problem_names_its_field_and_never_a_value(policy: SecretPolicy) -> None:
    entry = service(
        headers={
            "Authorization": "Bearer literal-value",
            "X-Node": {"secret": {"env": "JWT_SECRET"}},
            "X-Other": {"secret": {"file": "../globex/token"}},
            "X-Tenant": "acme",
        },
        tls={"ca_file": "/etc/ssl/ca.pem", "client_key": "../globex/key"},
    )

    problems = policy.problems(ACME, entry)

    assert [problem.split(": ", 1)[0] for problem in problems] == [
        "headers.Authorization",
        "headers.X-Node.secret.env",
        "headers.X-Other.secret.file",
        "tls.ca_file",
        "tls.client_key",
    ]
    assert "write it as a secret reference" in problems[0]
    assert "env:JWT_SECRET is refused" in problems[1]
    assert "file:../globex/token is refused" in problems[2]
    assert "literal-value" not in "".join(problems)


def test_env_references_of_a_tenant_not_allowed_are_problems(policy: SecretPolicy) -> None:
    entry = service(headers={"Authorization": {"secret": {"env": "SAGA_SECRET_TOKEN"}}})

    assert policy.problems(ACME, entry) == []
    assert "SECRET_ENV_TENANTS" in policy.problems(GLOBEX, entry)[0]


# --- the served node's policy, from its settings ---


def test_a_served_node_allows_env_secrets_to_its_own_tenant_by_default(secrets_dir: Path) -> None:
    default = secret_policy(Settings(tenant_id="acme"))
    configured = secret_policy(
        Settings(secret_env_tenants="globex, *", secrets_dir=str(secrets_dir))
    )

    assert default == SecretPolicy(env_tenants=frozenset({"acme"}), secrets_dir=None)
    assert configured == SecretPolicy(env_tenants=None, secrets_dir=str(secrets_dir))


def test_a_secrets_dir_that_is_no_directory_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"SECRETS_DIR: .* is not a directory"):
        secret_policy(Settings(secrets_dir=str(tmp_path / "missing")))
