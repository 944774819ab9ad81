"""PostgreSQL stores (langgraph-checkpoint-postgres's PostgresSaver): the `postgres` SourceKind.

reader.py: the sync's snapshot reads, incremental by transaction ids;
values.py: one checkpoint's values for the checkpoint page and the state API;
maintenance.py: prune's per-thread transactions, vacuum and disk space.
recheck.py: the sweep's re-check of candidate keys; orphans.py: the orphan rows it deletes.
Logical decoding (checkpoints/sources/capture.py) is PostgreSQL's too.
"""

from checkpoints.dburl import parse_database_url, redact
from checkpoints.sources.postgres.reader import PostgresReader


class PostgresKind:
    name = "postgres"
    shares_blobs = True  # checkpoint_blobs rows are named by every checkpoint whose channel_versions name them
    logical_capture = True  # checkpoints/sources/capture.py
    layout_reads_data = False

    def check_url(self, url):
        if not parse_database_url(url)["ENGINE"].endswith("postgresql"):
            raise ValueError(f"not a PostgreSQL URL: {redact(url)}")

    def reader(self, url, *, connect_timeout=10):
        return PostgresReader(url, connect_timeout=connect_timeout)

    def read_values(self, url, key, parent, *, limit, aes_key=None, digest=False, memo=None):
        from checkpoints.sources.postgres.values import read_values

        return read_values(url, key, parent, limit=limit, aes_key=aes_key, digest=digest)

    def read_writes(self, url, key, *, limit, aes_key=None, digest=False, memo=None):
        from checkpoints.sources.postgres.values import read_writes

        return read_writes(url, key, limit=limit, aes_key=aes_key, digest=digest)

    def maintenance(self, url):
        from checkpoints.sources.postgres.maintenance import PostgresMaintenance

        return PostgresMaintenance(url)

    def recheck(self, url):
        from checkpoints.sources.postgres.recheck import PostgresRecheck

        return PostgresRecheck(url)

    def orphans(self, url, floor, *, dry_run):
        from checkpoints.sources.postgres.orphans import orphans

        return orphans(url, floor, dry_run=dry_run)

    def owned_prefixes(self, url):
        return None  # a database: no object in a blob store is the store's own

    def space_report(self, found):
        from checkpoints.sources.postgres import space

        return {**space.report(found), "template": space.TEMPLATE, "brief_template": space.BRIEF_TEMPLATE}


KIND = PostgresKind()
