"""Forms of the maintenance page: a prune, a sweep, a saved policy.

Each job form (named by its Job in checkpoints/jobs.py) turns what an
operator typed into the run's `parameters` in its cleaned data (and its
`source` when the job runs on one), with the same validation the command
applies, so a bad value is refused on the page with the command's own message.
"""

from datetime import timedelta

from django import forms
from django.conf import settings

from checkpoints.models import Source
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
