"""Session-wide fixtures: real components are started once per session by the plugins below."""

pytest_plugins = [
    "tests.fixtures.gateway",
    "tests.fixtures.minio",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.stack",
    "tests.fixtures.orthanc",
    "tests.fixtures.kube",
    "tests.fixtures.issuer",
    "tests.fixtures.keycloak",
    "tests.fixtures.rsyslog",
]
