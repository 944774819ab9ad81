import hashlib

from django.conf import settings
from django.db import models

from checkpoints.jobs import job, kinds


class ApiToken(models.Model):
    """A bearer token for scripts; only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens", help_text="Acts as this user.")
    digest = models.CharField(max_length=64, unique=True, help_text="sha256 of the token.")
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was created.")
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="Last request made with it.")

    class Meta:
        verbose_name = "API token"
        verbose_name_plural = "API tokens"

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()


class SavedPolicy(models.Model):
    """A prune or sweep that the task cluster runs on its own every `interval`.

    The scheduled task `dashboard.tasks.run_due_policies` queues a real run
    (origin "schedule") for each enabled policy whose `next_run_at` has come.
    """

    KIND_CHOICES = [(kind, job(kind).label) for kind in kinds(previewed=True)]  # the jobs previewed on the page

    name = models.CharField(max_length=100, unique=True, help_text="Name shown in the list and the run history.")
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, help_text="What runs: a prune of one source or an orphan sweep.")
    source = models.ForeignKey(
        "checkpoints.Source", null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        help_text="Source a prune runs on; empty for sweeps (they cover every source).",
    )
    parameters = models.JSONField(
        default=dict, blank=True,
        help_text="Prune: older_than, keep_last, tags, threads (as PrunePolicy.as_parameters); sweep: grace, force.",
    )
    interval = models.DurationField(help_text="Time between two runs.")
    enabled = models.BooleanField(default=True, help_text="Disabled policies are kept but never run.")
    next_run_at = models.DateTimeField(null=True, blank=True, help_text="When it is next due; empty: at the next tick.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Who saved it.",
    )
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was saved.")
    last_run = models.ForeignKey(
        "checkpoints.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The latest run it queued.",
    )

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "saved policies"
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="policy_due_idx")]

    def __str__(self):
        return self.name


class ClusterHeartbeat(models.Model):
    """The last sign of life of one django-q2 cluster, written by its own workers.

    django-q2 keeps its cluster statistics (`Stat`) in Django's cache when
    the broker is the ORM, and the default cache is per process: the web
    server never sees them. So the workers record their cluster here, in the
    console's database, which every broker setup shares (dashboard.cluster).
    """

    cluster = models.CharField(max_length=200, unique=True, help_text="host:pid of the cluster's sentinel process.")
    host = models.CharField(max_length=200, help_text="Machine the cluster runs on.")
    pid = models.IntegerField(help_text="Process id of the cluster's sentinel (the workers' parent).")
    workers = models.IntegerField(help_text="Workers the cluster runs (its Q_WORKERS).")
    broker = models.CharField(max_length=100, blank=True, help_text="The broker it takes tasks from.")
    started_at = models.DateTimeField(help_text="First heartbeat of this cluster.")
    beat_at = models.DateTimeField(db_index=True, help_text="Last heartbeat: a worker started or took a task.")

    def __str__(self):
        return self.cluster
