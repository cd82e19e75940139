"""Shared pytest fixtures for tests/ and e2e/: real MLflow and p4p servers (tests/fixtures/)."""

import importlib.util

_FIXTURE_MODULES = (
    "tests.fixtures.mlflow_server",
    "tests.fixtures.p4p_server",
    "tests.fixtures.demo_models",
    "tests.fixtures.control_plane",
)
# A fixture module may not exist yet on a branch that is mid-way; load the ones that do.
pytest_plugins = [name for name in _FIXTURE_MODULES if importlib.util.find_spec(name) is not None]
