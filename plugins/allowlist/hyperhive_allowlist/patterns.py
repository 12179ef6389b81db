"""Allow-list patterns, in Claude Code's ``Bash(…)`` rule grammar.

A pattern is matched against a whole simple command: its words, quotes removed,
joined by single spaces (``git commit -m "a b"`` is matched as ``git commit -m a b``).

- ``*`` matches any text, spaces included: ``git * main`` matches ``git push origin main``.
- A pattern ending in `` *`` (space, star) with no other ``*`` also matches the bare
  command: ``git *`` matches ``git`` and ``git status``, not ``gitk``.
- ``name*`` has no word boundary: ``pytest*`` matches ``pytest``, ``pytest-3`` and
  ``pytest tests/``.
- The legacy suffix ``:*`` means the same as `` *``: ``git:*`` matches ``git`` and
  ``git status``, not ``gitk``.
- ``\\*`` is a literal star and ``\\\\`` a literal backslash.
- Anything else must match exactly.

Stdlib only: the checker imports it inside the agent's sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_PATTERNS = 200
MAX_PATTERN_LENGTH = 500
STAR = object()  # a wildcard, among the literal pieces of a parsed pattern
WILD = "\0"


class BadPattern(ValueError):
    """A pattern the allow-list cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class Pattern:
    """One compiled allow-list pattern."""

    source: str
    regex: re.Pattern[str] = field(repr=False, compare=False)
    literal_words: frozenset[str] = field(repr=False, compare=False)
    name: str | None = field(compare=False)
    """The command name when the pattern spells it out (its first word has no ``*``)."""

    def matches(self, command: str) -> bool:
        return self.regex.fullmatch(command) is not None

    def names(self, token: str, *, as_command: bool = False) -> bool:
        """Whether the pattern spells ``token`` out literally, not through a ``*``.

        :param as_command: the token is a command name, so it must be the pattern's first word.
        """
        if as_command:
            return self.name == token
        for word in self.literal_words:
            if word == token or word.startswith(token + "="):
                return True
            if len(token) == 2 and token.startswith("-") and word.startswith(token) and not word.startswith("--"):
                return True  # an attached short option: -c names -c
        return False


def compile_pattern(source: str) -> Pattern:
    """Parse and compile one pattern; :class:`BadPattern` says what is wrong with it."""
    problem = _text_problem(source)
    if problem:
        raise BadPattern(f"pattern {source!r} {problem}")
    legacy = source.endswith(":*")
    pieces = _pieces(source[:-2] if legacy else source)
    if legacy:
        if STAR in pieces:
            raise BadPattern(f"pattern {source!r} mixes the legacy ':*' suffix with other '*'; write it with ' *'")
        pieces = [*pieces, " ", STAR]
    regex = "".join(".*" if piece is STAR else re.escape(str(piece)) for piece in pieces)
    if pieces[-2:] == [" ", STAR] and pieces.count(STAR) == 1:
        regex = regex.removesuffix(re.escape(" ") + ".*") + "(?: .*)?"  # `git *` matches `git` too
    # NUL never occurs in a pattern: it marks the wildcards, so an escaped `\*` stays literal.
    words = "".join(WILD if piece is STAR else str(piece) for piece in pieces).split(" ")
    return Pattern(
        source=source,
        regex=re.compile(regex, re.DOTALL),
        literal_words=frozenset(word for word in words if WILD not in word),
        name=words[0] if WILD not in words[0] else None,
    )


def pattern_problem(source: object) -> str | None:
    """Why ``source`` is not a usable pattern, in a sentence; ``None`` when it is."""
    if not isinstance(source, str):
        return f"pattern {source!r} must be a string"
    try:
        compile_pattern(source)
    except BadPattern as exc:
        return str(exc)
    return None


def _text_problem(source: object) -> str | None:
    if not isinstance(source, str):
        return "must be a string"
    if not source.strip():
        return "is empty; write a command such as 'git status' or 'git *'"
    if len(source) > MAX_PATTERN_LENGTH:
        return f"is longer than {MAX_PATTERN_LENGTH} characters"
    if source != source.strip():
        return "starts or ends with whitespace; remove it"
    if any(ord(char) < 32 or ord(char) == 127 for char in source):
        return "contains a newline, NUL or other control character"
    if "(" in source or ")" in source:
        return "contains a parenthesis, which Claude Code's Bash(…) rule cannot carry; use '*' for that part"
    if source.startswith("*") or source.startswith(":"):
        return "must start with the command's name (a leading '*' would allow every program)"
    if "  " in source:
        return "contains two spaces in a row; commands are matched with single spaces between words"
    return None


def _pieces(body: str) -> list[object]:
    """Literal strings and ``STAR`` markers, escapes resolved."""
    pieces: list[object] = []
    literal: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            if index + 1 == len(body) or body[index + 1] not in "*\\":
                raise BadPattern(f"pattern {body!r} has a backslash that escapes neither '*' nor '\\'")
            literal.append(body[index + 1])
            index += 2
            continue
        if char == "*":
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(STAR)
        else:
            literal.append(char)
        index += 1
    if literal:
        pieces.append("".join(literal))
    return _split_trailing_space(pieces)


def _split_trailing_space(pieces: list[object]) -> list[object]:
    """Make a final `` *`` two pieces, ``" "`` and ``STAR``, so it is easy to recognise."""
    if len(pieces) >= 2 and pieces[-1] is STAR and isinstance(pieces[-2], str) and pieces[-2].endswith(" "):
        head = pieces[-2][:-1]
        return [*pieces[:-2], *([head] if head else []), " ", STAR]
    return pieces


def compile_patterns(sources: list[str]) -> list[Pattern]:
    """Compile a whole list; the first bad pattern raises :class:`BadPattern`."""
    if len(sources) > MAX_PATTERNS:
        raise BadPattern(f"has {len(sources)} patterns; at most {MAX_PATTERNS} are allowed")
    return [compile_pattern(source) for source in sources]
