"""The jobs the console runs, described once (docs/architecture.md §7, "Jobs").

Every kind of Run (sync, prune, sweep, reference check, source removal) has
one `Job` here: its label, how long the history keeps it, the plain function
that runs it and the command around that function, what the maintenance page
lets an operator do with it (a preview form, a confirmation, a saved policy),
the counts a run shows in the history and on its page, and what a real run is
compared on with the preview it confirmed. The model's choices, the history's
retention, the maintenance views, the task queue, the run page and its
template all read it; none of them compares a kind with a string of its own.

This module is pure data and imports nothing of the console, so every app can
import it (dashboard → storage → checkpoints). Code of the upper apps (a
runner in storage, a form or a queue entry point in the dashboard) is named by
its dotted path, the way django-q2 names its tasks, and imported only by the
caller that runs it: nothing in `checkpoints` ever imports or calls it.
"""

from dataclasses import dataclass

# The kinds, as a Run row stores them. A runner passes its own to start_run().
SYNC, PRUNE, SWEEP, REFCHECK, REMOVE, LIFECYCLE = "sync", "prune", "sweep", "refcheck", "remove", "lifecycle"


@dataclass(frozen=True)
class Param:
    """One parameter of a run as an operator would say it, and the form field that sets it.

    `text` takes the value at "{}"; a `flag` is said (and sent as "on") only
    when true; `many` is a list said item by item and sent one a line.
    `default` stands in for a missing value (said as "?" when None); an
    `optional` value that is missing is not said at all.
    """

    key: str
    text: str = "{}"
    default: object = None
    flag: bool = False
    many: bool = False
    optional: bool = False

    def words(self, parameters: dict) -> list:
        """What the run's description says for this parameter.

        >>> Param("keep_last", "keep last {}", default=1).words({}), Param("grace", "grace {}").words({})
        (['keep last 1'], ['grace ?'])
        >>> Param("expire_days", "expire after {} days", optional=True).words({"expire_days": None})
        []
        >>> Param("force", "force", flag=True).words({"force": False}), Param("tags", many=True).words({"tags": ["a:b"]})
        ([], ['a:b'])
        """
        value = parameters.get(self.key)
        if self.flag:
            return [self.text] if value else []
        if self.optional and value in (None, ""):
            return []
        if self.many:
            return [str(v) for v in value or ()]
        return [self.text.format("?" if value is None and self.default is None else
                                 self.default if value is None else value)]

    def field(self, prefix: str, parameters: dict) -> list:
        """(name, value) of the form field that asks for this value again (none for a false flag).

        >>> Param("tags", many=True).field("prune", {"tags": ["a:b", "c=d"]})
        [('prune-tags', 'a:b\\nc=d')]
        >>> Param("older_than", "older than {}").field("prune", {}), Param("threads", flag=True).field("prune", {})
        ([('prune-older_than', '')], [])
        """
        name, value = f"{prefix}-{self.key}", parameters.get(self.key)
        if self.flag:
            return [(name, "on")] if value else []
        if self.many:
            return [(name, "\n".join(value or ()))]
        return [(name, self.default if value is None and self.default is not None else "" if value is None else value)]


@dataclass(frozen=True)
class Figure:
    """One figure of a finished run's page (a tile of its result).

    `unit` is "count", "bytes" or "items" (the result holds a list: its
    length). `dry_label` replaces the label in a preview. The hint below the
    value is `hint` with "{}" replaced by the result's `hint_key` (shown in
    `hint_unit`); `hint_when` is "set" (only when that value is truthy) or
    "real" (only in a real run). `alert` highlights a non-zero value.
    """

    key: str
    label: str
    unit: str = "count"
    dry_label: str = ""
    hint: str = ""
    hint_key: str = ""
    hint_unit: str = "count"
    hint_when: str = ""
    alert: bool = False


