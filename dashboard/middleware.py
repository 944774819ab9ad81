"""Refuse requests holding a NUL character before anything reads them.

PostgreSQL text cannot hold NUL, so a `%00` in a query parameter or a path
segment used to reach the database and come back as a 500. No thread id, tag,
source name or page number can contain one: the request is refused whole,
before the session or an API token is looked up. The API and /metrics answer
in JSON, like their other errors.
"""

from django.core.exceptions import BadRequest
from django.http import JsonResponse

MESSAGE = "the request holds a NUL character (%00), which no parameter or path may contain"
JSON_PREFIXES = ("/api/", "/metrics")


def holds_nul(path: str, query) -> bool:
    """Whether the decoded path, or a name or value of the query, holds NUL.

    >>> from django.http import QueryDict
    >>> holds_nul("/threads/", QueryDict("q=a%00")), holds_nul("/a\\x00/", QueryDict("")), holds_nul("/", QueryDict("%00=1"))
    (True, True, True)
    >>> holds_nul("/threads/a%00/", QueryDict("q=%2500"))
    False
    """
    if "\x00" in path:
        return True
    return any("\x00" in key or any("\x00" in v for v in values) for key, values in query.lists())


class RejectNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if holds_nul(request.path_info, request.GET):
            if request.path_info.startswith(JSON_PREFIXES):
                return JsonResponse({"error": MESSAGE}, status=400)
            # Django's handler400 renders the page (and logs a warning, not an error).
            raise BadRequest(MESSAGE)
        return self.get_response(request)
