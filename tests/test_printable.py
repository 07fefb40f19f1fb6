"""printable.py: text from tasks, hosts and documents shown without its control characters."""

from __future__ import annotations

import pytest

from dirt.printable import printable, printable_lines


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x9b31m\x7f", "\\x9b31m\\x7f"),
        ("\u202eevil\u2066\u2028", "\\u202eevil\\u2066\\u2028"),
        ("\udcff", "\\udcff"),
        ("café 日本 ✓", "café 日本 ✓"),
    ],
)
def test_control_characters_are_escaped_and_the_rest_is_kept(text, shown):
    assert printable(text) == shown


def test_a_limit_cuts_with_a_note():
    assert printable("x" * 10, 10) == "x" * 10
    assert printable("x" * 25, 10) == "x" * 10 + "... (15 more characters)"


def test_a_traceback_keeps_its_lines():
    assert printable_lines("Traceback:\n  \x1b[2Jline\nError") == (
        "Traceback:\n  \\x1b[2Jline\nError"
    )
