"""Matching generated questions back to the template that wrote them (for the generator tests)."""

from __future__ import annotations

import re


def template_regex(text: str) -> re.Pattern[str]:
    """A template as a regex: any unit spelling, any case (questions are sometimes lower-cased),
    final punctuation optional (sometimes dropped)."""
    pattern = re.escape(text.rstrip("?."))
    for name in ("q", "src", "src_name", "dst", "units"):
        pattern = pattern.replace(re.escape("{" + name + "}"), ".+?")
    return re.compile(f"^{pattern}[.?]?$", re.IGNORECASE)
