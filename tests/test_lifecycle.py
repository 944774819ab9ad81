"""The S3 saver's lifecycle policy applied to an S3 source's bucket: previewed, confirmed, audited.

moto's S3 server keeps lifecycle configurations as given, so what the console
puts is read back over the wire and compared with what S3Saver itself would put.
"""

import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from checkpoints.models import Run, Source
from checkpoints.s3layout import lifecycle_rules
from storage.s3saver import S3Saver
from tests.graphs import chat_graph, config
from tests.mirror_data import operator, operator_client, viewer  # noqa: F401

pytestmark = pytest.mark.django_db

PREFIX = "agents/prod/"
FOREIGN = {"ID": "tidy-tmp", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": {"Days": 2}}


@pytest.fixture
def store(moto_s3, s3_bucket):
    """(saver, source, client): an S3Saver with one thread under PREFIX, its source, and a bucket rule of
    another prefix that must survive every change."""
    client = moto_s3.client()
    saver = S3Saver(s3_bucket, PREFIX, client=client, metrics=False)
    chat_graph(saver).invoke({"messages": ["hello"]}, config("t1"))
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [FOREIGN]})
    source = Source.objects.create(name="s3src", url=f"s3://{s3_bucket}/{PREFIX}", kind="s3")
    yield saver, source, client
    saver.close()


def bucket_rules(client, bucket):
    return client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])


def objects(client, bucket):
    return sorted((o["Key"], o["ETag"]) for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def form(source, **fields):
    data = {"lifecycle-source": source.pk, "lifecycle-archive_storage_class": "GLACIER",
            "lifecycle-abort_multipart_days": "7"}
    data.update({f"lifecycle-{k}": v for k, v in fields.items()})
    return data


def test_preview_changes_nothing_and_the_confirmed_run_puts_the_savers_rules(store, operator_client, operator):
    saver, source, client = store
    before, rules_before = objects(client, saver.bucket), bucket_rules(client, saver.bucket)

    response = operator_client.post(reverse("maintenance-lifecycle-preview"),
                                    form(source, expire_days="90", archive_days="30", changes_expire_days="14"))
    preview = Run.objects.get(kind="lifecycle", dry_run=True)
    assert response.status_code == 302 and response["Location"] == reverse("maintenance-run", args=[preview.pk])
    assert preview.state == "done", preview.error
    assert (preview.requested_by, preview.origin, preview.source) == (operator, "page", source)
    assert bucket_rules(client, saver.bucket) == rules_before and objects(client, saver.bucket) == before
    assert preview.result["added"] == sorted(f"s3saver:{PREFIX}:{n}" for n in ("expire", "archive", "changes", "multipart"))
    assert preview.result["other_rules"] == 1 and preview.result["removed"] == [] and not preview.result["applied"]

    page = operator_client.get(reverse("maintenance-run", args=[preview.pk])).content.decode()
    confirm = reverse("maintenance-run-confirm", args=[preview.pk])
    assert f'action="{confirm}"' in page and "Apply the lifecycle policy" in page
    assert "expire current versions after 90 days" in page and "move to GLACIER after 30 days" in page
    assert "expire after 90 days · archive after 30 days · to GLACIER" in page

    operator_client.post(confirm)
    real = Run.objects.get(kind="lifecycle", dry_run=False)
    assert real.state == "done", real.error
    assert (real.requested_by, real.parameters["preview_run"]) == (operator, preview.pk)
    # Exactly the rules the saver itself puts for this policy, the other prefix's rule kept, no object touched.
    wanted = lifecycle_rules(PREFIX, expire_days=90, archive_days=30, changes_expire_days=14, abort_multipart_days=7)
    assert bucket_rules(client, saver.bucket) == [FOREIGN, *wanted]
    assert saver.lifecycle() == wanted
    assert objects(client, saver.bucket) == before
    page = operator_client.get(reverse("maintenance-run", args=[real.pk])).content.decode()
    assert "The run changed exactly the rules the preview showed." in page
    assert "Lifecycle policy" in operator_client.get(reverse("maintenance") + "?kind=lifecycle").content.decode()

    # The same policy again changes nothing, and the preview says so.
    operator_client.post(reverse("maintenance-lifecycle-preview"),
                         form(source, expire_days="90", archive_days="30", changes_expire_days="14"))
    again = Run.objects.filter(kind="lifecycle", dry_run=True).latest("pk")
    assert again.result["added"] == again.result["changed"] == again.result["removed"] == []
    assert len(again.result["unchanged"]) == 4
    assert "Nothing to change" in operator_client.get(reverse("maintenance-run", args=[again.pk])).content.decode()


def test_a_rule_someone_adds_after_the_preview_survives_the_run_and_the_page_says_so(store, operator_client):
    saver, source, client = store
    saver.apply_lifecycle(expire_days=30)  # the saver's own rules, to be replaced
    operator_client.post(reverse("maintenance-lifecycle-preview"), form(source, intelligent_tiering_days="0"))
    preview = Run.objects.get(kind="lifecycle", dry_run=True)
    assert preview.result["removed"] == [f"s3saver:{PREFIX}:expire"]
    assert preview.result["added"] == [f"s3saver:{PREFIX}:tiering"]

    late = {"ID": "late", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 5}}
    client.put_bucket_lifecycle_configuration(
        Bucket=saver.bucket, LifecycleConfiguration={"Rules": [*bucket_rules(client, saver.bucket), late]})
    operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
    real = Run.objects.get(kind="lifecycle", dry_run=False)
    assert real.state == "done", real.error
    ids = [r["ID"] for r in bucket_rules(client, saver.bucket)]
    assert ids == ["tidy-tmp", "late", f"s3saver:{PREFIX}:tiering", f"s3saver:{PREFIX}:multipart"]
    assert real.result["other_rules"] == 2
    page = operator_client.get(reverse("maintenance-run", args=[real.pk])).content.decode()
    assert "Someone changed the bucket&#x27;s lifecycle configuration after the preview" in page


