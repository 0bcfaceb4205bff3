"""Agents' text is shown, not obeyed: control characters escaped for terminals and logs.

An agent's output, its ``STATUS=`` text, its exception texts and ids reach text logs and
`supervisor status`. Written raw, an ESC sequence would drive the reader's terminal
(clear it, retitle it, hide what follows), a ``\\r`` would overwrite the start of the
line, and a newline would forge a log line of its own. `escape_text` turns each such
character into a visible escape (``\\x1b``, ``\\r``, ``\\n``, ``\\u202e``), so that one
agent line is one log line and looks like what it is (docs/operations.md, "Agent text").

Escaped: the C0 controls but tab (U+0000-U+001F), DEL, the C1 controls (U+0080-U+009F),
the Unicode line and paragraph separators, and the bidirectional overrides and isolates
that reorder what a terminal shows. Backslashes are left alone: the text stays readable
(paths, regexes), at the cost of an agent being able to print a literal ``\\x1b``.
Only the standard library is imported: the CLI uses this too.
"""

from __future__ import annotations

import re

__all__ = ["escape_lines", "escape_text"]

_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
# What each line after the first of a multi-line record starts with: never a timestamp,
# so a line at column 0 is always a record's first.
CONTINUATION = "    "


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """`text` on one line, its control characters shown as escapes (``\\x1b``, ``\\n``).

    Text without any is returned as it is, at the cost of one regex search.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def escape_lines(text: str) -> str:
    """Multi-line `text` (a traceback, the supervisor's list of problems) made safe:
    each line escaped, and every line after the first indented by `CONTINUATION`."""
    if _UNSAFE.search(text) is None:
        return text
    return ("\n" + CONTINUATION).join(escape_text(line) for line in text.split("\n"))
