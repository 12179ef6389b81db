"""Every JSON the dashboard reads from a request, parsed with its nesting bounded.

The app's JSON provider is :class:`BoundedJSONProvider`, so ``request.get_json`` in
any route, a plugin's included, goes through :func:`loads`. A body nested thousands
deep would otherwise end in a ``RecursionError`` (a 500), in the parser or in
whatever walks the result; here it is a 400 that says so. Bodies over the app's
``MAX_CONTENT_LENGTH`` get a 413 before anything parses them.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from quart.json.provider import DefaultJSONProvider

from hyperhive_core import HyperhiveError

# Far deeper than anything the dashboard or a plugin route takes; far shallower than Python's recursion limit.
MAX_DEPTH = 64


class TooDeep(HyperhiveError):
    """A JSON document nested deeper than ``MAX_DEPTH``."""


# Valid JSON without its strings and without every byte but brackets is its nesting, e.g. ``[{}[]]``
# (in UTF-8, no byte of another character is a bracket).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads``, refusing a document nested deeper than ``MAX_DEPTH`` with :class:`TooDeep`."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        # The C parser unwinds cleanly at the recursion limit, having built nothing.
        deep = True
    else:
        deep = nesting_exceeds(text, MAX_DEPTH)
    if deep:
        raise TooDeep(
            f"the JSON body nests deeper than {MAX_DEPTH} levels; the dashboard takes flat objects, "
            'like {"body": "hello"}'
        )
    return value


def nesting_exceeds(document: str | bytes, limit: int) -> bool:
    """Whether valid JSON ``document`` nests lists and objects more than ``limit`` deep.

    A linear scan of its brackets, mostly in C: a few hundred ms at most for a 4 MiB
    body (bench/login_guard.py), where walking the parsed value in Python would take
    seconds for one of ``[],[],…`` (a million lists).
    """
    text = document.decode(json.detect_encoding(document)) if isinstance(document, bytes) else document
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = (_STRING.sub("", text) if '"' in text else text).encode().translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


class BoundedJSONProvider(DefaultJSONProvider):
    """The app's JSON provider: :func:`loads` for requests and websockets alike."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)
