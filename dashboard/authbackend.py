"""Permissions in one statement per request, read fresh each time; the user too.

Django's ModelBackend reads a user's permissions in two ORM queries (the
user's own, then their groups'), each compiled anew on every request: on a
cached checkpoint page they were a fifth of the server's time, more than the
statements themselves. `PermissionsBackend` reads the same set in one
statement, written once per process, on the first permission check of each
request (Django keeps the answer on the request's user object only, as
ModelBackend does). Nothing is kept between requests, so a permission
revoked, a group left or a user deactivated applies to the very next request.
The request's user is loaded the same way (dashboard.rowreader), as fresh.

It comes after django-axes' backend and before ModelBackend in
AUTHENTICATION_BACKENDS. ModelBackend stays listed only so that sessions
logged in through it before this backend existed still load their user
(Django refuses a session whose backend is no longer listed); it never
answers a permission question: this backend's answer is final
(PermissionDenied stops Django from asking the next backend, which would run
ModelBackend's two queries for every permission a user lacks).
"""

from functools import lru_cache

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connections, router

from dashboard.rowreader import Shape, rows


@lru_cache(maxsize=None)
def _sql(alias):
    """The user's permissions, their own and their groups', as (app label, codename) rows."""
    qn = connections[alias].ops.quote_name
    user_perms = get_user_model()._meta.get_field("user_permissions")
    user_groups = get_user_model()._meta.get_field("groups")
    group_perms = Group._meta.get_field("permissions")
    return (
        f"SELECT ct.{qn('app_label')}, p.{qn('codename')}"
        f" FROM {qn(Permission._meta.db_table)} p"
        f" JOIN {qn(ContentType._meta.db_table)} ct ON ct.{qn('id')} = p.{qn('content_type_id')}"
        f" WHERE p.{qn('id')} IN ("
        f"SELECT {qn(user_perms.m2m_reverse_name())} FROM {qn(user_perms.m2m_db_table())}"
        f" WHERE {qn(user_perms.m2m_column_name())} = %s"
        f" UNION ALL SELECT gp.{qn(group_perms.m2m_reverse_name())} FROM {qn(group_perms.m2m_db_table())} gp"
        f" JOIN {qn(user_groups.m2m_db_table())} ug ON ug.{qn(user_groups.m2m_reverse_name())} = gp.{qn(group_perms.m2m_column_name())}"
        f" WHERE ug.{qn(user_groups.m2m_column_name())} = %s)"
    )


@lru_cache(maxsize=None)
def _user_sql(alias):
    qn = connections[alias].ops.quote_name
    model = get_user_model()
    shape = Shape(alias, [(model, "u")])
    return f"SELECT {', '.join(shape.columns)} FROM {qn(model._meta.db_table)} u WHERE u.{qn(model._meta.pk.column)} = %s", shape


class PermissionsBackend(ModelBackend):
    def get_user(self, user_id):
        """ModelBackend's get_user (the user of each request's session), in a statement written once."""
        model = get_user_model()
        try:
            pk = model._meta.pk.to_python(user_id)
        except ValidationError:
            return None
        found = rows(*_user_sql(router.db_for_read(model)), [pk])
        if not found:
            return None
        user = found[0][0]
        return user if self.user_can_authenticate(user) else None

    def get_all_permissions(self, user_obj, obj=None):
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if user_obj.is_superuser:  # every permission: ModelBackend's own query
            return super().get_all_permissions(user_obj, obj)
        if not hasattr(user_obj, "_perm_cache"):
            alias = router.db_for_read(Permission)
            with connections[alias].cursor() as cursor:
                cursor.execute(_sql(alias), [user_obj.pk, user_obj.pk])
                user_obj._perm_cache = {f"{app}.{codename}" for app, codename in cursor.fetchall()}
        return user_obj._perm_cache

    def has_perm(self, user_obj, perm, obj=None):
        if super().has_perm(user_obj, perm, obj):
            return True
        raise PermissionDenied  # final: ModelBackend, listed after, is not asked again

    def has_module_perms(self, user_obj, app_label):
        if super().has_module_perms(user_obj, app_label):
            return True
        raise PermissionDenied
