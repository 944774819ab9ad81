"""Forms of the maintenance page: a prune, a sweep, a lifecycle policy, a saved policy.

Each job form (named by its Job in checkpoints/jobs.py) turns what an
operator typed into the run's `parameters` in its cleaned data (and its
`source` when the job runs on one), with the same validation the command
applies, so a bad value is refused on the page with the command's own message.
"""

from datetime import timedelta

from django import forms
from django.conf import settings

from checkpoints.lifecycle import LifecycleRefused, policy_from_parameters
from checkpoints.models import Source
from checkpoints.s3layout import ARCHIVE_CLASSES, LIFECYCLE_OPTIONS
from checkpoints.sources import registry
from checkpoints.prune import PrunePolicy
from checkpoints.tags import split_tag
from checkpoints.units import duration_text, parse_duration
from storage.sweep import SweepRefused, check_grace

MIN_INTERVAL = timedelta(minutes=10)


def split_tag_lines(text: str) -> list:
    """Tag filters, key:value or KEY=VALUE, one a line (values may hold spaces, commas, ':' and '=').

    >>> split_tag_lines("tenant:acme\\n\\n  plan = free tier \\r\\nexpr=a=b")
    ['tenant:acme', 'plan = free tier', 'expr=a=b']
    """
    return [line.strip() for line in text.splitlines() if line.strip()]


class PruneForm(forms.Form):
    source = forms.ModelChoiceField(
        # Disabled sources are left out: syncs skip them, and one may be the mistyped URL it was disabled for.
        queryset=Source.objects.filter(enabled=True), empty_label=None, help_text="The checkpoint database to prune.",
    )
    older_than = forms.CharField(
        initial="30d", max_length=20, label="Older than",
        help_text="A checkpoint goes when it is older than this (90s, 15m, 24h, 30d).",
    )
    keep_last = forms.IntegerField(
        initial=1, min_value=0, max_value=1_000_000, label="Keep last",
        help_text="Checkpoints kept per thread however old (at least 1, 0 only with whole threads).",
    )
    tags = forms.CharField(
        required=False, label="Tag filters", widget=forms.Textarea(attrs={"rows": 2, "placeholder": "tenant:acme"}),
        help_text="key:value (KEY=VALUE works too), one a line; a thread must carry them all.",
    )
    threads = forms.BooleanField(
        required=False, label="Whole threads",
        help_text="Delete threads idle for longer than the age entirely.",
    )
    vacuum = forms.BooleanField(
        required=False, label="VACUUM after",
        help_text="A plain VACUUM of the pruned tables after the run (never VACUUM FULL): their space is reused "
                  "at once instead of when autovacuum comes by; agents keep reading and writing meanwhile. SQLite "
                  "rewrites the whole file.",
    )

    def clean_tags(self):
        text = self.cleaned_data.get("tags") or ""
        for line in split_tag_lines(text):
            try:
                split_tag(line)
            except ValueError as e:
                raise forms.ValidationError(str(e)) from None
        return text

    def clean_older_than(self):
        text = self.cleaned_data["older_than"].strip()
        try:
            parse_duration(text)
        except ValueError as e:
            raise forms.ValidationError(str(e)) from None
        return text

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            data["policy"] = PrunePolicy.from_options(
                data["older_than"], data["keep_last"], split_tag_lines(data.get("tags") or ""), data["threads"],
                data.get("vacuum", False),
            )
        except ValueError as e:
            raise forms.ValidationError(str(e).replace("--keep-last", "Keep last").replace("--threads", "whole threads")
                                        .replace("--older-than", "Older than")) from None
        data["parameters"] = data["policy"].as_parameters()
        return data



class SweepForm(forms.Form):
    grace = forms.CharField(
        required=False, max_length=20,
        help_text="Objects younger than this stay (server LastModified). Empty: SWEEP_GRACE.",
    )
    force = forms.BooleanField(required=False, help_text="Allow a grace under 1 hour.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["grace"].widget.attrs["placeholder"] = duration_text(settings.SWEEP_GRACE)

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            grace = check_grace(data.get("grace", "").strip() or None, data.get("force", False))
        except SweepRefused as e:
            raise forms.ValidationError(str(e).replace("--force", "“force”").replace("--grace: ", "")) from None
        data["parameters"] = {"grace": duration_text(grace), "force": bool(data.get("force"))}
        return data


def _days(label, help_text, initial=None):
    return forms.IntegerField(required=False, min_value=0, max_value=100_000, label=label, initial=initial,
                              help_text=help_text)


class LifecycleForm(forms.Form):
    """The S3 saver's lifecycle policy for one S3 source (checkpoints.s3layout.lifecycle_rules)."""

    source = forms.ModelChoiceField(
        queryset=Source.objects.none(), empty_label=None,
        help_text="An S3 checkpoint store: its bucket gets the saver's rules for its prefix.",
    )
    expire_days = _days("Delete checkpoints after", "Days after a checkpoint was written; empty: never. "
                        "Lifecycle deletes leave no change entries: a full sync notices them.")
    archive_days = _days("Archive after", "Days until checkpoints move to the archive class; empty: never.")
    archive_storage_class = forms.ChoiceField(
        choices=[(c, c) for c in ARCHIVE_CLASSES], initial="GLACIER", label="Archive class",
        help_text="Archived checkpoints must be restored before an agent or the console can read them.",
    )
    intelligent_tiering_days = _days("Intelligent tiering after", "Days until checkpoints move to INTELLIGENT_TIERING.")
    changes_expire_days = _days("Keep the change index", "Days; keep it above every console's sync interval. "
                                "Empty: forever.")
    abort_multipart_days = _days("Abort unfinished uploads after", "Days; empty: never.", initial=7)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["source"].queryset = Source.objects.filter(enabled=True, kind__in=lifecycle_kinds())

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        parameters = {key: data.get(key) for key in LIFECYCLE_OPTIONS}
        if parameters["archive_days"] is not None:
            parameters["archive_storage_class"] = data["archive_storage_class"]
        try:
            policy_from_parameters(parameters)
        except LifecycleRefused as e:
            raise forms.ValidationError(str(e).replace("_days", "").replace("_", " ")) from None
        data["parameters"] = parameters
        return data


def lifecycle_kinds() -> list:
    """The source kinds that have a lifecycle policy (the S3 kind)."""
    return [entry.name for entry in registry.KINDS if hasattr(registry.get(entry.name), "lifecycle")]


class PolicyForm(forms.Form):
    """The name and interval of a saved policy; its parameters come from a PruneForm or a SweepForm."""

    # It shares an HTML form with the preview: a browser must not insist on a
    # name when the operator only wants a preview.
    use_required_attribute = False

    name = forms.CharField(max_length=100, help_text="A name for the list and the history.")
    interval = forms.CharField(
        initial="24h", max_length=20, label="Every", help_text="Time between runs (at least 10m): 1h, 24h, 7d.",
    )

    def clean_interval(self):
        try:
            interval = parse_duration(self.cleaned_data["interval"].strip())
        except ValueError as e:
            raise forms.ValidationError(str(e)) from None
        if interval < MIN_INTERVAL:
            raise forms.ValidationError("Run it at most every 10 minutes (10m).")
        return interval

    def clean_name(self):
        from dashboard.models import SavedPolicy

        name = self.cleaned_data["name"].strip()
        if SavedPolicy.objects.filter(name=name).exists():
            raise forms.ValidationError(f"A policy named {name!r} exists already.")
        return name
