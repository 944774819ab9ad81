"""Django's database sessions, loaded by a statement written once per process.

Every logged-in request loads its session first; the ORM compiled that
`Session.objects.get(session_key=..., expire_date__gt=now)` anew each time,
which cost more than the database's answer. This store reads the same row
with the same conditions through dashboard.rowreader, fresh from the
database on every request (nothing cached: a logout or an expiry applies to
the next request in every process). Writing, creating and deleting sessions
are Django's own. Sessions are stored as before: switching to or from this
engine logs nobody out.
"""

import logging
from functools import lru_cache

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.models import Session
from django.core.exceptions import SuspiciousOperation
from django.db import connections, router
from django.utils import timezone

from dashboard.rowreader import Shape, rows


@lru_cache(maxsize=None)
def _sql(alias):
    qn = connections[alias].ops.quote_name
    shape = Shape(alias, [(Session, "s")])
    sql = (f"SELECT {', '.join(shape.columns)} FROM {qn(Session._meta.db_table)} s"
           f" WHERE s.{qn('session_key')} = %s AND s.{qn('expire_date')} > %s")
    return sql, shape


class SessionStore(DatabaseSessionStore):
    def _get_session_from_db(self):
        try:
            alias = router.db_for_read(Session)
            now = connections[alias].ops.adapt_datetimefield_value(timezone.now())
            found = rows(*_sql(alias), [self.session_key, now])
        except SuspiciousOperation as e:  # as Django's store does
            logging.getLogger(f"django.security.{e.__class__.__name__}").warning(str(e))
            found = []
        if not found:
            self._session_key = None
            return None
        return found[0][0]