@dataclass(frozen=True)
class Job:
    """One kind of Run.

    - `label`: the kind as pages say it (also the model's choice label).
    - `routine`: kept RUN_KEEP_DAYS in the history; otherwise the job is part
      of the audit log, kept AUDIT_KEEP_DAYS.
    - `runner`: dotted path of the plain function that does the work, which
      `command` (a management command) calls too.
    - `queued`: dotted path of the function the task queue calls with a queued
      Run of this kind (`dashboard.tasks.run_queued`), or "" when the queue
      never runs it (a sync and a reference check have their own schedules).
    - `form`: dotted path of the form the maintenance page previews it with;
      "" when the page cannot ask for it. A job with a form is previewed as a
      dry run, confirmed from that preview and can be saved as a policy; its
      form's prefix, its preview route (`maintenance-<kind>-preview`) and its
      fields are named after the kind and its `params`.
    - `needs_source`: it runs on one source, which must still exist to run.
    - `preview_clock`: a preview records the `now` it counted back from, and
      the run confirmed from it reuses it (prune's age cut).
    - `params`: its parameters, in the order descriptions say them.
    - `counts`: (result key, label) of the history table; `listed` names a
      list in the result whose length follows them. No counts: the first four
      integers of the result.
    - `freed`: the result key of the bytes it frees (the history's Bytes).
    - `figures`: the tiles of a finished run's page.
    - `compared`: (result key, label) a real run and its preview are compared
      on; `differs_note` says why they may differ, `same_note` that they do not.
    - `progress_unit`: what progress counts; `listing`: while the total is
      unknown the count is what it listed so far (else "starting").
    - the partials (templates/maintenance/jobs/): `form_template` lays out its
      form on the maintenance page; on the run page `summary_template`
      right after the figures, `result_template` for the rest of the result
      (the raw JSON when empty), `confirm_template` for a preview's
      confirmation.
    """

    kind: str
    label: str
    routine: bool = False
    runner: str = ""
    command: str = ""
    queued: str = ""
    form: str = ""
    needs_source: bool = False
    preview_clock: bool = False
    params: tuple = ()
    counts: tuple = ()
    listed: str = ""
    freed: str = ""
    figures: tuple = ()
    compared: tuple = ()
    differs_note: str = ("Rows differ where threads changed after the preview (new checkpoints make a thread "
                         "active; rows deleted by others are gone).")
    same_note: str = "The run removed exactly what the preview showed."
    progress_unit: str = "objects"
    listing: bool = False
    form_template: str = ""
    summary_template: str = ""
    result_template: str = ""
    confirm_template: str = ""

    @property
    def previewed(self) -> bool:
        """Previewed on the page as a dry run, confirmed from it, and possible as a saved policy."""
        return bool(self.form)

    @property
    def preview_url(self) -> str:
        """The name of the route that queues its preview."""
        return f"maintenance-{self.kind}-preview" if self.form else ""


ROW_COUNTS = (("threads", "threads"), ("checkpoints", "checkpoints"), ("writes", "writes"), ("blobs", "blob rows"))

