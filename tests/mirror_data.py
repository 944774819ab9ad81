"""Mirror rows for the dashboard's tests, and the fixtures they share.

`build_mirror` writes a varied mirror through the ORM (the shape the sync
produces) and returns the plan it followed, so that tests compute what each
page and API answer must be from the plan, never from hard-coded numbers.
Tests on real LangGraph data use `synced_source` (real graphs, then the real
sync).
"""

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import pytest
from django.contrib.auth.models import Group, User

from checkpoints.ids import uuid6_floor
from checkpoints.models import BlobReference, Checkpoint, DailyUsage, ReferenceUse, Source, Tag, Thread
from checkpoints.tags import extract_tags
from checkpoints.usage import external_bytes

# Tag values a browser must survive: SQL-looking, quote-laden, non-ASCII, separators.
TRICKY_VALUES = ["x' OR 1=1 --", 'say "hi" \\ o\'k', "ünï çødé 東京", "a:b:c", "100%_done", "  spaced  "]
TENANTS = ["acme", "globex", "initech"] + TRICKY_VALUES
PLANS = ["free", "pro", "enterprise"]
REGIONS = ["eu", "us"]
SECRET = "sk-live-THIS-MUST-NEVER-SHOW"


@dataclass
class PlannedThread:
    source: str
    thread_id: str
    tags: dict
    checkpoints: list = field(default_factory=list)  # dicts of Checkpoint fields
    pk: int | None = None

    @property
    def stored_bytes(self):
        return sum(c["new_bytes"] for c in self.checkpoints)

    @property
    def last_checkpoint_at(self):
        return max(c["created_at"] for c in self.checkpoints)

    @property
    def latest_root(self):
        return max((c for c in self.checkpoints if c["checkpoint_ns"] == ""), key=lambda c: c["checkpoint_id"])


@dataclass
class Plan:
    sources: list
    threads: list
    references: list  # (BlobReference, [thread ids])
    today: object
    limit: int

    def matching(self, pairs, source=None):
        return [
            t for t in self.threads
            if all(t.tags.get(k) == v for k, v in pairs) and (source is None or t.source == source)
        ]


def _checkpoint_id(moment, rng):
    # A real uuid6 at `moment` (low bits random), as LangGraph writes them.
    base = uuid.UUID(uuid6_floor(moment)).int
    return str(uuid.UUID(int=base | rng.getrandbits(48)))


