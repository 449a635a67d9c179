"""Checking output quoted in the README or docs against what a command prints on this machine.

A quoted run is one machine's run: its figures may differ in the last digits on another CPU
(docs/reproducibility.md), so quoted output is compared as text with numbers in it -- the same
words, and each number within a tolerance the caller states and justifies -- never digit for
digit.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# a number as the CLI prints one: optional sign, digits with optional thousands commas, optional
# decimals and exponent; not part of a word (an id, a version such as v1, a path)
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")


def split_numbers(text: str) -> tuple[str, list[float]]:
    """``text`` with every number replaced by ``#`` and runs of spaces by one (column widths
    follow the numbers), and the numbers, in order."""
    numbers = [float(m.group().replace(",", "")) for m in NUMBER.finditer(text)]
    return re.sub(r"[ \t]+", " ", NUMBER.sub("#", text)).strip(), numbers


def assert_reads_as(printed: str, quoted: str, tolerance: float | Callable[[int, float], float]) -> None:
    """``printed`` says what ``quoted`` says: the same text around the numbers, and number ``i``
    within ``tolerance`` (absolute; or ``tolerance(i, quoted_value)``) of the quoted one."""
    text_p, got = split_numbers(printed)
    text_q, want = split_numbers(quoted)
    assert text_p == text_q, f"the output reads differently:\n  printed: {text_p}\n  quoted:  {text_q}"
    tol = tolerance if callable(tolerance) else (lambda i, q: tolerance)
    off = [(i, g, w, tol(i, w)) for i, (g, w) in enumerate(zip(got, want)) if not abs(g - w) <= tol(i, w)]
    assert not off, (
        "numbers outside their tolerance (index, printed, quoted, tolerance): "
        + "; ".join(f"{i}: {g:g} vs {w:g} (tol {t:g})" for i, g, w, t in off)
        + f"\n  printed: {printed}\n  quoted:  {quoted}"
    )
