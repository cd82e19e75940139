pytest_plugins = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.p4p_server",
]
