"""`python -m model_deploy.runtime ...` is the same as `model-manager ...`."""

import sys

from model_deploy.runtime.cli import main

sys.exit(main())
