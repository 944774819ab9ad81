"""SQLite stores (langgraph-checkpoint-sqlite's SqliteSaver): the `sqlite` SourceKind.

reader.py: the sync's snapshot reads, incremental by rowids;
values.py: one checkpoint's values for the checkpoint page and the state API;
maintenance.py: prune's per-thread transactions, vacuum and disk space.
recheck.py: the sweep's re-check of candidate keys; orphans.py: the orphan rows it deletes.
"""

from checkpoints.dburl import parse_database_url
from checkpoints.sources.sqlite.reader import SqliteReader


class SqliteKind:
    name = "sqlite"
    shares_blobs = False  # each checkpoint is stored whole: no blob table
    logical_capture = False
    layout_reads_data = False

    def check_url(self, url):
        if not parse_database_url(url)["ENGINE"].endswith("sqlite3"):
            raise ValueError(f"not a SQLite URL: {url}")

    def reader(self, url, *, connect_timeout=10):
        return SqliteReader(url)

    def read_values(self, url, key, parent, *, limit, aes_key=None, digest=False, memo=None):
        from checkpoints.sources.sqlite.values import read_values

        return read_values(url, key, parent, limit=limit, aes_key=aes_key, digest=digest)

    def read_writes(self, url, key, *, limit, aes_key=None, digest=False, memo=None):
        from checkpoints.sources.sqlite.values import read_writes

        return read_writes(url, key, limit=limit, aes_key=aes_key, digest=digest)

    def maintenance(self, url):
        from checkpoints.sources.sqlite.maintenance import SqliteMaintenance

        return SqliteMaintenance(url)

    def recheck(self, url):
        from checkpoints.sources.sqlite.recheck import SqliteRecheck

        return SqliteRecheck(url)

    def orphans(self, url, floor, *, dry_run):
        from checkpoints.sources.sqlite.orphans import orphans

        return orphans(url, floor, dry_run=dry_run)

    def owned_prefixes(self, url):
        return None  # a database: no object in a blob store is the store's own

    def space_report(self, found):
        from checkpoints.sources.sqlite import space

        return {**space.report(found), "template": space.TEMPLATE, "brief_template": space.BRIEF_TEMPLATE}


KIND = SqliteKind()
