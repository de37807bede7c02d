"""Reading a multi-node trial's pods together: when no pod of it can still run or be billed."""

from __future__ import annotations

from controller.kube.observe import ClusterView, job_finished


def all_pods_done(view: ClusterView, number: int) -> bool:
    """Every pod of the trial has finished and its Job (if still there) will start no other.

    Only then is the trial's reservation released: until the last pod is billed, its room stays
    reserved, so the budget holds even while some ranks still run.
    """
    job = view.jobs.get(number)
    if job is not None and not job_finished(job) and not (job.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return all(outcome.kind == "finished" for outcome in view.pods.get(number, []))
