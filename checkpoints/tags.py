"""Tags: the scalar user metadata of a thread's latest root checkpoint.

LangGraph copies every scalar from `config["metadata"]` and
`config["configurable"]` into checkpoint metadata; those keys are what users
browse threads by. Secrets travel the same way, so keys matching TAG_EXCLUDE
are never tags and their values are redacted wherever metadata is shown.
"""

import fnmatch
import functools
import json
import re

# Keys LangGraph itself writes into metadata (docs/architecture.md §3, Tags contract).
LANGGRAPH_KEYS = frozenset(
    {
        "source", "step", "parents", "writes", "thread_id", "checkpoint_ns",
        "checkpoint_id", "run_id", "counters_since_delta_snapshot",
    }
)
REDACTED = "[redacted]"
MAX_KEY = 200
MAX_VALUE = 500


def is_excluded(key: str, patterns) -> bool:
    """Whether a key matches one of the TAG_EXCLUDE patterns, in any case.

    >>> is_excluded("OPENAI_API_KEY", ["*key*"]), is_excluded("tenant", ["*key*"])
    (True, False)
    >>> is_excluded("x", []), is_excluded("a[b", ["a[b"]), is_excluded("ab", ["a?"])
    (False, True, True)
    """
    return _exclusion(tuple(patterns)).match(key.lower()) is not None


@functools.lru_cache(maxsize=16)
def _exclusion(patterns: tuple):
    """One compiled regex for all the patterns: a sync tests every metadata key of every thread."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p.lower())})" for p in patterns))


def tag_value(value):
    """The text of a scalar metadata value, or None for what is not a tag.

    >>> tag_value("acme"), tag_value(True), tag_value(2), tag_value(1.5), tag_value(None)
    ('acme', 'true', '2', '1.5', None)
    >>> tag_value({"a": 1}) is None, tag_value([1]) is None
    (True, True)
    """
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return None


def extract_tags(metadata, patterns) -> dict:
    """Tags of one checkpoint's metadata.

    A key or value holding a NUL character is no tag: PostgreSQL's text
    cannot store it, and no one types it into a filter.

    >>> extract_tags({"source": "loop", "step": 3, "tenant": "acme", "api_key": "s",
    ...               "urgent": True, "n": None, "cfg": {"a": 1}, "nul": "a\\x00b"}, ["*key*"])
    {'tenant': 'acme', 'urgent': 'true'}
    """
    if not isinstance(metadata, dict):
        return {}
    tags = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or key in LANGGRAPH_KEYS or is_excluded(key, patterns):
            continue
        text = tag_value(value)
        if text is None or len(key) > MAX_KEY or "\x00" in key or "\x00" in text:
            continue
        tags[key] = text[:MAX_VALUE]
    return tags


def redact_metadata(metadata, patterns):
    """Metadata for display, with excluded keys' values replaced at any depth.

    >>> redact_metadata({"tenant": "a", "auth_token": "s", "nested": {"password": "p"}}, ["*token*", "*password*"])
    {'tenant': 'a', 'auth_token': '[redacted]', 'nested': {'password': '[redacted]'}}
    """
    if isinstance(metadata, dict):
        return {
            k: REDACTED if isinstance(k, str) and is_excluded(k, patterns) else redact_metadata(v, patterns)
            for k, v in metadata.items()
        }
    if isinstance(metadata, list):
        return [redact_metadata(v, patterns) for v in metadata]
    return metadata


SEPARATORS = (":", "=")


def split_tag(text: str, separator: str = ":"):
    """Split a tag filter at its first separator, `:` or `=`, whichever comes first.

    Every surface takes both spellings: `tenant:acme` (the documented one, as
    in URLs) and `TENANT=acme` (what the prune command took first). The value
    keeps any later separator; a key holding `:` or `=` cannot be written.
    `separator` only names the spelling an error message asks for.

    >>> split_tag("url:http://x:1"), split_tag("expr=a=b"), split_tag("url=http://x:1"), split_tag("t:a=b")
    (('url', 'http://x:1'), ('expr', 'a=b'), ('url', 'http://x:1'), ('t', 'a=b'))
    >>> split_tag("tenant:"), split_tag("plan=free tier")
    (('tenant', ''), ('plan', 'free tier'))
    >>> split_tag("nokey")
    Traceback (most recent call last):
    ...
    ValueError: 'nokey' is not key:value
    >>> split_tag("=v", "=")
    Traceback (most recent call last):
    ...
    ValueError: '=v' is not key=value
    """
    text = str(text)
    cut = min((i for i in (text.find(s) for s in SEPARATORS) if i >= 0), default=-1)
    if cut <= 0:
        raise ValueError(f"{text!r} is not key{separator}value")
    return text[:cut], text[cut + 1:]
