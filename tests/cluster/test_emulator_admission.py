"""The emulated API server refuses a bad Study or GPUBudget at once, as a real one does with the
generated CRDs: 422 ``Invalid``, one cause per refused field, and the CEL rule's message, which is
the message of ``tunefleet validate``."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiClient, ApiException, CustomObjectsApi

from controller.kube.crd import build_crds
from tests.cluster.emulator import KubeEmulator
from tests.support.bad_specs import CORPUS, GPUBUDGETS, VALID_STUDY, BadSpec, dotted

pytestmark = pytest.mark.timeout(60)

GROUP, VERSION = "tunefleet.dev", "v1alpha1"
PLURALS = {"Study": "studies", "GPUBudget": "gpubudgets"}


def create(api: CustomObjectsApi, document: dict[str, object]) -> dict[str, object]:
    plural = PLURALS[str(document["kind"])]
    return dict(api.create_namespaced_custom_object(GROUP, VERSION, "default", plural, document))


def test_the_corpus_is_refused_at_admission_with_the_cli_s_words(
    kube_emulator: KubeEmulator, kube_client: ApiClient
) -> None:
    kube_emulator.api.apply_crds(build_crds())
    api = CustomObjectsApi(kube_client)
    accepted: list[str] = []
    for bad in [*CORPUS, *GPUBUDGETS]:
        try:
            create(api, bad.document)
        except ApiException as error:
            assert bad.at_admission, f"{bad.id} was refused: {error.body}"
            assert_refused(bad, error)
            continue
        assert not bad.at_admission, f"{bad.id} was accepted"
        accepted.append(bad.id)
        api.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURALS[bad.kind], "bad-spec")
    assert accepted == ["condition-unknown-parameter", "condition-value-not-a-choice"]


def assert_refused(bad: BadSpec, error: ApiException) -> None:
    status = json.loads(error.body)
    assert (error.status, status["reason"]) == (422, "Invalid")
    name = bad.document["metadata"]["name"]
    assert status["message"].startswith(f'{bad.kind}.{GROUP} "{name}" is invalid: ')
    causes = status["details"]["causes"]
    assert any(dotted(c["field"]).startswith(bad.field) for c in causes), (bad.id, causes)


def test_a_cross_field_rule_answers_like_the_real_api_server(
    kube_emulator: KubeEmulator, kube_client: ApiClient
) -> None:
    kube_emulator.api.apply_crds(build_crds())
    api = CustomObjectsApi(kube_client)
    document = json.loads(json.dumps(VALID_STUDY))
    document["spec"]["searchSpace"]["lr"]["high"] = 1.0e-5
    with pytest.raises(ApiException) as caught:
        create(api, document)
    # What kube-apiserver 1.36 answered for this document (tests/real_cluster/test_admission_real.py).
    assert json.loads(caught.value.body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Study.tunefleet.dev "bad-spec" is invalid: spec.searchSpace[lr].high: Invalid value: '
        "high must be greater than or equal to low",
        "reason": "Invalid",
        "details": {
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
        },
        "code": 422,
    }


def test_an_update_is_checked_too_unless_it_leaves_the_spec_as_it_was(
    kube_emulator: KubeEmulator, kube_client: ApiClient
) -> None:
    kube_emulator.api.apply_crds(build_crds())
    api = CustomObjectsApi(kube_client)
    create(api, VALID_STUDY)
    patch = {"spec": {"objective": {"goal": 0.1, "metrics": [
        {"name": "loss", "direction": "minimize"}, {"name": "latency", "direction": "minimize"}]}}}
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(GROUP, VERSION, "default", "studies", "bad-spec", patch)
    assert caught.value.status == 422
    assert "goal applies to single-objective studies only" in json.loads(caught.value.body)["message"]
    labelled = api.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "studies", "bad-spec", {"metadata": {"labels": {"team": "a"}}}
    )
    assert labelled["metadata"]["labels"] == {"team": "a"}
