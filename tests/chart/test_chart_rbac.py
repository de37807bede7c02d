"""RBAC is least privilege: no wildcards, secrets by name only, trial pods with no rights at all,
and exactly the rights the controller needs in cluster-wide and per-namespace mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.chart.chart_support import (
    RELEASE,
    RELEASE_NAMESPACE,
    SCENARIOS,
    TRIAL_SECRET,
    TRIAL_SERVICE_ACCOUNT,
    Manifest,
    controller_deployment,
    env_of,
    find,
    one,
    pod_spec,
)
from tests.support.rbac import Authorizer, Request, Subject

pytestmark = pytest.mark.chart

Objects = Callable[[str], list[Manifest]]
Rule = dict[str, list[str]]
CONTROLLER_ROLE = f"{RELEASE}-tunefleet-controller"
CONTROLLER = Subject.service_account(RELEASE_NAMESPACE, f"{RELEASE}-tunefleet-controller")

# (apiGroup, resource, verb) the controller needs in every namespace it serves.
NEEDED_IN_STUDY_NAMESPACES = {
    *(
        (group, resource, verb)
        for group, resource in [("tunefleet.dev", "studies"), ("tunefleet.dev", "gpubudgets")]
        for verb in ("get", "list", "watch", "patch", "update")
    ),
    *(
        ("tunefleet.dev", f"{kind}/status", verb)
        for kind in ("studies", "gpubudgets")
        for verb in ("patch", "update")
    ),
    *(("batch", "jobs", verb) for verb in ("get", "list", "watch", "create", "delete", "patch")),
    *(("", "pods", verb) for verb in ("get", "list", "watch", "patch", "update", "delete")),
    ("", "pods/log", "get"),  # the first failed trial's log, when failures stop a study
    ("", "events", "create"),
    ("events.k8s.io", "events", "create"),
    *(("", "configmaps", verb) for verb in ("get", "create", "update", "patch")),
    ("", "serviceaccounts", "get"),
    ("", "serviceaccounts", "create"),
    ("", "secrets", "create"),
}
NEEDED_CLUSTER_WIDE = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}


def roles(objects: list[Manifest]) -> Iterator[Manifest]:
    yield from (o for o in objects if o["kind"] in ("Role", "ClusterRole"))


def grants(rules: list[Rule], with_names: bool = False) -> set[tuple[str, str, str]]:
    """(group, resource, verb) triples the rules grant without restriction to resourceNames."""
    return {
        (group, resource, verb)
        for rule in rules
        if with_names or not rule.get("resourceNames")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_wildcards_anywhere(scenario_objects: Objects, scenario: str) -> None:
    for role in roles(scenario_objects(scenario)):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in value for value in rule.get(field, [])), (role, rule)
            assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_secrets_are_read_only_by_name_and_never_listed(scenario_objects: Objects, scenario: str) -> None:
    for role in roles(scenario_objects(scenario)):
        for rule in role["rules"]:
            if "secrets" not in rule["resources"]:
                continue
            assert rule["apiGroups"] == [""] and rule["resources"] == ["secrets"]
            assert not {"list", "watch", "deletecollection", "delete"} & set(rule["verbs"]), rule
            if set(rule["verbs"]) - {"create", "get"}:
                # update/patch reach only the credentials Secret the controller mirrors.
                assert rule["resourceNames"] == [TRIAL_SECRET], rule
            if "get" in rule["verbs"]:
                assert rule.get("resourceNames"), rule  # reads by name only


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_trial_service_account_is_bound_to_nothing(scenario_objects: Objects, scenario: str) -> None:
    for binding in scenario_objects(scenario):
        if binding["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            names = {subject["name"] for subject in binding["subjects"]}
            assert TRIAL_SERVICE_ACCOUNT not in names, binding["metadata"]


def test_cluster_wide_mode_grants_the_controller_what_it_needs(scenario_objects: Objects) -> None:
    objects = scenario_objects("default")
    cluster_role = one(objects, "ClusterRole", CONTROLLER_ROLE)
    granted = grants(cluster_role["rules"])
    assert granted >= NEEDED_IN_STUDY_NAMESPACES | NEEDED_CLUSTER_WIDE
    assert ("", "secrets", "get") in grants(cluster_role["rules"], with_names=True)
    # The only Role: reading the database Secret in the release namespace.
    assert [r["metadata"]["name"] for r in find(objects, "Role")] == [f"{CONTROLLER_ROLE}-database"]
    binding = one(objects, "ClusterRoleBinding", CONTROLLER_ROLE)
    controller_account = pod_spec(controller_deployment(objects))["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": controller_account, "namespace": RELEASE_NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == CONTROLLER_ROLE


def test_namespaced_mode_keeps_namespaced_rights_inside_the_watched_namespaces(
    scenario_objects: Objects,
) -> None:
    objects = scenario_objects("watch-namespaces")
    cluster_role = one(objects, "ClusterRole", CONTROLLER_ROLE)
    assert grants(cluster_role["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("get", "list", "watch")
    }
    namespaced_roles = find(objects, "Role", CONTROLLER_ROLE)
    assert sorted(r["metadata"]["namespace"] for r in namespaced_roles) == ["team-a", "team-b"]
    for role in namespaced_roles:
        assert grants(role["rules"]) >= NEEDED_IN_STUDY_NAMESPACES
    bindings = find(objects, "RoleBinding", CONTROLLER_ROLE)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": CONTROLLER_ROLE,
        }
        assert binding["subjects"][0]["namespace"] == RELEASE_NAMESPACE


@pytest.mark.parametrize(
    ("scenario", "kind", "resource"),
    [
        ("replicas-2", "ClusterRole", "clusterkopfpeerings"),
        ("replicas-2-watch-namespaces", "Role", "kopfpeerings"),
    ],
)
def test_peering_rights_only_with_several_replicas(
    scenario_objects: Objects, scenario: str, kind: str, resource: str
) -> None:
    for role in find(scenario_objects(scenario), kind, CONTROLLER_ROLE):
        assert ("kopf.dev", resource, "patch") in grants(role["rules"])
    for role in roles(scenario_objects("default")):
        assert not any("kopf.dev" in rule["apiGroups"] for rule in role["rules"])


def test_rbac_can_be_left_to_the_platform_team(render: Callable[..., list[Manifest]]) -> None:
    objects = render({"rbac": {"create": False}})
    assert not [
        o for o in objects if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ]


@pytest.mark.parametrize(
    ("scenario", "study_namespace"),
    [("default", "team-x"), ("external-database", "team-x"), ("watch-namespaces", "team-a")],
)
def test_the_controller_reads_exactly_the_secrets_it_uses(
    scenario_objects: Objects, render: Callable[..., list[Manifest]], scenario: str, study_namespace: str
) -> None:
    """The database Secret TUNEFLEET_DB_SECRET names (a rotated password), the mirrored
    credentials, and spec.storage.secretRef names the values list; nothing else, never a list."""
    values = {**SCENARIOS[scenario], "rbac": {"storageSecretNames": ["team-db"]}}
    for objects, may_use_team_db in ((scenario_objects(scenario), False), (render(values), True)):
        container = pod_spec(controller_deployment(objects))["containers"][0]
        db_secret = env_of(container)["TUNEFLEET_DB_SECRET"]
        authorizer = Authorizer(objects)

        def may(verb: str, namespace: str, name: str | None, authorizer: Authorizer = authorizer) -> bool:
            return authorizer.allows(CONTROLLER, Request(verb, "", "secrets", namespace, name))

        assert may("get", RELEASE_NAMESPACE, db_secret)
        assert not may("get", RELEASE_NAMESPACE, "someone-elses")
        assert not may("get", study_namespace, db_secret)
        for verb in ("get", "update", "patch"):
            assert may(verb, study_namespace, TRIAL_SECRET)
        assert may("create", study_namespace, None)
        assert may("get", study_namespace, "team-db") is may_use_team_db
        assert not may("update", study_namespace, "team-db")
        assert not may("get", study_namespace, "someone-elses")
        for namespace in (RELEASE_NAMESPACE, study_namespace):
            assert not may("list", namespace, None) and not may("watch", namespace, None)


def test_mlflow_credential_secrets_are_readable_by_name_only_when_named(
    render: Callable[..., list[Manifest]],
) -> None:
    named = one(render({"rbac": {"trackingSecretNames": ["mlflow-login"]}}), "ClusterRole", CONTROLLER_ROLE)
    tracking_rules = [r for r in named["rules"] if r.get("resourceNames") == ["mlflow-login"]]
    assert tracking_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mlflow-login"], "verbs": ["get"]}
    ]
    default = one(render({}), "ClusterRole", CONTROLLER_ROLE)
    readable = {
        name for r in default["rules"] if "secrets" in r["resources"] for name in r.get("resourceNames", [])
    }
    assert readable == {TRIAL_SECRET}
