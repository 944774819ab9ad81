"""S3Saver's features beyond LangGraph's interface, and the semantics it shares with PostgresSaver.

put_writes keeps or overwrites exactly as PostgresSaver does; list(filter=...) decides on the
manifests (no payload is read for a checkpoint that does not match) and matches what
PostgresSaver's jsonb containment matches; versioning, lifecycle, signed URLs, batch save and
delete, multipart uploads. Each runs against moto's server, and against SeaweedFS (which
enforces signatures) where SeaweedFS has the feature: it has versioning, conditional writes,
expiration lifecycle rules and AES256, but no lifecycle transitions and no KMS.
"""

import base64
import gzip
import json
import random
import urllib.request
import uuid

import ormsgpack
import pytest
from botocore.awsrequest import AWSResponse
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT
from prometheus_client import CollectorRegistry

from storage.s3saver import S3CheckpointError, S3Saver
from tests.seaweed import seaweed_s3  # noqa: F401
from tests.test_s3saver import Wire, _Body, env, keys, put_chain

MB = 1024 * 1024


@pytest.fixture(params=["moto", "seaweed"])
def server(request):
    return request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweed_s3")


def new_bucket(server):
    name = f"feat-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=name)
    return name


def saver_on(server, bucket=None, **options):
    options.setdefault("registry", CollectorRegistry())
    return S3Saver.from_env(env(server, bucket or new_bucket(server)), **options)


def checkpoint(values, step=0):
    cp = empty_checkpoint()
    cp["channel_values"] = dict(values)
    cp["channel_versions"] = {k: step + 1 for k in values}
    return cp


def root(thread_id):
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


# --- put_writes: PostgresSaver's keep / overwrite rule ---------------------------------------------


def _write_rounds(saver):
    """The same put_writes calls on any saver; returns the pending writes after each round."""
    stored = saver.put(root("w"), checkpoint({"n": 1}), {"source": "loop", "step": 0}, {"n": 1})
    seen = []
    rounds = [
        ([("messages", "first"), (ERROR, "e1")], "task"),      # mixed: insert
        ([("messages", "second"), (ERROR, "e2")], "task"),     # mixed: both kept
        ([(ERROR, "e3"), (INTERRUPT, "i1")], "task"),          # only special: overwritten
        ([("messages", "third")], "task"),                     # regular: kept
        ([("other", "x")], "task-2"),                          # another task: added
    ]
    for writes, task in rounds:
        saver.put_writes(stored, writes, task)
        seen.append(sorted(saver.get_tuple(stored).pending_writes))
    return seen


def test_put_writes_keeps_and_overwrites_like_postgres(server, pg_saver):
    saver = saver_on(server)
    got = _write_rounds(saver)
    assert got == _write_rounds(pg_saver)
    assert ("task", "messages", "first") in got[-1] and ("task", ERROR, "e3") in got[-1]


def test_a_kept_write_costs_no_overwrite_and_does_not_trip_the_breaker(moto_s3):
    saver = saver_on(moto_s3, breaker_failures=1)
    stored = put_chain(saver, "t", 1)
    for _ in range(3):
        saver.put_writes(stored, [("ch", "v")], "task")
    assert saver.breaker.state == "closed"
    versions = moto_s3.client().list_objects_v2(Bucket=saver.bucket, Prefix=saver.prefix + "threads/t/")
    assert sum(1 for o in versions["Contents"] if "/writes/" in o["Key"]) == 1


# --- list(filter=...) on manifests ---------------------------------------------------------------------


FILTERS = [
    {"source": "loop"},
    {"step": 2},
    {"step": 2.0},
    {"source": "input", "step": -1},
    {"tenant": "acme", "score": 7},
    {"nested": {"a": 1}},
    {"tags": ["blue"]},
    {"flag": True},
    {"flag": 1},
    {"source": "nothing"},
]


def _filter_results(saver):
    config = {"configurable": {"thread_id": "f"}}
    cp_config = root("f")
    for step in range(-1, 5):
        metadata = {"source": "input" if step < 0 else "loop", "step": step, "tenant": "acme",
                    "score": step + 5, "nested": {"a": 1, "b": step}, "tags": ["red", "blue"] if step % 2 else ["red"],
                    "flag": step == 3}
        cp_config = saver.put(cp_config, checkpoint({"n": step}, step), metadata, {"n": step + 1})
    return [[t.metadata["step"] for t in saver.list(config, filter=f)] for f in FILTERS] + [
        [t.metadata["step"] for t in saver.list(None, filter={"tenant": "acme"}, limit=2)],
    ]


