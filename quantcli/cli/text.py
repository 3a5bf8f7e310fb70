"""Text from outside (paths, node and tensor names, file contents, error messages quoting them)
on its way to a terminal: never parsed as Rich markup, never able to send escape sequences.

Rich reads ``[...]`` in any ``str`` it prints as markup, so ``model[v2].onnx`` loses its brackets
and ``x[/bold].onnx`` raises a MarkupError. And a node name holding ``ESC [ 2 J`` would clear the
screen of whoever reads the report. Both helpers keep the characters visible as written; control
characters become their Python escapes (``\\x1b``), so what is shown can be typed back.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

__all__ = ["markup", "shown", "text"]

# C0 controls but tab and newline, DEL, and the C1 controls (CSI is U+009B).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(value: object) -> str:
    """``value`` as a string whose control characters are visible escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def markup(value: object) -> str:
    """``value`` ready to sit inside a Rich markup string, printed exactly as :func:`shown`."""
    return escape(shown(value))


def text(value: object, style: str = "") -> Text:
    """``value`` as a Rich ``Text``: a table cell or title that is never parsed as markup."""
    return Text(shown(value), style=style)
