"""How deeply a JSON text or a decoded value nests objects and arrays, measured without
recursion: json and pydantic recurse once per level, so a submitted spec's depth is bounded
(core/spec.py, MAX_SPEC_DEPTH) before either of them sees it.
"""

from __future__ import annotations

import re
from typing import Any

# A JSON string, escapes included (possessive: linear time even on an unterminated one).
_JSON_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether the JSON `text` nests objects and arrays deeper than `limit`, found without
    parsing it: each pass drops the innermost empty pairs (one level: re.sub does not rescan
    what it produced), in C. A text that is not JSON (unbalanced brackets) answers False and
    is left to the parser to report."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        shorter = _EMPTY_PAIR.sub("", brackets)
        if shorter == brackets:
            return False
        brackets = shorter
    # Anything still removable after `limit` passes was nested deeper than `limit`.
    return _EMPTY_PAIR.search(brackets) is not None


def value_depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded value, counted without recursion and at most limit + 1."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list, tuple)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children)
    return deepest