def test_list_filter_matches_what_postgres_matches(moto_s3, pg_saver):
    assert _filter_results(saver_on(moto_s3)) == _filter_results(pg_saver)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "payload-object"])
def test_list_filter_reads_manifests_and_only_the_matching_payloads(moto_s3, inline):
    saver = saver_on(moto_s3, **({} if inline else {"inline_limit": 0}))
    put_chain(saver, "t", 30)  # metadata {"source": "loop", "step": i, "tenant": "acme"}
    wire = Wire(saver)
    found = list(saver.list({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, filter={"step": 7}))
    assert [t.metadata["step"] for t in found] == [7]
    gets = [url for method, url in wire.sent if method == "GET" and "list-type=2" not in url]
    assert sum(url.endswith("/manifest.json") for url in gets) == 30  # the match's is not read again
    assert sum(url.endswith("/payload") for url in gets) == (0 if inline else 1)


# --- versioning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "payload-object"])
def test_versions_of_a_checkpoint_are_listed_and_loaded_even_after_a_delete(server, inline):
    saver = saver_on(server, **({} if inline else {"inline_limit": 0}))
    assert saver.versioning() is None
    saver.enable_versioning()
    assert saver.versioning() == "Enabled"
    cp = checkpoint({"doc": "v1"})
    stored = saver.put(root("v"), cp, {"source": "input", "step": -1}, {"doc": 1})
    saver.put_writes(stored, [("messages", "hello")], "task")
    cp2 = dict(cp, channel_values={"doc": "v2"})  # the same id written again: a second version
    saver.put(root("v"), cp2, {"source": "input", "step": -1}, {"doc": 1})
    saver.delete_thread("v")
    assert saver.get_tuple(stored) is None

    versions = saver.checkpoint_versions(stored)
    assert [v["deleted"] for v in versions] == [True, False, False]
    assert versions[0]["latest"] and not versions[1]["latest"]
    second, first = versions[1], versions[2]
    old = saver.get_tuple_version(stored, first["version_id"])
    assert old.checkpoint["channel_values"] == {"doc": "v1"}
    assert old.checkpoint["id"] == cp["id"] and old.metadata["step"] == -1
    newer = saver.get_tuple_version(stored, second["version_id"])
    assert newer.checkpoint["channel_values"] == {"doc": "v2"}
    assert newer.pending_writes == [("task", "messages", "hello")]
    manifest = json.loads(server.client().get_object(
        Bucket=saver.bucket, Key=saver.manifest_key("v", "", cp["id"]), VersionId=second["version_id"])["Body"].read())
    if inline:  # the manifest version holds its own payload
        assert "inline" in manifest["payload"] and "version_id" not in manifest["payload"]
    else:
        assert manifest["payload"]["version_id"]  # the manifest names its own payload version
    with pytest.raises(S3CheckpointError, match="delete marker"):
        saver.get_tuple_version(stored, versions[0]["version_id"])
    with pytest.raises(S3CheckpointError, match="no version"):
        saver.get_tuple_version(stored, "nope")


def test_without_versioning_a_checkpoint_has_one_version(moto_s3):
    saver = saver_on(moto_s3)
    stored = put_chain(saver, "t", 1)
    versions = saver.checkpoint_versions(stored)
    assert len(versions) == 1 and versions[0]["latest"] and not versions[0]["deleted"]
    with pytest.raises(ValueError, match="checkpoint_id"):
        saver.checkpoint_versions(root("t"))


# --- lifecycle -----------------------------------------------------------------------------------------


def test_lifecycle_rules_are_scoped_to_the_prefix_and_keep_other_rules(moto_s3):
    saver = saver_on(moto_s3)
    client = moto_s3.client()
    foreign = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 90}}
    client.put_bucket_lifecycle_configuration(Bucket=saver.bucket, LifecycleConfiguration={"Rules": [foreign]})
    assert saver.lifecycle() == []

    preview = saver.lifecycle_configuration(expire_days=365, archive_days=30, intelligent_tiering_days=0,
                                            changes_expire_days=14)
    rules = {r["ID"]: r for r in preview["Rules"]}
    assert rules["logs"] == foreign
    p = saver.prefix
    assert rules[f"s3saver:{p}:expire"]["Expiration"] == {"Days": 365}
    assert rules[f"s3saver:{p}:expire"]["Filter"] == {"Prefix": f"{p}threads/"}
    assert rules[f"s3saver:{p}:archive"]["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER"}]
    assert rules[f"s3saver:{p}:tiering"]["Transitions"] == [{"Days": 0, "StorageClass": "INTELLIGENT_TIERING"}]
    assert rules[f"s3saver:{p}:changes"]["Filter"] == {"Prefix": f"{p}changes/"}
    assert rules[f"s3saver:{p}:multipart"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    # A preview changes nothing.
    assert client.get_bucket_lifecycle_configuration(Bucket=saver.bucket)["Rules"] == [foreign]

    saver.apply_lifecycle(expire_days=365, archive_days=30, changes_expire_days=14)
    stored = {r["ID"] for r in client.get_bucket_lifecycle_configuration(Bucket=saver.bucket)["Rules"]}
    assert stored == {"logs", f"s3saver:{p}:expire", f"s3saver:{p}:archive", f"s3saver:{p}:changes", f"s3saver:{p}:multipart"}
    # Applying again replaces the saver's rules, never duplicates them.
    saver.apply_lifecycle(expire_days=30, abort_multipart_days=None)
    assert {r["ID"] for r in saver.lifecycle()} == {f"s3saver:{p}:expire"}
    assert saver.lifecycle()[0]["Expiration"] == {"Days": 30}
    # Another saver's prefix in the same bucket has rules of its own.
    other = S3Saver.from_env(env(moto_s3, saver.bucket, prefix="elsewhere"), registry=CollectorRegistry())
    other.apply_lifecycle(expire_days=7)
    assert {r["ID"] for r in saver.lifecycle()} == {f"s3saver:{p}:expire"}
    assert len(client.get_bucket_lifecycle_configuration(Bucket=saver.bucket)["Rules"]) == 4
    saver.apply_lifecycle(abort_multipart_days=None)  # no rules of this saver left
    assert saver.lifecycle() == []


def test_lifecycle_expiration_applies_on_seaweedfs(seaweed_s3):
    saver = saver_on(seaweed_s3)
    saver.apply_lifecycle(expire_days=30, changes_expire_days=14)
    assert {r["ID"]: r.get("Expiration") for r in saver.lifecycle()} == {
        f"s3saver:{saver.prefix}:expire": {"Days": 30},
        f"s3saver:{saver.prefix}:changes": {"Days": 14},
        f"s3saver:{saver.prefix}:multipart": None,
    }


@pytest.mark.parametrize("policy, message", [
    ({"expire_days": 0}, "at least 1"),
    ({"expire_days": -3}, "0 or more"),
    ({"archive_days": "30"}, "whole number"),
    ({"expire_days": 30, "archive_days": 30}, "fewer than expire_days"),
    ({"archive_days": 30, "archive_storage_class": "COLD"}, "archive class"),
])
def test_bad_lifecycle_policies_are_refused_naming_the_option(moto_s3, policy, message):
    saver = saver_on(moto_s3)
    with pytest.raises(ValueError, match=message):
        saver.lifecycle_configuration(**policy)


# --- signed URLs ---------------------------------------------------------------------------------------


def test_presigned_urls_fetch_the_stored_objects(server):
    # part="payload" names a payload object: one above inline_limit (below it, the manifest holds it).
    saver = saver_on(server, inline_limit=0)
    first = put_chain(saver, "t/1", 1, values={"doc": "x" * 4000})
    latest = put_chain(saver, "t/1", 1, values={"doc": "y" * 4000}, parent=first["configurable"]["checkpoint_id"])
    wire = Wire(saver)
    url = saver.presigned_url(first, part="manifest", expires=60)
    assert wire.count() == 0  # signing is local
    manifest = json.loads(urllib.request.urlopen(url).read())
    assert manifest["checkpoint_id"] == first["configurable"]["checkpoint_id"]
    body = urllib.request.urlopen(saver.presigned_url(root("t/1"))).read()  # the latest, stored form
    frame = ormsgpack.unpackb(gzip.decompress(body))
    assert frame["format"] == 1 and frame["parent_checkpoint_id"] == first["configurable"]["checkpoint_id"]
    assert saver.get_tuple(root("t/1")).config == latest
    with pytest.raises(ValueError, match="604800"):
        saver.presigned_url(first, expires=604801)
    with pytest.raises(ValueError, match="part"):
        saver.presigned_url(first, part="writes")
    with pytest.raises(S3CheckpointError, match="no checkpoint"):
        saver.presigned_url(root("nobody"))
    small = saver_on(server)
    put_chain(small, "t", 1, values={"doc": "z" * 4000})
    manifest = json.loads(urllib.request.urlopen(small.presigned_url(root("t"), part="manifest")).read())
    frame = ormsgpack.unpackb(gzip.decompress(base64.b64decode(manifest["payload"]["inline"])))
    assert frame["values"]["doc"][0] == "msgpack"


# --- batch save and delete -------------------------------------------------------------------------------


def test_put_many_and_delete_checkpoints(server):
    saver = saver_on(server)
    items = []
    for thread in ("a", "b"):
        for step in range(3):
            items.append((root(thread), checkpoint({"n": step}, step), {"source": "loop", "step": step}, {"n": step + 1}))
    configs = saver.put_many(items)
    assert [c["configurable"]["checkpoint_id"] for c in configs] == [i[1]["id"] for i in items]
    assert [t.metadata["step"] for t in saver.list({"configurable": {"thread_id": "a"}})] == [2, 1, 0]
    saver.put_writes(configs[0], [("ch", 1)], "task")

    wire = Wire(saver)
    deleted = saver.delete_checkpoints([configs[0], configs[4]])
    assert deleted == 3  # two manifests (payloads inside), one write
    assert sum(1 for m, url in wire.sent if m == "POST" and "delete" in url) == 2  # manifests, then the rest
    assert [t.metadata["step"] for t in saver.list({"configurable": {"thread_id": "a"}})] == [2, 1]
    assert [t.metadata["step"] for t in saver.list({"configurable": {"thread_id": "b"}})] == [2, 0]
    entries = [k.split("/", 4)[4] for k in keys(server, saver.bucket, saver.prefix + "changes/") if "/delete/" in k]
    assert sorted(entries) == sorted(
        f"delete/{t}/_/{c['configurable']['checkpoint_id']}" for t, c in (("a", configs[0]), ("b", configs[4]))
    )
    assert saver.delete_checkpoints([configs[0]]) == 0  # already gone: nothing, no entry
    with pytest.raises(ValueError, match="checkpoint_id"):
        saver.delete_checkpoints([root("a")])


def test_put_many_writes_every_whole_checkpoint_when_one_fails(moto_s3):
    saver = saver_on(moto_s3, max_attempts=1)
    items = [(root(t), checkpoint({"n": 1}), {"source": "loop", "step": 0}, {"n": 1}) for t in ("ok-1", "bad", "ok-2")]

    def refuse_bad(request, **kwargs):
        if "/threads/bad/" in request.url:
            body = b"<Error><Code>InternalError</Code><Message>no</Message></Error>"
            return AWSResponse(request.url, 500, {"Content-Type": "application/xml"}, _Body(body))
        return None

    saver.client.meta.events.register("before-send.s3.PutObject", refuse_bad, unique_id="refuse-bad")
    with pytest.raises(Exception, match="InternalError"):
        saver.put_many(items)
    assert saver.get_tuple(root("ok-1")) is not None and saver.get_tuple(root("ok-2")) is not None
    assert saver.get_tuple(root("bad")) is None


# --- multipart, encryption ---------------------------------------------------------------------------------


def test_large_objects_go_up_in_parts_encrypted_and_versioned(server):
    saver = saver_on(server, sse="AES256")
    saver.enable_versioning()
    big = random.Random(6).randbytes(6 * MB)  # incompressible: stays above 5 MB after gzip
    wire = Wire(saver)
    stored = saver.put(root("big"), checkpoint({"blob": big}), {"source": "input", "step": -1}, {"blob": 1})
    saver.put_writes(stored, [("blob", big)], "task")
    saver.put_writes(stored, [("blob", b"small")], "task")  # kept: the big write stays
    sent = [url for m, url in wire.sent]
    assert sum("uploads" in url and "uploadId" not in url for url in sent) == 2  # two multipart uploads
    got = saver.get_tuple(stored)
    assert got.checkpoint["channel_values"]["blob"] == big
    assert got.pending_writes == [("task", "blob", big)]
    client = server.client()
    for key in keys(server, saver.bucket, saver.prefix + "threads/"):
        assert client.head_object(Bucket=saver.bucket, Key=key)["ServerSideEncryption"] == "AES256", key
    manifest = json.loads(client.get_object(Bucket=saver.bucket, Key=saver.manifest_key("big", "", stored["configurable"]["checkpoint_id"]))["Body"].read())
    assert manifest["payload"]["bytes"] > 5 * MB and manifest["payload"]["version_id"]


def test_a_failed_part_aborts_the_upload_and_leaves_no_manifest(moto_s3):
    saver = saver_on(moto_s3, max_attempts=1)

    def refuse_part(request, **kwargs):
        if "partNumber=2" in request.url:
            body = b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        return None

    saver.client.meta.events.register("before-send.s3.UploadPart", refuse_part, unique_id="refuse-part")
    big = random.Random(11).randbytes(11 * MB)
    with pytest.raises(Exception, match="SlowDown"):
        saver.put(root("big"), checkpoint({"blob": big}), {"source": "input", "step": -1}, {"blob": 1})
    assert not any(k.endswith("manifest.json") for k in keys(moto_s3, saver.bucket))
    assert moto_s3.client().list_multipart_uploads(Bucket=saver.bucket).get("Uploads", []) == []
    assert saver.get_tuple(root("big")) is None


def test_the_saver_pools_a_connection_per_concurrent_request(moto_s3):
    assert saver_on(moto_s3, max_workers=12).client.meta.config.max_pool_connections == 24
    assert saver_on(moto_s3, max_workers=2).client.meta.config.max_pool_connections == 10


def test_retries_of_a_request_that_failed_in_the_end_are_counted(moto_s3):
    registry = CollectorRegistry()
    saver = saver_on(moto_s3, max_attempts=3, registry=registry)
    stored = put_chain(saver, "t", 1)

    def always_slow(request, **kwargs):
        body = b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))

    saver.client.meta.events.register("before-send.s3.GetObject", always_slow, unique_id="always-slow")
    with pytest.raises(Exception, match="SlowDown"):
        saver.get_tuple(stored)
    assert registry.get_sample_value("s3saver_retries_total") == 2
    assert registry.get_sample_value("s3saver_operations_total", {"operation": "get_tuple", "outcome": "error"}) == 1


