"""Register the demo model (y = a*x1 + b*x2) in MLflow with its pipeline config, for the quickstart.

    python examples/demo/register_demo_model.py --tracking-uri http://127.0.0.1:5000
    model-manager -n demo-linear -v champion --once      # config comes from MLflow

Logs ``LinearDemoModel`` in the pyfunc ``DemoModelWrapper`` (``get_model()``), stores
examples/demo/pv_mappings.yaml at ``demo-linear/pv_mappings.yaml`` in the run (where the runtime
looks for it), sets the alias and prints the new version.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--name", default="demo-linear", help="registered model name (default: demo-linear)")
    parser.add_argument("--alias", default="champion", help="alias to point at the new version ('' for none)")
    parser.add_argument("-a", type=float, default=2.0, help="coefficient of x1 (default 2)")
    parser.add_argument("-b", type=float, default=-1.0, help="coefficient of x2 (default -1)")
    parser.add_argument("--config", type=Path, default=HERE / "pv_mappings.yaml", help="pipeline config to store")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri: not given and MLFLOW_TRACKING_URI is not set; e.g. http://127.0.0.1:5000")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: file not found")
    logging.basicConfig(level=logging.WARNING)

    from model_deploy.runtime.demo_models import make_linear_demo_model, register_pyfunc_model

    version = register_pyfunc_model(args.tracking_uri, args.name, make_linear_demo_model(args.a, args.b),
                                    args.config, alias=args.alias or None)
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
