"""The SQLite source's space report (its reader's `space()`), ready for the pages: the file's pages
and free pages, and a warning when most of the file is free."""

TEMPLATE = "space/sqlite.html"
BRIEF_TEMPLATE = "space/sqlite_brief.html"


def report(found: dict) -> dict:
    """`found` with `warn` (more pages free than used) and `warnings`.

    >>> report({"kind": "sqlite", "page_size": 4096, "page_count": 10, "free_pages": 6})["warnings"]
    ['6 of 10 pages are free: the file shrinks only after VACUUM']
    """
    warn = found["free_pages"] * 2 > found["page_count"]
    warnings = [f"{found['free_pages']:,} of {found['page_count']:,} pages are free: the file shrinks only after VACUUM"]
    return {**found, "warn": warn, "warnings": warnings if warn else []}