# --- the manifest's refs (docs/s3-layout.md §2) --------------------------------------------------------------


def _listed_manifests(server, saver):
    """[(manifest, payload size, payload ETag)] of every checkpoint, from one listing (as a reader sees them)."""
    from checkpoints import s3layout

    client = server.client()
    base = saver.prefix + "threads/"
    objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=saver.bucket, Prefix=base)
               for o in page.get("Contents", [])]
    found = []
    for g in s3layout.groups(objects, base, nested=True):
        body = client.get_object(Bucket=saver.bucket, Key=base + g.rel_dir + "manifest.json")["Body"].read()
        found.append((json.loads(body), g.sizes.get("payload"), g.payload_etag, body))
    return found


def test_manifests_record_the_references_found_by_the_consoles_rules(server):
    from checkpoints import decode, s3layout

    saver = saver_on(server)
    doc = f"s3://{saver.bucket}/uploads/u1/report.pdf"
    values = {"messages": [{"content": f"see {doc} and file:///srv/blobs/a.txt"}], "n": 1, "raw": b"\x00s3://b/in-bytes\x00"}
    stored = saver.put(root("r"), checkpoint(values), {"source": "input", "step": -1}, {k: 1 for k in values})
    saver.put(stored, checkpoint({"n": 2}, step=1), {"source": "loop", "step": 0}, {"n": 2})

    (first, size, etag, _), (plain, *_) = sorted(_listed_manifests(server, saver), key=lambda m: m[0]["checkpoint_id"])
    # The same finder the sync applies to the payload's values, channel by channel.
    typed = {k: saver.serde.dumps_typed(v) for k, v in values.items()}
    expected = {k: sorted(decode.references_in(*t)[0]) for k, t in typed.items() if decode.references_in(*t)[0]}
    assert first["refs"] == expected == {"messages": sorted([doc, "file:///srv/blobs/a.txt"]), "raw": ["s3://b/in-bytes"]}
    assert plain["refs"] == {}
    # The payload a reader lists beside the manifest is the one it was written with (size and
    # ETag agree on this server), so the reader may trust the field.
    assert s3layout.manifest_refs(first, size, etag) == {k: set(v) for k, v in expected.items()}


def test_an_encrypted_saver_records_no_refs_nor_any_uri(server):
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    saver = saver_on(server, serde=EncryptedSerializer.from_pycryptodome_aes(key=b"0123456789abcdef"))
    doc = f"s3://{saver.bucket}/uploads/secret/plan.pdf"
    saver.put(root("e"), checkpoint({"doc": doc}), {"source": "input", "step": -1}, {"doc": 1})

    [(manifest, _, _, body)] = _listed_manifests(server, saver)
    assert manifest["values"]["doc"]["type"].endswith("+aes")
    assert "refs" not in manifest and b"secret/plan.pdf" not in body
