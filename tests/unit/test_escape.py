"""Agents' text is shown, not obeyed: `escape_text` and `escape_lines`."""

from __future__ import annotations

import pytest

from supervisor.escape import CONTINUATION, escape_lines, escape_text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, tabs\tand ünïcode ✓", "plain text, tabs\tand ünïcode ✓"),
        ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
        ("ok\rFAKE", "ok\\rFAKE"),
        ("a\n12:00:00.000 supervisor | INFO forged", "a\\n12:00:00.000 supervisor | INFO forged"),
        ("\x00\x7f\x9b31m\x85", "\\x00\\x7f\\x9b31m\\x85"),  # NUL, DEL, C1 CSI, C1 NEL
        ("abc\u202edcba\u2028x\u2066", "abc\\u202edcba\\u2028x\\u2066"),
        ("C:\\path\\x1b", "C:\\path\\x1b"),  # backslashes are left as they are
    ],
)
def test_escape_text_shows_control_characters(text: str, shown: str) -> None:
    assert escape_text(text) == shown


def test_plain_text_is_returned_as_is() -> None:
    text = "nothing to escape here"
    assert escape_text(text) is text
    assert escape_lines(text) is text


def test_escape_lines_indents_every_line_after_the_first() -> None:
    text = "Traceback:\n  File x\nValueError: a\n12:00:00.000 supervisor | INFO forged\x1b[0m"
    shown = escape_lines(text)
    assert shown.split("\n") == [
        "Traceback:",
        CONTINUATION + "  File x",
        CONTINUATION + "ValueError: a",
        CONTINUATION + "12:00:00.000 supervisor | INFO forged\\x1b[0m",
    ]
