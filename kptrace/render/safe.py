"""Text from inputs, made safe to show: control characters are printed escaped (`\\x1b`), never raw.

Rule comments, chain names, file and tar member names and tools' messages come from dumps other
people wrote. Sent raw to a terminal, ESC starts a sequence that moves the cursor or rewrites the
screen (CSI), makes a link (OSC 8) or writes the user's clipboard (OSC 52); C1 controls (U+0080 to
U+009F) do the same on terminals that read them, and bidi overrides make a line read differently
from what it says. In SVG a raw C0 character makes the document invalid XML. Tab and newline are
kept (they move the cursor, nothing else) unless the text must stay on one line.

`printable` is the one helper. The console `safe_console` makes applies it to strings it is given
(before markup and layout) and, as a last guard, to every piece of text it prints after layout, so
nothing that reaches it can carry a raw control character. Escaping after layout makes a line longer
than was measured (a terminal may wrap it, a crop may cut it), so renderers apply `printable` to
input strings before they build rich Text, and columns line up.
This module imports rich only when a console is made: `-o json` never needs it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.console import Console, ConsoleOptions, RenderableType
    from rich.segment import Segment

_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_UNSAFE_ONE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\u2028\u2029]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(m: re.Match[str]) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: str, one_line: bool = False) -> str:
    """`text` with every control character escaped (tab and newline kept, unless `one_line`)."""
    return (_UNSAFE_ONE_LINE if one_line else _UNSAFE).sub(_escape, text)


def is_printable(text: str) -> bool:
    return _UNSAFE.search(text) is None


def _console_class() -> type[Console]:
    from rich.console import Console
    from rich.segment import Segment
    from rich.text import Text

    class SafeConsole(Console):
        """A rich Console whose strings and text segments go through `printable`; its own control
        codes (styles, cursor moves of a progress bar) are made after rendering and are kept."""

        def render_str(self, text: str, **kwargs: Any) -> Text:
            return super().render_str(printable(text), **kwargs)

        def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
            for seg in super().render(renderable, options):
                if seg.control is None and not is_printable(seg.text):
                    yield Segment(printable(seg.text), seg.style)
                else:
                    yield seg

    return SafeConsole


_CLASS: list[type[Console]] = []


def safe_console(**kwargs: Any) -> Console:
    """A rich Console (same arguments) that never prints a raw control character from its text."""
    if not _CLASS:
        _CLASS.append(_console_class())
    return _CLASS[0](**kwargs)
