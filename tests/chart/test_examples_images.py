"""Every example Study runs as written with an image the Dockerfile builds.

Read, not built (no container engine here): the image a Study names (or the controller's default
trial image) must be one the Dockerfile's header says how to build (``docker build --target T -t
IMAGE``); that target, with the stages it copies from, must hold the objective's module (copied into
a directory on its ``PYTHONPATH``, not left out by .dockerignore) and install every distribution the
module imports (from pyproject.toml's dependencies and the extras its ``pip install`` names).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.kube.manifests import DEFAULT_TRIAL_IMAGE
from tests.chart.chart_support import REPO_ROOT
from tests.chart.test_dockerfile import Stage, parse_dockerfile

pytestmark = pytest.mark.chart

EXAMPLES = REPO_ROOT / "examples"
STUDIES = sorted(
    path for path in EXAMPLES.rglob("*.yaml") if yaml.safe_load(path.read_text()).get("kind") == "Study"
)


def documented_images(text: str) -> dict[str, str]:
    """Image -> target, from the comments' ``docker build --target T [--build-arg ...] -t IMAGE .``."""
    comments = " ".join(
        line.lstrip("#").strip().removesuffix("\\") for line in text.splitlines() if line.startswith("#")
    )
    found = re.findall(r"docker build --target (\S+)(?:\s+--build-arg \S+)*\s+-t (\S+) \.", comments)
    return {image: target for target, image in found}


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def installed(stages: dict[str, Stage], target: str) -> set[str]:
    """Distributions a target's venv holds: what ``pip install .[extras]`` installs in it or in the
    stages whose /opt/venv it copies, or whose image it starts from."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    stage = stages[target]
    sources = [stage.base, *(re.findall(r"--from=(\S+)", " ".join(stage.all("COPY"))))]
    for source in sources:
        if source in stages:
            names |= installed(stages, source)
    for run in stage.all("RUN"):
        for extras in re.findall(r"pip install [\"']?\.(?:\[([\w,]+)\])?", run):
            names |= _requirement_names(project["dependencies"]) | {project["name"]}
            for extra in filter(None, extras.split(",")):
                names |= _requirement_names(project["optional-dependencies"][extra])
    return names


def importable_roots(stages: dict[str, Stage], target: str) -> set[str]:
    """Top-level repo folders a target copies into a directory on its PYTHONPATH."""
    stage = stages[target]
    roots = importable_roots(stages, stage.base) if stage.base in stages else set()
    path = {p for env in stage.all("ENV") for p in re.findall(r"PYTHONPATH=(\S+)", env)}
    for copy in stage.all("COPY"):
        parts = copy.split()
        if parts[0].startswith("--"):
            continue
        source, destination = parts[0], parts[-1].rstrip("/")
        if destination.rpartition("/")[0] in {d for p in path for d in p.split(":")}:
            roots.add(source.rstrip("/"))
    return roots


def ignored(path: Path) -> bool:
    relative = str(path.relative_to(REPO_ROOT))
    patterns = [
        line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(
        fnmatch.fnmatch(relative, p) or (relative.startswith(p.rstrip("/") + "/") and "*" not in p)
        for p in patterns
    )


def entry_of(trial: dict[str, Any]) -> tuple[str, str | None]:
    """(module, function) a trial runs: ``python: mod:fn``, or ``command: [python, -m, mod, ...]``."""
    if trial.get("python"):
        module, _, function = trial["python"].partition(":")
        return module, function
    command = trial["command"]
    assert command[:2] == ["python", "-m"], f"a command example runs a module of the image: {command}"
    return command[2], None


def module_file(module: str) -> Path:
    base = REPO_ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def third_party_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Top-level names of what the module imports outside the repo, following its own imports."""
    seen = seen if seen is not None else set()
    seen.add(module)
    names: set[str] = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        imported = (
            [a.name for a in node.names] if isinstance(node, ast.Import)
            else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            else []
        )
        for name in imported:
            top = name.split(".")[0]
            if (REPO_ROOT / top).is_dir():
                if name not in seen and module_file(name).exists():
                    names |= third_party_imports(name, seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                names.add(top)
    return names


@pytest.fixture(scope="module")
def dockerfile() -> tuple[str, dict[str, Stage]]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    return text, parse_dockerfile(text)[1]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_each_example_runs_in_an_image_the_dockerfile_builds(
    path: Path, dockerfile: tuple[str, dict[str, Stage]]
) -> None:
    text, stages = dockerfile
    trial = yaml.safe_load(path.read_text())["spec"]["trial"]
    image = trial.get("image") or DEFAULT_TRIAL_IMAGE
    images = documented_images(text)
    assert image in images, f"{path.name}: {image} is not an image the Dockerfile builds ({sorted(images)})"
    target = images[image]

    module, function = entry_of(trial)
    source = module_file(module)
    assert source.exists(), f"{path.name}: no module {module}"
    if function is not None:
        defined = {n.name for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.FunctionDef)}
        assert function in defined, f"{path.name}: {module} defines no {function}"
    root = module.split(".")[0]
    assert root in importable_roots(stages, target), f"{path.name}: target {target} cannot import {module}"
    assert not ignored(source), f"{path.name}: .dockerignore keeps {source.name} out of the image"

    distributions = importlib.metadata.packages_distributions()
    needed = {
        dist.lower().replace("_", "-")
        for name in third_party_imports(module)
        for dist in distributions.get(name, [name])
    }
    missing = needed - installed(stages, target)
    assert not missing, f"{path.name}: target {target} lacks {sorted(missing)} that {module} imports"


def test_the_checks_would_see_the_worker_image_lacks_the_examples(
    dockerfile: tuple[str, dict[str, Stage]],
) -> None:
    """What issue 11 found: the worker target (CUDA base or not) holds neither the examples package
    nor torch."""
    text, stages = dockerfile
    assert documented_images(text)["ghcr.io/tunefleet/tunefleet-worker:0.1.0-cuda12.4"] == "worker"
    assert "examples" not in importable_roots(stages, "worker")
    assert {"torch", "scikit-learn"} - installed(stages, "worker") == {"torch", "scikit-learn"}
    assert {"torch", "scikit-learn", "optuna"} <= installed(stages, "examples")
    assert third_party_imports("examples.quickstart.train") >= {"torch", "sklearn", "optuna"}