def build_mirror(*, sources=("alpha", "beta"), threads_per_source=40, seed=7, limit=10_000_000, days=60):
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.date()
    plan = Plan(sources=[], threads=[], references=[], today=today, limit=limit)
    for s_index, name in enumerate(sources):
        source = Source.objects.create(
            name=name, url=f"sqlite:////nonexistent/{name}-{uuid.uuid4().hex[:6]}.db", kind="sqlite",
            last_sync_at=now - timedelta(minutes=3 + s_index), last_sync_ok=s_index == 0,
            last_error="" if s_index == 0 else "cannot open: no such file",
        )
        plan.sources.append(source)
        for i in range(threads_per_source):
            tenant = TENANTS[i % len(TENANTS)]
            meta_tags = {"tenant": tenant, "plan": PLANS[i % len(PLANS)], "region": REGIONS[(i // 3) % 2],
                         "priority": i % 4, "urgent": i % 5 == 0, "api_key": SECRET}
            thread_id = f"{name}-thread-{i:03d}" if i % 7 else f"{name}/odd id {i} ünï?&#%"
            planned = PlannedThread(name, thread_id, extract_tags(meta_tags, ["*key*"]))
            count = 1 + (i * 3 + s_index) % 9
            start = now - timedelta(days=rng.randrange(1, days), hours=rng.randrange(0, 24))
            parent, logical = "", 0
            for n in range(count):
                created = min(start + timedelta(hours=6 * n, seconds=rng.randrange(60)), now - timedelta(seconds=n))
                # State grows each step; a checkpoint adds its row, its writes and the changed blobs.
                grown = rng.randrange(800, 60_000)
                if i == 5 and n == 4:
                    grown *= 40  # a spike on thread 5
                if i == 3 and n == count - 1:
                    grown = limit + 5_000_000  # one checkpoint above CHECKPOINT_SIZE_LIMIT
                logical += grown
                cid = _checkpoint_id(created, rng)
                planned.checkpoints.append({
                    "checkpoint_ns": "", "checkpoint_id": cid, "parent_checkpoint_id": parent,
                    "created_at": created, "step": n - 1, "origin": "input" if n == 0 else "loop",
                    "metadata": {"source": "input" if n == 0 else "loop", "step": n - 1, "parents": {}, **meta_tags},
                    "row_bytes": 300 + n, "blob_bytes": logical - 400 - n, "write_bytes": 100,
                    "write_count": 1, "logical_bytes": logical, "new_bytes": grown + 400 if n else logical,
                })
                parent = cid
            if i % 10 == 0:
                # a subgraph checkpoint under the latest root checkpoint
                root = planned.checkpoints[-1]
                created = root["created_at"] + timedelta(milliseconds=5)
                planned.checkpoints.append({
                    "checkpoint_ns": f"sub:{uuid.UUID(int=rng.getrandbits(128))}", "checkpoint_id": _checkpoint_id(created, rng),
                    "parent_checkpoint_id": "", "created_at": created, "step": 0, "origin": "loop",
                    "metadata": {"source": "loop", "step": 0, "parents": {"": root["checkpoint_id"]}},
                    "row_bytes": 200, "blob_bytes": 0, "write_bytes": 0, "write_count": 0,
                    "logical_bytes": 200, "new_bytes": 200,
                })
            plan.threads.append(planned)
        _write_daily_usage(source, [t for t in plan.threads if t.source == name], today, days)

    by_name = {s.name: s for s in plan.sources}
    threads = Thread.objects.bulk_create([
        Thread(
            source=by_name[p.source], thread_id=p.thread_id, checkpoints=len(p.checkpoints),
            first_checkpoint_at=min(c["created_at"] for c in p.checkpoints),
            last_checkpoint_at=p.last_checkpoint_at, latest_checkpoint_id=p.latest_root["checkpoint_id"],
            logical_bytes=p.latest_root["logical_bytes"], stored_bytes=p.stored_bytes, tags=p.tags,
        )
        for p in plan.threads
    ])
    for p, thread in zip(plan.threads, threads):
        p.pk = thread.pk
    Tag.objects.bulk_create([
        Tag(source=t.source, thread=t, key=k, value=v) for p, t in zip(plan.threads, threads) for k, v in p.tags.items()
    ])
    Checkpoint.objects.bulk_create([
        Checkpoint(source=t.source, thread=t, **c) for p, t in zip(plan.threads, threads) for c in p.checkpoints
    ], batch_size=1000)

    states = [("present", True, 123_456), ("missing", False, 2_000), ("unchecked", None, None)]
    for j, (state, exists, size) in enumerate(states):
        ref = BlobReference.objects.create(
            uri=f"s3://bucket/uploads/{state}-{j}.pdf", store="s3", exists=exists, size=size,
            checked_at=None if exists is None else datetime.now(UTC),
        )
        users = [t for t in plan.threads if t.tags.get("tenant") == "acme"][: 2 + j]
        for planned in users:
            thread = Thread.objects.get(pk=planned.pk)
            cp = Checkpoint.objects.filter(thread=thread, checkpoint_id=planned.latest_root["checkpoint_id"]).get()
            ReferenceUse.objects.create(reference=ref, thread=thread, checkpoint=cp, location="value:attachment")
        plan.references.append((ref, [t.thread_id for t in users]))
    # As the sync captures it: today's row holds the distinct present objects' bytes.
    for source in plan.sources:
        DailyUsage.objects.filter(source=source, day=today).update(external_bytes=external_bytes(source))
    return plan


def _write_daily_usage(source, threads, today, days):
    rows, totals = [], {"checkpoints": 0, "bytes": 0, "threads": 0}
    by_day = {}
    for t in threads:
        for c in t.checkpoints:
            by_day.setdefault(c["created_at"].date(), []).append(c)
    for d in range(days, -1, -1):
        day = today - timedelta(days=d)
        added = by_day.get(day, [])
        totals["checkpoints"] += len(added)
        totals["bytes"] += sum(c["new_bytes"] for c in added)
        rows.append(DailyUsage(
            source=source, day=day, checkpoints=totals["checkpoints"], stored_bytes=totals["bytes"],
            checkpoint_bytes=totals["bytes"] // 10, blob_bytes=totals["bytes"] - totals["bytes"] // 10 - totals["checkpoints"] * 100,
            write_bytes=totals["checkpoints"] * 100, external_bytes=123_456 if d < 20 else 0,
            checkpoints_added=len(added), bytes_added=sum(c["new_bytes"] for c in added),
        ))
    DailyUsage.objects.bulk_create(rows)


def synced_source(url, name="real"):
    """Register a LangGraph database as a source and run the real sync on it."""
    from checkpoints.sources.registry import kind_of
    from checkpoints.sync import sync_source

    source = Source.objects.create(name=name, url=url, kind=kind_of(url))
    result = sync_source(source, full=True)
    assert result["error"] is None, result
    source.refresh_from_db()
    return source


def day_start(day):
    return datetime.combine(day, time.min, tzinfo=UTC)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def static_settings(settings):
    """Plain static storage (no manifest needed before collectstatic) and the plotly finder."""
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    settings.STATICFILES_FINDERS = [
        "django.contrib.staticfiles.finders.FileSystemFinder",
        "django.contrib.staticfiles.finders.AppDirectoriesFinder",
        "dashboard.staticfinders.PlotlyFinder",
    ]


def make_user(username, group=None, **extra):
    user = User.objects.create_user(username, password="pw-" + username, **extra)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def viewer(db):
    return make_user("vera", "viewer")


@pytest.fixture
def operator(db):
    return make_user("otto", "operator")


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


def clear_mirror():
    Source.objects.all().delete()  # cascades to threads, tags, checkpoints, uses, usage
    BlobReference.objects.all().delete()


@pytest.fixture(scope="module")
def shared_mirror(django_db_setup, django_db_blocker):
    """One mirror per test module, committed; each test still runs in its own rolled-back transaction."""
    with django_db_blocker.unblock():
        clear_mirror()
        plan = build_mirror()
    yield plan
    with django_db_blocker.unblock():
        clear_mirror()


@pytest.fixture
def mirror(db, shared_mirror):
    return shared_mirror
