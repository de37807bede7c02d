"""A real API server refuses each kind of bad spec at once, naming the field: ``pytest --real-cluster``.

Needs only a control plane (no controller, no nodes): the fixture creates the generated CRDs if the
cluster lacks them (or updates them to this version's), and every document goes to a throwaway
namespace. The real answers are compared with the emulated API server's, so the cluster tier's
emulation of CEL rules is checked here too.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient, ApiException, CustomObjectsApi

from controller.kube.crd import build_crds
from controller.spec.study import MAX_COMMAND_PART_LENGTH, MAX_COMMAND_PARTS, MAX_PARAMETERS
from tests.cluster.emulator.admission import admission_causes
from tests.support.bad_specs import CORPUS, GPUBUDGETS, RULE_EXAMPLES, VALID_STUDY, BadSpec, dotted

pytestmark = [pytest.mark.real_cluster, pytest.mark.timeout(300)]

GROUP, VERSION = "tunefleet.dev", "v1alpha1"
PLURALS = {"Study": "studies", "GPUBudget": "gpubudgets"}
CRDS = build_crds()
SCHEMAS = {
    crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in CRDS
}


@pytest.fixture(scope="module")
def api_client() -> Iterator[ApiClient]:
    client = kubernetes.config.new_client_from_config()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def crds(api_client: ApiClient) -> None:
    """This version's CRDs on the cluster: created if missing, updated if they differ."""
    extensions = kubernetes.client.ApiextensionsV1Api(api_client)
    for crd in CRDS:
        name = crd["metadata"]["name"]
        try:
            current = extensions.read_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise
            extensions.create_custom_resource_definition(crd)
        else:
            served = api_client.sanitize_for_serialization(current)
            if served["spec"]["versions"] != crd["spec"]["versions"]:
                extensions.patch_custom_resource_definition(name, {"spec": crd["spec"]})
        _wait_established(extensions, name)


def _wait_established(extensions: kubernetes.client.ApiextensionsV1Api, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = extensions.read_custom_resource_definition(name).status
        if any(c.type == "Established" and c.status == "True" for c in status.conditions or []):
            return
        time.sleep(0.5)
    raise AssertionError(f"CRD {name} not established")


@pytest.fixture(scope="module")
def namespace(api_client: ApiClient, crds: None) -> Iterator[str]:
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"tunefleet-admission-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def create(api_client: ApiClient, namespace: str, document: dict[str, Any]) -> dict[str, Any] | None:
    """The 422 Status of creating ``document``, or None if it was stored (then deleted again)."""
    api = CustomObjectsApi(api_client)
    plural = PLURALS[document["kind"]]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, copy.deepcopy(document))
    except ApiException as error:
        assert error.status == 422, error.body
        status: dict[str, Any] = json.loads(error.body)
        return status
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, document["metadata"]["name"])
    return None


@pytest.mark.parametrize("bad", [*CORPUS, *RULE_EXAMPLES, *GPUBUDGETS], ids=lambda b: b.id)
def test_each_bad_spec_is_refused_naming_its_field(
    api_client: ApiClient, namespace: str, bad: BadSpec
) -> None:
    status = create(api_client, namespace, bad.document)
    if not bad.at_admission:
        assert status is None, f"{bad.id} is refused at admission now: update tests/support/bad_specs.py"
        return
    assert status is not None, f"{bad.id} was accepted"
    causes = status["details"]["causes"]
    assert any(dotted(c["field"]).startswith(bad.field) for c in causes), causes
    # The emulated API server (cluster tier) predicts every field, and each CEL rule's exact words.
    predicted = admission_causes(bad.document, SCHEMAS[bad.kind])
    assert sorted(c["field"] for c in causes) == sorted(c.field for c in predicted)
    for cause in (c for c in predicted if c.rule is not None):
        assert cause.as_status() in causes


def test_the_status_of_a_refused_study_is_what_the_emulator_answers(
    api_client: ApiClient, namespace: str
) -> None:
    document = copy.deepcopy(VALID_STUDY)
    document["spec"]["searchSpace"]["lr"]["high"] = 1.0e-5
    status = create(api_client, namespace, document)
    assert status is not None
    assert status["message"] == (
        'Study.tunefleet.dev "bad-spec" is invalid: spec.searchSpace[lr].high: Invalid value: '
        "high must be greater than or equal to low"
    )
    assert status["details"] == {
        "name": "bad-spec",
        "group": GROUP,
        "kind": "Study",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: high must be greater than or equal to low",
                "field": "spec.searchSpace[lr].high",
            }
        ],
    }


def test_the_largest_spec_the_model_allows_stays_within_the_runtime_cost_budget(
    api_client: ApiClient, namespace: str
) -> None:
    """The estimate only bounds the worst case; the API server also meters each rule as it runs."""
    names = [f"p{i:03d}" + "_" * 60 for i in range(MAX_PARAMETERS)]
    document = copy.deepcopy(VALID_STUDY)
    document["spec"]["searchSpace"] = {name: {"type": "int", "low": 0, "high": 9} for name in names}
    placeholders = "".join(f"{{{{ {name} }}}}" for name in names)
    part = placeholders[: MAX_COMMAND_PART_LENGTH - MAX_COMMAND_PART_LENGTH % (len(names[0]) + 6)]
    document["spec"]["trial"] = {"command": [part] * MAX_COMMAND_PARTS}
    assert create(api_client, namespace, document) is None


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_apply_prints_the_field_and_the_cli_s_message(namespace: str) -> None:
    document = copy.deepcopy(VALID_STUDY)
    document["spec"]["trial"]["command"].append("--wd={{weight_decay}}")
    result = subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", "-"],
        input=yaml.safe_dump(document),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    message = "placeholder {{weight_decay}} names no parameter of searchSpace"
    assert f"spec.trial.command: Invalid value: {message}" in result.stderr