JOBS = {job.kind: job for job in (
    Job(
        SYNC, "Sync", routine=True, runner="checkpoints.sync.sync_source", command="sync_checkpoints",
        params=(Param("full", "full", flag=True),),
        counts=(("added", "added"), ("updated", "updated"), ("removed", "removed")),
    ),
    Job(
        PRUNE, "Prune", runner="checkpoints.prune.run_prune", command="prune_checkpoints",
        queued="dashboard.tasks.queued_prune", form="dashboard.maintenance_forms.PruneForm",
        needs_source=True, preview_clock=True,
        params=(Param("older_than", "older than {}"), Param("keep_last", "keep last {}", default=1),
                Param("tags", many=True), Param("threads", "whole threads", flag=True),
                Param("vacuum", "VACUUM after", flag=True)),
        counts=ROW_COUNTS, listed="skipped", freed="bytes",
        figures=(
            Figure("threads", "Threads", hint="{} whole", hint_key="whole_threads", hint_when="set"),
            Figure("checkpoints", "Checkpoints", hint="of {} candidate threads", hint_key="candidates"),
            Figure("writes", "Writes"),
            Figure("blobs", "Blob rows"),
            Figure("bytes", "Bytes freed", unit="bytes", dry_label="Bytes to free", hint="serialized"),
            Figure("disk_bytes_before", "Disk size before", unit="bytes", hint="after: {}", hint_key="disk_bytes_after",
                   hint_unit="bytes", hint_when="real"),
            Figure("skipped", "Skipped threads", unit="items", alert=True),
        ),
        compared=(("threads", "Threads"), ("checkpoints", "Checkpoints"), ("writes", "Writes"), ("blobs", "Blob rows"),
                  ("bytes", "Serialized bytes"), ("skipped", "Skipped threads")),
        progress_unit="threads",
        form_template="maintenance/jobs/prune_form.html", confirm_template="maintenance/jobs/prune_confirm.html",
        summary_template="maintenance/jobs/prune_summary.html", result_template="maintenance/jobs/prune.html",
    ),
    Job(
        SWEEP, "Sweep", runner="storage.sweep.run_sweep", command="sweep_orphans",
        queued="dashboard.tasks.queued_sweep", form="dashboard.maintenance_forms.SweepForm",
        params=(Param("grace", "grace {}"), Param("force", "force", flag=True)),
        counts=(("objects_scanned", "scanned"), ("orphans", "orphans"), ("deleted", "deleted"), ("db_orphans", "db rows")),
        listed="dangling", freed="orphan_bytes",
        figures=(
            Figure("objects_scanned", "Objects scanned"),
            Figure("orphans", "Orphans", hint="older than {}", hint_key="grace", hint_unit="text"),
            Figure("orphan_bytes", "Orphan bytes", unit="bytes"),
            Figure("deleted", "Deleted"),
            Figure("db_orphans", "Database orphan rows"),
            Figure("dangling", "Dangling references", unit="items", alert=True, hint="referenced, missing"),
        ),
        compared=(("orphans", "Orphan objects"), ("orphan_bytes", "Orphan bytes"), ("db_orphans", "Database orphan rows"),
                  ("dangling", "Dangling references")),
        differs_note=("Rows differ where threads changed after the preview (new checkpoints make a thread active; "
                      "rows deleted by others are gone), or objects aged past the grace or got referenced since."),
        listing=True,
        form_template="maintenance/jobs/sweep_form.html", confirm_template="maintenance/jobs/sweep_confirm.html",
        summary_template="maintenance/jobs/sweep_summary.html", result_template="maintenance/jobs/sweep.html",
    ),
    Job(
        REFCHECK, "Reference check", routine=True, runner="storage.refcheck.run_reference_check",
        command="check_references",
    ),
    Job(
        REMOVE, "Source removal", runner="checkpoints.removal.remove_source", command="remove_source",
        queued="dashboard.tasks.queued_removal", needs_source=True,
        params=(Param("source", "source {}"),),
        counts=ROW_COUNTS,
        # A removal counts what leaves before it deletes, and keeps those counts as its result's "preview".
        compared=(("threads", "Threads"), ("checkpoints", "Checkpoints"), ("writes", "Write rows"), ("blobs", "Blob rows"),
                  ("stored_bytes", "Serialized bytes"), ("references", "References to external objects"),
                  ("only_here", "Objects referenced by no other source"), ("usage_days", "Days of usage history")),
        result_template="maintenance/jobs/remove.html",
    ),
    Job(
        LIFECYCLE, "Lifecycle policy", runner="checkpoints.lifecycle.run_lifecycle", command="apply_lifecycle",
        queued="dashboard.tasks.queued_lifecycle", form="dashboard.maintenance_forms.LifecycleForm",
        needs_source=True,
        params=(Param("expire_days", "expire after {} days", optional=True),
                Param("archive_days", "archive after {} days", optional=True),
                Param("archive_storage_class", "to {}", optional=True),
                Param("intelligent_tiering_days", "tiering after {} days", optional=True),
                Param("changes_expire_days", "change index kept {} days", optional=True),
                Param("abort_multipart_days", "abort uploads after {} days", optional=True)),
        counts=(("added", "added"), ("changed", "changed"), ("removed", "removed"), ("other_rules", "other rules")),
        figures=(
            Figure("added", "Rules added", unit="items"),
            Figure("changed", "Rules changed", unit="items"),
            Figure("removed", "Rules removed", unit="items", alert=True),
            Figure("unchanged", "Rules unchanged", unit="items"),
            Figure("other_rules", "Other rules kept", hint="of other prefixes"),
        ),
        compared=(("added", "Rules added"), ("changed", "Rules changed"), ("removed", "Rules removed"),
                  ("other_rules", "Other rules kept")),
        differs_note="Someone changed the bucket's lifecycle configuration after the preview: the run kept their rules.",
        same_note="The run changed exactly the rules the preview showed.",
        progress_unit="rules",
        form_template="maintenance/jobs/lifecycle_form.html", confirm_template="maintenance/jobs/lifecycle_confirm.html",
        result_template="maintenance/jobs/lifecycle.html",
    ),
)}

# The model's choices: the kinds in this order, with their labels.
KIND_CHOICES = [(job.kind, job.label) for job in JOBS.values()]


def job(kind: str) -> Job:
    """The Job of a kind; a kind this console does not know (an old row) gets a bare description.

    >>> job("prune").label, job("gone").label, job("gone").counts
    ('Prune', 'gone', ())
    """
    return JOBS.get(kind) or Job(kind, kind)


def kinds(*, routine=None, previewed=None) -> list:
    """The kinds, in the registry's order, optionally only routine (or audit) or previewed ones.

    >>> kinds(routine=True), kinds(previewed=True), kinds(routine=False)
    (['sync', 'refcheck'], ['prune', 'sweep', 'lifecycle'], ['prune', 'sweep', 'remove', 'lifecycle'])
    """
    return [j.kind for j in JOBS.values()
            if (routine is None or j.routine == routine) and (previewed is None or j.previewed == previewed)]
