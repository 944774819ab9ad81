import psycopg

from tests.graphs import run_scenarios


def test_scenarios_write_real_rows_to_postgres(pg_saver, pg_source_url):
    threads = run_scenarios(pg_saver)
    with psycopg.connect(pg_source_url) as conn:
        found = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        namespaces = {r[0] for r in conn.execute("SELECT DISTINCT checkpoint_ns FROM checkpoints")}
    assert found == set(threads)
    assert any(":" in ns for ns in namespaces), "the subgraph wrote its own namespace"


def test_scenarios_write_real_rows_to_sqlite(sqlite_saver):
    threads = run_scenarios(sqlite_saver)
    rows = sqlite_saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()
    assert {r[0] for r in rows} == set(threads)
