"""Shared pytest fixtures for tests/ and e2e/: real MLflow, p4p and Kubernetes servers (tests/fixtures/)."""

pytest_plugins = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.p4p_server",
    "tests.fixtures.demo_models",
    "tests.fixtures.control_plane",
]
