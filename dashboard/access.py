"""Who may see what (docs/architecture.md §4, permissions).

Pages need a login and the read permission the `viewer` and `operator`
groups carry; the JSON API and /metrics also accept a bearer token and answer
401/403 in JSON instead of redirecting, since scripts cannot follow a login
form.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render

from dashboard.tokens import bearer_token, user_for_token

VIEW_PERM = "checkpoints.view_thread"


def viewer_required(view):
    @wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        if not request.user.has_perm(VIEW_PERM):
            return render(request, "dashboard/forbidden.html", {}, status=403)
        return view(request, *args, **kwargs)

    return wrapped


def _unauthorized(message):
    response = JsonResponse({"error": message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="checkpoint-console"'
    return response


def api_auth(view):
    """A session login or `Authorization: Bearer <token>`; never a redirect."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        header = request.headers.get("Authorization", "")
        if header:
            token = bearer_token(header)
            if token is None:
                return _unauthorized("unsupported Authorization header: use 'Bearer <token>'")
            user = user_for_token(token)
            if user is None:
                return _unauthorized("invalid or revoked token")
            request.user = user
        elif not request.user.is_authenticated:
            return _unauthorized("authentication required: log in or send 'Authorization: Bearer <token>'")
        if not request.user.has_perm(VIEW_PERM):
            return JsonResponse({"error": "permission denied: the user is in neither the viewer nor the operator group"}, status=403)
        return view(request, *args, **kwargs)

    return wrapped
