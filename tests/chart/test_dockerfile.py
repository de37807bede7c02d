"""The Dockerfile, read rather than built (no container engine here): two lean, non-root targets
whose entrypoints are the project's console scripts."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.chart.chart_support import REPO_ROOT

pytestmark = pytest.mark.chart

COMPILER_PACKAGES = ("build-essential", "gcc", "g++", "clang", "make")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [value for key, value in self.instructions if key == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", value, re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = Stage(name=match.group(2), base=match.group(1))
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", line
            name, _, default = value.partition("=")
            global_args[name] = default
        else:
            current.instructions.append((keyword, value.strip()))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile((REPO_ROOT / "Dockerfile").read_text())


def resolved_base(stage: Stage, global_args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)


def console_scripts() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project["scripts"]
    return scripts


def test_multi_stage_with_builder_controller_and_worker(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    global_args, stages = dockerfile
    assert {"builder", "controller", "worker"} <= set(stages)
    assert resolved_base(stages["controller"], global_args) == "python:3.11-slim"
    assert stages["worker"].base == "${WORKER_BASE}"
    assert global_args["WORKER_BASE"] == "python:3.11-slim"


def test_controller_gets_the_built_venv_and_no_compilers(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    controller = stages["controller"]
    copies = controller.all("COPY")
    assert any(c.startswith("--from=builder") and "/opt/venv" in c for c in copies)
    for run in controller.all("RUN"):
        assert not any(package in run for package in COMPILER_PACKAGES), run
    builder_runs = " ".join(stages["builder"].all("RUN"))
    assert "venv" in builder_runs and "pip install" in builder_runs


@pytest.mark.parametrize("target", ["controller", "worker"])
def test_each_target_runs_as_a_numeric_non_root_user(
    dockerfile: tuple[dict[str, str], dict[str, Stage]], target: str
) -> None:
    _, stages = dockerfile
    user = stages[target].last("USER")
    assert user is not None, f"{target} has no USER"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{target} USER {user} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after USER switches back to root.
    keywords = [k for k, _ in stages[target].instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


@pytest.mark.parametrize(
    ("target", "entrypoint", "cmd"),
    [("controller", ["tunefleet"], ["controller"]), ("worker", ["tunefleet-worker"], None)],
)
def test_entrypoints_are_the_projects_console_scripts(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
    target: str,
    entrypoint: list[str],
    cmd: list[str] | None,
) -> None:
    _, stages = dockerfile
    stage = stages[target]
    declared_entrypoint = stage.last("ENTRYPOINT")
    assert declared_entrypoint is not None
    assert json.loads(declared_entrypoint) == entrypoint, "exec form, so signals reach the process"
    declared_cmd = stage.last("CMD")
    assert (json.loads(declared_cmd) if declared_cmd else None) == cmd
    assert entrypoint[0] in console_scripts()


def test_worker_installs_the_worker_extra(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    _, stages = dockerfile
    runs = " ".join(stages["worker"].all("RUN"))
    assert re.search(r"pip install [\"']?\.\[worker\]", runs), runs
    assert (
        "worker"
        in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


@pytest.mark.parametrize("target", ["controller", "worker"])
def test_oci_labels(dockerfile: tuple[dict[str, str], dict[str, Stage]], target: str) -> None:
    _, stages = dockerfile
    labels: dict[str, str] = {}
    for value in stages[target].all("LABEL"):
        for pair in shlex.split(value):
            key, _, label = pair.partition("=")
            labels[key] = label
    for key in ("source", "title", "description", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "helm"} <= ignored


def test_parser_sees_continuations_and_stages() -> None:
    args, stages = parse_dockerfile(
        "ARG BASE=alpine\nFROM ${BASE} AS one\nRUN a \\\n    && b\n# note\nUSER 10\nFROM one AS two\n"
    )
    assert args == {"BASE": "alpine"}
    assert stages["one"].all("RUN") == ["a && b"]
    assert stages["one"].last("USER") == "10" and stages["two"].base == "one"
