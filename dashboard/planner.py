"""What PostgreSQL's planner knows about sizes, for sizing samples without a scan."""

import json

from django.db import connection


def estimated_rows(queryset) -> float:
    """The planner's estimate of the rows `queryset` returns (EXPLAIN; PostgreSQL only)."""
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return float(plan[0]["Plan"]["Plan Rows"])


def table_rows(model) -> float | None:
    """The planner's row count of a table (pg_class, not a scan); None before its first ANALYZE."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
        row = cursor.fetchone()
    return float(row[0]) if row and row[0] >= 0 else None
