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
    ("", "services", "create"),  # trial.nodes > 1: a headless Service per trial
    ("", "services", "get"),  # ... and one left by a deleted Study of the same name replaced
    ("", "services", "delete"),
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
def test_secrets_are_never_listed_changed_or_read_but_by_name(
    scenario_objects: Objects, scenario: str
) -> None:
    for role in roles(scenario_objects(scenario)):
        for rule in role["rules"]:
            if "secrets" not in rule["resources"]:
                continue
            assert rule["apiGroups"] == [""] and rule["resources"] == ["secrets"]
            verbs = set(rule["verbs"])
            assert not {"list", "watch", "deletecollection", "update", "patch"} & verbs, rule
            if "delete" in verbs:
                # Only the password Secret earlier versions mirrored into study namespaces.
                assert rule["resourceNames"] == [TRIAL_SECRET] and verbs == {"delete"}, rule
            if "get" in verbs:
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
    # By name: the old mirrored password Secret is deleted, never read.
    assert ("", "secrets", "delete") in grants(cluster_role["rules"], with_names=True)
    assert ("", "secrets", "get") not in grants(cluster_role["rules"], with_names=True)
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
    """The database Secret TUNEFLEET_DB_SECRET names (a rotated password) and the
    spec.storage.secretRef names the values list; nothing else, never a list. In study namespaces
    it creates the trials' gateway Secrets and may delete the password Secret earlier versions
    mirrored there, but can no longer read or write it: trial pods get no password."""
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
        assert may("delete", study_namespace, TRIAL_SECRET)
        for verb in ("get", "update", "patch"):
            assert not may(verb, study_namespace, TRIAL_SECRET)
        assert may("create", study_namespace, None)  # <job>-gateway, per trial
        assert not may("delete", study_namespace, "someone-elses")
        assert not may("delete", RELEASE_NAMESPACE, db_secret)
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
        name
        for r in default["rules"]
        if "secrets" in r["resources"] and "get" in r["verbs"]
        for name in r.get("resourceNames", [])
    }
    assert readable == set()


# -- rights for people: aggregated into Kubernetes' built-in view, edit and admin ----------------

AGGREGATE_LABEL = "rbac.authorization.k8s.io/aggregate-to-{}"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
# What the built-in roles fold in: edit carries view's rules, admin carries edit's.
BUILT_IN_CHAIN = {"view": ("view",), "edit": ("view", "edit"), "admin": ("view", "edit", "admin")}


def aggregated_roles(objects: list[Manifest]) -> list[Manifest]:
    return [
        o
        for o in objects
        if o["kind"] == "ClusterRole"
        and any(key.startswith(AGGREGATE_LABEL.format("")) for key in o["metadata"].get("labels", {}))
    ]


def built_in_role(objects: list[Manifest], name: str) -> Manifest:
    """The built-in ClusterRole ``name`` as the aggregation controller fills it from the chart's roles."""
    rules = [
        rule
        for role in aggregated_roles(objects)
        if any(
            role["metadata"]["labels"].get(AGGREGATE_LABEL.format(x)) == "true" for x in BUILT_IN_CHAIN[name]
        )
        for rule in role["rules"]
    ]
    return {"kind": "ClusterRole", "metadata": {"name": name}, "rules": rules}


def holder_of(objects: list[Manifest], built_in: str, namespace: str) -> Authorizer:
    """RBAC where user alice holds the built-in role in ``namespace`` (a RoleBinding, as usual)."""
    binding = {
        "kind": "RoleBinding",
        "metadata": {"name": f"alice-{built_in}", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": built_in},
        "subjects": [{"kind": "User", "name": "alice"}],
    }
    return Authorizer([built_in_role(objects, built_in), binding])


ALICE = Subject("alice")


def test_aggregated_roles_carry_the_aggregation_labels(scenario_objects: Objects) -> None:
    objects = scenario_objects("default")
    for built_in in BUILT_IN_CHAIN:
        role = one(objects, "ClusterRole", f"{RELEASE}-tunefleet-{built_in}")
        assert role["metadata"]["labels"][AGGREGATE_LABEL.format(built_in)] == "true"
        assert {rule["apiGroups"][0] for rule in role["rules"]} == {"tunefleet.dev"}
    assert len(aggregated_roles(objects)) == 3
    # Nobody is bound to them by the chart: the built-in roles carry them to whoever holds those.
    bound = {o["roleRef"]["name"] for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")}
    assert not bound & {o["metadata"]["name"] for o in aggregated_roles(objects)}


@pytest.mark.parametrize("built_in", ["edit", "admin"])
def test_a_namespace_editor_manages_studies_and_only_reads_budgets(
    scenario_objects: Objects, built_in: str
) -> None:
    authorizer = holder_of(scenario_objects("default"), built_in, "team-a")

    def may(verb: str, resource: str, namespace: str = "team-a", subresource: str | None = None) -> bool:
        return authorizer.allows(
            ALICE, Request(verb, "tunefleet.dev", resource, namespace, None, subresource)
        )

    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert may(verb, "studies"), verb
        assert not may(verb, "studies", namespace="team-b"), verb  # only where the role is held
    for verb in ("get", "list", "watch"):
        assert may(verb, "gpubudgets")
    for verb in WRITE_VERBS:
        assert not may(verb, "gpubudgets"), verb
        assert not may(verb, "gpubudgets", subresource="status"), verb
        assert not may(verb, "studies", subresource="status"), verb  # the controller's to write


def test_a_viewer_reads_studies_and_budgets_and_changes_nothing(scenario_objects: Objects) -> None:
    authorizer = holder_of(scenario_objects("default"), "view", "team-a")
    for resource in ("studies", "gpubudgets"):
        for verb in ("get", "list", "watch"):
            assert authorizer.allows(ALICE, Request(verb, "tunefleet.dev", resource, "team-a"))
        for verb in WRITE_VERBS:
            assert not authorizer.allows(ALICE, Request(verb, "tunefleet.dev", resource, "team-a"))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_aggregated_role_writes_a_gpu_budget(scenario_objects: Objects, scenario: str) -> None:
    """Budgets are what the product enforces: only cluster admins set them."""
    for role in aggregated_roles(scenario_objects(scenario)):
        for rule in role["rules"]:
            budgets = {r for r in rule["resources"] if r.split("/")[0] == "gpubudgets"}
            assert not (budgets and WRITE_VERBS & set(rule["verbs"])), (role["metadata"]["name"], rule)


def test_aggregated_roles_can_be_left_out(render: Callable[..., list[Manifest]]) -> None:
    assert aggregated_roles(render({"rbac": {"aggregateToDefaultRoles": False}})) == []
    assert find(render({"rbac": {"aggregateToDefaultRoles": False}}), "ClusterRole", CONTROLLER_ROLE)
