"""Model instances from a hand-written statement, as the ORM would build them.

A queryset is compiled to SQL on every evaluation; on the console's hot pages
that compilation, not the database, was most of a query's cost. A statement
written once per process from the models' own columns, read here through the
converters the ORM applies to each column (SQLite's dates from text, JSON),
gives the same instances for a fraction of it. Used where a page runs the
same few statements on every view (dashboard.page_rows, dashboard.lineage,
dashboard.sessions).
"""

from django.db import connections


class Shape:
    """The columns of some models read side by side, and how each value comes out of the database."""

    def __init__(self, alias, tables):
        """`tables`: (model, table alias) pairs, read side by side; any columns after theirs come as they are."""
        connection = connections[alias]
        qn = connection.ops.quote_name
        self.models, self.columns, self.converters = [], [], []
        for model, table_alias in tables:
            fields = model._meta.concrete_fields
            self.models.append((model, len(fields)))
            for field in fields:
                self.columns.append(f"{table_alias}.{qn(field.column)}")
                col = field.get_col(table_alias)
                convs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
                self.converters.append((convs, col) if convs else None)
        self.alias = alias

    def instances(self, row):
        """[an instance per model..., then the extra values as they came]."""
        connection = connections[self.alias]
        values = list(row)
        for i, conv in enumerate(self.converters):
            if conv is not None:
                convs, col = conv
                for c in convs:
                    values[i] = c(values[i], col, connection)
        out, start = [], 0
        for model, n in self.models:
            out.append(model.from_db(self.alias, None, values[start:start + n]))
            start += n
        return out + values[start:]


def rows(sql, shape, params):
    """Each row of `sql` as [instance per model..., extra values...]."""
    with connections[shape.alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [shape.instances(row) for row in cursor.fetchall()]
