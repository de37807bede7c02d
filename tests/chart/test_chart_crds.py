"""The chart installs exactly the CRDs generated from the pydantic models, kept on uninstall."""

from __future__ import annotations

import sys
from collections.abc import Callable

import helm_python
import kubernetes_validate
import pytest
import yaml

from controller.kube.crd import build_crds
from tests.chart.chart_support import CHART_DIR, KUBERNETES_VERSIONS, REPO_ROOT, Manifest, find

pytestmark = pytest.mark.chart


def test_crd_files_are_exactly_the_generated_crds() -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import sync_chart_crds
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    expected = sync_chart_crds.expected_files()
    on_disk = sorted((CHART_DIR / "files" / "crds").glob("*.yaml"))
    assert on_disk == sorted(expected), "run: python scripts/sync_chart_crds.py"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path.name} is stale; run: python scripts/sync_chart_crds.py"
    parsed = [yaml.safe_load(path.read_text()) for path in on_disk]
    assert sorted(parsed, key=str) == sorted(build_crds(), key=str)


def test_installed_crds_are_the_generated_ones_and_kept_on_uninstall(
    scenario_objects: Callable[[str], list[Manifest]],
) -> None:
    rendered = {
        crd["metadata"]["name"]: crd for crd in find(scenario_objects("default"), "CustomResourceDefinition")
    }
    generated = {crd["metadata"]["name"]: crd for crd in build_crds()}
    assert set(rendered) == set(generated) == {"studies.tunefleet.dev", "gpubudgets.tunefleet.dev"}
    for name, crd in rendered.items():
        assert crd["spec"] == generated[name]["spec"]
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crds_can_be_managed_outside_the_chart(render: Callable[..., list[Manifest]]) -> None:
    assert find(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kopf_peering_crds_in_crds_dir_are_valid(chart: helm_python.Chart, version: str) -> None:
    documents = [doc for entry in chart.crds for doc in yaml.safe_load_all(entry["data"]) if doc]
    assert {d["metadata"]["name"] for d in documents} == {
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
