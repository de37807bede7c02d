"""Reading a multi-node trial's pods together: when no pod of it can still run or be billed."""

from __future__ import annotations

from controller.kube.observe import ClusterView, job_finished


def all_pods_done(view: ClusterView, number: int, nodes: int) -> bool:
    """Every pod of the trial has finished, and no other will start for it.

    Only then is the trial's reservation released: until its last pod is billed, its room stays
    reserved, so the budget holds while some ranks still run. No other pod starts once the Job
    has finished or is gone, or once all ``nodes`` pods have been seen (an Indexed Job creates
    them together and, with ``backoffLimit: 0``, replaces none); the Job's own status may lag
    behind its pods.
    """
    pods = view.pods.get(number, [])
    if not all(outcome.kind == "finished" for outcome in pods):
        return False
    job = view.jobs.get(number)
    if job is None or job_finished(job) or (job.get("metadata") or {}).get("deletionTimestamp"):
        return True
    return len(pods) >= nodes
