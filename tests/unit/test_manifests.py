"""Trial Jobs, built without I/O, compared by value and validated against Kubernetes 1.33."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from controller.kube.commands import (
    DEADLINE_GRACE_ENV,
    render_objects,
    split_password,
    trial_settings_from_env,
)
from controller.kube.manifests import (
    ACCOUNTING_FINALIZER,
    TERMINATION_GRACE_SECONDS,
    StudyRef,
    TrialPodSettings,
    build_assignment,
    db_credentials_secret,
    termination_grace,
    trial_job,
    trial_service_account,
)
from controller.spec import StudySpec, load_study_file
from trial_worker.contract import ASSIGNMENT_ENV, DB_PASSWORD_ENV, Assignment, PrunerConfig

K8S_VERSION = "1.33"
STORAGE = "postgresql+psycopg2://tunefleet@db:5432/tunefleet"
REF = StudyRef("mlp", "team-a", "0b7c1c5e-0000-4000-8000-000000000001")


def _spec(**trial: Any) -> StudySpec:
    return StudySpec.model_validate(
        {
            "objective": {"metrics": [{"name": "acc", "direction": "maximize"}]},
            "searchSpace": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
            "trial": {
                "python": "pkg.train:objective",
                "gpus": 2,
                "cpus": 1.5,
                "memory": "8Gi",
                "maxDuration": "1h",
                **trial,
            },
        }
    )


def _job(spec: StudySpec, number: int = 3) -> dict[str, Any]:
    assignment = build_assignment(spec, REF, number, 1234, STORAGE, PrunerConfig(name="median"))
    return trial_job(spec, REF, assignment)


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def _trial_container(job: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in _pod(job)["containers"] if c["name"] == "trial")


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_trial_job_validates_against_the_kubernetes_schema() -> None:
    _validate(_job(_spec()))


def test_the_job_is_named_labelled_and_owned_by_its_study() -> None:
    job = _job(_spec(), number=3)
    meta = job["metadata"]
    assert meta["name"] == "mlp-t3"
    assert meta["labels"]["tunefleet.dev/study"] == "mlp"
    assert meta["labels"]["tunefleet.dev/trial"] == "3"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Study",
        "mlp",
        REF.uid,
        True,
    )
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod_meta = job["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["tunefleet.dev/trial"] == "3"
    assert pod_meta["finalizers"] == [ACCOUNTING_FINALIZER]


def test_the_pod_is_restricted_and_has_no_token() -> None:
    pod = _pod(_job(_spec()))
    assert pod["restartPolicy"] == "Never"
    assert pod["activeDeadlineSeconds"] >= 3600
    assert pod["serviceAccountName"] == "tunefleet-trial"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = _trial_container(_job(_spec()))["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_gpus_become_limits_and_cpu_memory_requests() -> None:
    resources = _trial_container(_job(_spec()))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["cpu"] == "1500m"
    assert resources["requests"]["memory"] == "8Gi"
    cpu_only = _trial_container(_job(_spec(gpus=0)))["resources"]
    assert "nvidia.com/gpu" not in cpu_only.get("limits", {})


def test_the_assignment_is_in_the_env_and_the_password_only_in_a_secret_ref() -> None:
    container = _trial_container(_job(_spec()))
    env = {e["name"]: e for e in container["env"]}
    assignment = Assignment.model_validate_json(env[ASSIGNMENT_ENV]["value"])
    assert assignment.trial_number == 3
    assert assignment.study_name == "team-a/mlp"
    assert assignment.seed == 1234
    assert assignment.max_duration_s == 3600
    assert assignment.storage_url == STORAGE
    assert env[DB_PASSWORD_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "tunefleet-db-credentials",
        "key": "password",
    }
    assert container["command"] == ["tunefleet-worker"]


def test_the_template_keeps_user_fields_but_cannot_loosen_the_controls() -> None:
    template = {
        "metadata": {"labels": {"team": "vision", "tunefleet.dev/trial": "999"}, "annotations": {"a": "b"}},
        "spec": {
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
            "restartPolicy": "Always",
            "automountServiceAccountToken": True,
            "serviceAccountName": "admin",
            "hostNetwork": True,
            "securityContext": {"runAsNonRoot": False, "runAsUser": 0, "fsGroup": 1000},
            "containers": [
                {
                    "name": "trial",
                    "image": "ignored:when-trial-image-set",
                    "command": ["sh", "-c", "evil"],
                    "env": [
                        {"name": "WANDB_MODE", "value": "offline"},
                        {"name": DB_PASSWORD_ENV, "value": "leaked"},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "securityContext": {"privileged": True, "allowPrivilegeEscalation": True},
                    "resources": {"limits": {"nvidia.com/gpu": "8"}},
                },
                {"name": "sidecar", "image": "busybox", "securityContext": {"privileged": True}},
            ],
        },
    }
    job = _job(_spec(template=template, image="ghcr.io/acme/train:1.4"))
    _validate(job)
    pod = _pod(job)
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "vision"
    assert meta["labels"]["tunefleet.dev/trial"] == "3"
    assert meta["annotations"] == {"a": "b"}
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["volumes"][0]["name"] == "data"
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "tunefleet-trial"
    assert "hostNetwork" not in pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "runAsUser" not in pod["securityContext"]
    assert pod["securityContext"]["fsGroup"] == 1000
    trial = _trial_container(job)
    assert trial["image"] == "ghcr.io/acme/train:1.4"
    assert trial["command"] == ["tunefleet-worker"]
    env = {e["name"]: e for e in trial["env"]}
    assert env["WANDB_MODE"]["value"] == "offline"
    assert "value" not in env[DB_PASSWORD_ENV]
    assert trial["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert trial["securityContext"]["privileged"] is False
    assert trial["securityContext"]["allowPrivilegeEscalation"] is False
    assert trial["resources"]["limits"]["nvidia.com/gpu"] == "2"
    sidecar = next(c for c in pod["containers"] if c["name"] == "sidecar")
    assert sidecar["securityContext"]["privileged"] is False


def test_namespace_objects_validate() -> None:
    account = trial_service_account("team-a")
    assert account["automountServiceAccountToken"] is False
    _validate(account)
    secret = db_credentials_secret("team-a", "pw", TrialPodSettings())
    assert secret["metadata"]["name"] == "tunefleet-db-credentials"
    _validate(secret)


@pytest.mark.parametrize(
    "path",
    [
        "examples/cluster-gpu-study.yaml",
        "examples/quickstart/study.yaml",
        "examples/multi-objective.yaml",
        "examples/pbt/study.yaml",  # mounts its checkpoint claim
    ],
)
def test_render_of_every_example_validates_and_carries_no_password(path: str) -> None:
    manifest = load_study_file(path)
    objects = render_objects(
        manifest, None, 0, "postgresql+psycopg2://u:hunter2@db/x", include_namespace_objects=True
    )
    for obj in objects:
        _validate(obj)
    assert "hunter2" not in json.dumps(objects[0])


def test_split_password_moves_the_password_out_of_the_url() -> None:
    assert split_password("postgresql+psycopg2://u:p%40ss@db:5432/x") == (
        "postgresql+psycopg2://u@db:5432/x",
        "p@ss",
    )
    assert split_password("postgresql+psycopg2://u@db/x") == ("postgresql+psycopg2://u@db/x", None)
    assert split_password("sqlite:///tmp/x.db") == ("sqlite:///tmp/x.db", None)


def test_tunefleet_render_prints_the_job_offline(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from controller.cli import main

    assert main(["render", "examples/cluster-gpu-study.yaml", "--trial", "5"]) == 0
    (job,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert job["metadata"]["name"] == "quickstart-gpu-t5"
    _validate(job)


def test_tunefleet_render_refuses_a_malformed_deadline_grace_by_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.cli import main

    monkeypatch.setenv(DEADLINE_GRACE_ENV, "soon")
    assert main(["render", "examples/cluster-gpu-study.yaml", "--trial", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{DEADLINE_GRACE_ENV} must be a whole number of seconds >= 1, got 'soon'" in captured.err


def test_a_queue_name_puts_the_job_in_that_kueue_local_queue() -> None:
    queued = _job(_spec(queueName="team-a-gpus"))
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert "kueue.x-k8s.io/queue-name" not in queued["spec"]["template"]["metadata"]["labels"]
    _validate(queued)
    assert "kueue.x-k8s.io/queue-name" not in _job(_spec())["metadata"]["labels"]


def _export_spec(path: str = "runs/mlp") -> StudySpec:
    document = _spec(image="ghcr.io/acme/train:1.4").model_dump(mode="json", exclude_none=True)
    document["export"] = {"persistentVolumeClaim": "results", "path": path}
    return StudySpec.model_validate(document)


def test_the_export_job_mounts_the_claim_and_writes_the_path_asked_for() -> None:
    from controller.kube.manifests import export_job

    job = export_job(_export_spec(), REF, STORAGE)
    _validate(job)
    pod = _pod(job)
    container = pod["containers"][0]
    assert container["command"] == [
        "tunefleet",
        "export",
        "--storage",
        STORAGE,
        "--study",
        "team-a/mlp",
        "--out",
        "/tunefleet-export/runs/mlp",
    ]
    assert container["image"] == "ghcr.io/acme/train:1.4"
    assert pod["volumes"] == [{"name": "export", "persistentVolumeClaim": {"claimName": "results"}}]
    assert container["volumeMounts"] == [{"name": "export", "mountPath": "/tunefleet-export"}]
    assert job["metadata"]["name"] == "mlp-export"
    assert job["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    # Never mistaken for a trial: no study or trial label.
    assert "tunefleet.dev/study" not in job["metadata"]["labels"]
    assert "tunefleet.dev/trial" not in pod.get("metadata", {}).get("labels", {})
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    password = next(e for e in container["env"] if e["name"] == DB_PASSWORD_ENV)
    assert password["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert "not-a-secret" not in json.dumps(job)


def test_an_export_path_leaving_the_volume_is_refused_naming_the_field() -> None:
    from controller.kube.manifests import export_job

    with pytest.raises(ValueError, match=r"export\.path"):
        export_job(_export_spec("../../etc"), REF, STORAGE)
    with pytest.raises(ValueError, match=r"spec\.export"):
        export_job(_spec(), REF, STORAGE)


def test_a_longer_termination_grace_in_the_template_is_kept_and_reserved() -> None:
    spec = _spec(template={"spec": {"terminationGracePeriodSeconds": 300}})
    assert termination_grace(spec) == 300
    assert _job(spec)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    default = _spec()
    assert termination_grace(default) == TERMINATION_GRACE_SECONDS
    assert (
        _job(default)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        == TERMINATION_GRACE_SECONDS
    )


def test_the_pod_deadline_is_max_duration_plus_the_grace_the_controller_is_given() -> None:
    spec = _spec()
    assignment = build_assignment(spec, REF, 3, 1234, STORAGE, PrunerConfig(name="median"))
    assert _pod(trial_job(spec, REF, assignment))["activeDeadlineSeconds"] == 3600 + 30
    settings = trial_settings_from_env({DEADLINE_GRACE_ENV: "5"})
    assert _pod(trial_job(spec, REF, assignment, settings))["activeDeadlineSeconds"] == 3605


@pytest.mark.parametrize("raw", ["0", "-3", "ten", "1.5"])
def test_a_malformed_deadline_grace_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=f"{DEADLINE_GRACE_ENV} must be a whole number of seconds >= 1"):
        trial_settings_from_env({DEADLINE_GRACE_ENV: raw})
