"""Links to a thread page whose id came from an end user.

A thread id is whatever an agent passed as `thread_id`: newlines, `%`, `?`,
`#`, `../`, anything but NUL. Django's reverse() escapes all of that except
"/", so an id with a "." or ".." segment gives a link that browsers rewrite
before asking (dot-segment removal, which also treats "%2e" as a dot) and an
empty segment ("a//b") one that proxies merge. Such ids get every "/"
escaped as %2F; the server decodes it back, so the route still receives the
id as it is. An id that is only "." or ".." cannot be a path segment at all
and goes in the query string of the source's thread route instead.
"""

from urllib.parse import quote, urlencode

from django.urls import register_converter, reverse
from django.utils.http import RFC3986_SUBDELIMS

# What Django's reverse() leaves unescaped in a path, "/" aside.
SAFE = RFC3986_SUBDELIMS + "~:@"


class ThreadIdConverter:
    """Any thread id but an empty one or one holding NUL (no database takes NUL in text).

    Django's `path` converter is `.+`, which stops at a newline.
    """

    regex = r"[^\x00]+"

    def to_python(self, value):
        return value

    def to_url(self, value):
        return value


register_converter(ThreadIdConverter, "thread_id")


def quote_thread_id(thread_id: str) -> str:
    """The thread id as a path part that browsers and proxies keep as it is.

    >>> quote_thread_id("user/42/chat ü")
    'user/42/chat%20%C3%BC'
    >>> quote_thread_id("../etc?x#y%"), quote_thread_id("a//b\\n"), quote_thread_id("...")
    ('..%2Fetc%3Fx%23y%25', 'a%2F%2Fb%0A', '...')
    """
    segments = thread_id.split("/")
    keep_slash = len(segments) == 1 or not any(s in ("", ".", "..") for s in segments)
    return quote(thread_id, safe=SAFE + ("/" if keep_slash else ""))


def thread_pattern() -> str:
    """The thread route with placeholders, reversed once for a page of links."""
    return reverse("thread", args=["SOURCE", "THREAD"])


def thread_path(source: str, thread_id: str, pattern: str | None = None) -> str:
    """The path of a thread's page.

    >>> thread_path("s", "a/../b", "/threads/SOURCE/THREAD/")
    '/threads/s/a%2F..%2Fb/'
    >>> thread_path("s", "..", "/threads/SOURCE/THREAD/")
    '/threads/s/?thread_id=..'
    """
    head, tail = (pattern or thread_pattern()).split("SOURCE/THREAD")
    if thread_id in (".", ".."):
        return f"{head}{source}/?{urlencode({'thread_id': thread_id})}"
    return f"{head}{source}/{quote_thread_id(thread_id)}{tail}"
