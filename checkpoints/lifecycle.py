"""Apply the S3 saver's lifecycle policy to a source's bucket, previewed and audited.

A lifecycle rule deletes or archives checkpoints without the console or the
agents doing anything, so it is treated like a prune: a preview (a dry run
that reads the bucket's configuration and says which of the saver's rules
would be added, changed or removed), a confirmation, then the real run, each
a Run in the audit log. Only kinds with a `lifecycle` capability (the S3
kind; docs/architecture.md, "Source kinds") can; the policy's options are
checkpoints.s3layout.lifecycle_rules'.
"""

from checkpoints import s3layout
from checkpoints.jobs import LIFECYCLE
from checkpoints.runs import RunBusy, finish_run, start_run
from checkpoints.sources import SourceError
from checkpoints.sources.registry import for_source


class LifecycleRefused(Exception):
    """The source cannot take a lifecycle policy, or the policy is bad; nothing was started."""


class LifecycleBusy(Exception):
    pass


def policy_from_parameters(parameters: dict) -> dict:
    """The lifecycle_rules options of a run's parameters; LifecycleRefused when they are bad.

    >>> policy_from_parameters({"expire_days": 30, "archive_storage_class": "GLACIER", "preview_run": 3})
    {'expire_days': 30, 'archive_days': None, 'intelligent_tiering_days': None, 'changes_expire_days': None, 'abort_multipart_days': None, 'archive_storage_class': 'GLACIER'}
    >>> policy_from_parameters({"expire_days": 1, "archive_days": 5})
    Traceback (most recent call last):
    ...
    checkpoints.lifecycle.LifecycleRefused: archive_days=5 must be fewer than expire_days=1
    """
    policy = {key: parameters.get(key) for key in s3layout.LIFECYCLE_OPTIONS}
    policy["archive_storage_class"] = parameters.get("archive_storage_class") or "GLACIER"
    try:
        s3layout.lifecycle_rules("", **policy)
    except (TypeError, ValueError) as e:
        raise LifecycleRefused(str(e)) from None
    return policy


def lifecycle_of(source):
    """The source kind's Lifecycle for this source; LifecycleRefused for a kind without one."""
    kind = for_source(source)
    if not hasattr(kind, "lifecycle"):
        raise LifecycleRefused(f"{source.name} is a {source.kind} source: only an S3 store has a lifecycle policy")
    return kind.lifecycle(source.url)


def run_lifecycle(source, parameters, *, dry_run, requested_by=None, origin="command", run=None):
    """Preview (dry_run) or apply the saver's lifecycle policy for `source` under a Run; returns the
    finished Run (result: checkpoints.sources.kind.Lifecycle.plan's report). Raises LifecycleRefused
    (bad source or policy) and LifecycleBusy (another one of this source is running) before starting."""
    policy = policy_from_parameters(parameters)
    lifecycle = lifecycle_of(source)
    try:
        run = start_run(LIFECYCLE, source, parameters=parameters, requested_by=requested_by, origin=origin,
                        dry_run=dry_run, run=run)
    except RunBusy:
        raise LifecycleBusy(f"a lifecycle change of {source.name} is already running") from None
    try:
        result = lifecycle.plan(policy) if dry_run else lifecycle.apply(policy)
    except SourceError as e:
        return finish_run(run, result={}, error=str(e))
    except Exception as e:
        finish_run(run, result={}, error=f"{type(e).__name__}: {e}")
        raise
    result.pop("_rules", None)
    return finish_run(run, result=result)