def test_viewers_cannot_preview_or_confirm(store, viewer, operator):
    saver, source, client = store
    viewer_client, operator_client = Client(), Client()
    viewer_client.force_login(viewer)
    operator_client.force_login(operator)
    assert viewer_client.post(reverse("maintenance-lifecycle-preview"), form(source, expire_days="9")).status_code == 403
    assert not Run.objects.filter(kind="lifecycle").exists()
    operator_client.post(reverse("maintenance-lifecycle-preview"), form(source, expire_days="9"))
    preview = Run.objects.get(kind="lifecycle")
    assert viewer_client.post(reverse("maintenance-run-confirm", args=[preview.pk])).status_code == 403
    assert bucket_rules(client, saver.bucket) == [FOREIGN]


def test_the_form_offers_only_s3_sources_and_refuses_a_bad_policy(store, operator_client, sqlite_source_url):
    saver, source, client = store
    sqlite = Source.objects.create(name="lite", url=sqlite_source_url, kind="sqlite")
    page = operator_client.get(reverse("maintenance")).content.decode()
    section = page[page.index('id="lifecycle"'):]
    section = section[:section.index("</section>")]
    assert "s3src" in section and "lite" not in section

    response = operator_client.post(reverse("maintenance-lifecycle-preview"), form(sqlite, expire_days="9"))
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    response = operator_client.post(reverse("maintenance-lifecycle-preview"),
                                    form(source, expire_days="10", archive_days="10"))
    assert response.status_code == 400 and "archive=10 must be fewer than expire=10" in response.content.decode()
    assert not Run.objects.filter(kind="lifecycle").exists()


def test_the_command_previews_and_applies_and_refuses_other_kinds(store, capsys, sqlite_source_url):
    saver, source, client = store
    call_command("apply_lifecycle", "--source", "s3src", "--expire-days", "60", "--dry-run", "--json")
    planned = json.loads(capsys.readouterr().out)
    assert planned["added"] == [f"s3saver:{PREFIX}:expire", f"s3saver:{PREFIX}:multipart"]
    assert bucket_rules(client, saver.bucket) == [FOREIGN]

    call_command("apply_lifecycle", "--source", "s3src", "--expire-days", "60")
    assert "add 2, change 0, remove 0" in capsys.readouterr().out
    assert saver.lifecycle() == lifecycle_rules(PREFIX, expire_days=60)
    assert [r.dry_run for r in Run.objects.filter(kind="lifecycle").order_by("pk")] == [True, False]

    Source.objects.create(name="lite", url=sqlite_source_url, kind="sqlite")
    with pytest.raises(CommandError, match="only an S3 store has a lifecycle policy"):
        call_command("apply_lifecycle", "--source", "lite", "--expire-days", "60")
    with pytest.raises(CommandError, match="no source named"):
        call_command("apply_lifecycle", "--source", "nope")


def test_a_bucket_that_cannot_be_read_fails_the_run_with_its_name(moto_s3, s3_bucket, operator_client):
    source = Source.objects.create(name="gone", url="s3://no-such-bucket-here/agents/", kind="s3")
    operator_client.post(reverse("maintenance-lifecycle-preview"), form(source, expire_days="9"))
    run = Run.objects.get(kind="lifecycle")
    assert run.state == "failed"
    assert "cannot read the lifecycle configuration of bucket no-such-bucket-here: NoSuchBucket" in run.error
    assert not moto_s3.client().list_objects_v2(Bucket=s3_bucket).get("Contents")
