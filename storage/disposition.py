"""Content-Disposition headers for downloads (RFC 6266 with RFC 8187 `filename*`).

The file name comes from an object key that an agent chose, so it is
untrusted: it must not split the header (CR/LF), break out of the quoted
string, name a path, or spoof an extension with bidirectional controls.
"""

import unicodedata
from urllib.parse import quote

MAX_NAME = 150
# attr-char of RFC 8187 beyond what quote() always keeps (letters, digits, _.-~).
_ATTR_SAFE = "!#$&+^`|"


def clean_filename(name: str) -> str:
    """A file name fit to offer: last path segment, no control characters, not empty.

    >>> clean_filename("../../etc/passwd")
    'passwd'
    >>> clean_filename("a\\r\\nSet-Cookie: x=1.txt")
    'a__Set-Cookie: x=1.txt'
    >>> clean_filename("invoice\\u202egpj.exe")
    'invoice_gpj.exe'
    >>> clean_filename("  ..hidden  "), clean_filename("dir\\\\name.txt"), clean_filename("...")
    ('hidden', 'dir_name.txt', 'download')
    >>> len(clean_filename("x" * 300 + ".pdf")), clean_filename("x" * 300 + ".pdf")[-4:]
    (150, '.pdf')
    """
    name = unicodedata.normalize("NFC", str(name)).replace("\\", "_").rsplit("/", 1)[-1]
    # Categories C*: controls, format characters (bidi overrides), surrogates, unassigned.
    name = "".join("_" if unicodedata.category(c)[0] == "C" else c for c in name)
    name = name.strip(" .")
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            name = stem[: MAX_NAME - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_NAME]
    return name or "download"


def ascii_fallback(name: str) -> str:
    """The `filename=` value: printable ASCII without quote, backslash or percent.

    >>> ascii_fallback('r\\u00e9sum\\u00e9 "final" 100%.pdf')
    'r_sum_ _final_ 100_.pdf'
    """
    return "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)


def attachment_header(filename: str) -> str:
    """`attachment` with a sanitised name; `filename*` carries the exact UTF-8 name when needed.

    >>> attachment_header("report.pdf")
    'attachment; filename="report.pdf"'
    >>> print(attachment_header("r\\u00e9sum\\u00e9.pdf"))
    attachment; filename="r_sum_.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf
    >>> print(attachment_header('say "hi".txt'))
    attachment; filename="say _hi_.txt"; filename*=UTF-8''say%20%22hi%22.txt
    >>> "\\r" in attachment_header("a\\r\\nb") or "\\n" in attachment_header("a\\r\\nb")
    False
    """
    name = clean_filename(filename)
    fallback = ascii_fallback(name)
    header = f'attachment; filename="{fallback}"'
    if fallback != name:
        header += "; filename*=UTF-8''" + quote(name, safe=_ATTR_SAFE)
    return header
