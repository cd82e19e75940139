.PHONY: setup quickstart test unit e2e bench control-plane packaging

setup:            ## create .venv and install the project (+ dev tools)
	bash scripts/setup.sh

quickstart:       ## bring up the local stack and deploy a demo model; Ctrl-C tears it down
	bash scripts/quickstart.sh

test:             ## the full test suite, as CI runs it
	bash scripts/test.sh

unit: setup       ## fast tests only (no Kubernetes control plane)
	.venv/bin/pytest tests -ra

control-plane:    ## build kube-apiserver, etcd, kwok, helm... from Go modules (cached)
	bash e2e/build-control-plane.sh

e2e: setup control-plane
	.venv/bin/pytest e2e -ra

packaging:
	bash scripts/check-packaging.sh

bench: setup control-plane  ## benchmarks against their baselines (poly-lithic from PyPI, plain kubectl)
	bash scripts/setup-bench.sh
	.venv/bin/python bench/runtime_bench.py
	.venv/bin/python bench/operator_bench.py
	.venv/bin/python bench/formula_bench.py
