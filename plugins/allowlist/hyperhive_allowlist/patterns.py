"""Allow-list patterns, in Claude Code's ``Bash(…)`` rule grammar.

A pattern is matched against a whole simple command as written: its words, quotes
and all, joined by single spaces. Like Claude Code, ``git status`` does not match
``git "status"``.

- ``*`` matches any text, spaces included: ``git * main`` matches ``git push origin main``.
- A pattern ending in `` *`` (space, star) with no other ``*`` also matches the bare
  command: ``git *`` matches ``git`` and ``git status``, not ``gitk``.
- ``name*`` has no word boundary: ``pytest*`` matches ``pytest``, ``pytest-3`` and
  ``pytest tests/``.
- The legacy suffix ``:*`` means the same as `` *``: ``git:*`` matches ``git`` and
  ``git status``, not ``gitk``.
- Anything else must match exactly. A pattern may not contain a backslash: Claude
  Code 2.1.330 reads ``\\*`` inconsistently, so a ``*`` is always a wildcard.

Stdlib only: the checker imports it inside the agent's sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PATTERNS = 200
MAX_PATTERN_LENGTH = 500
WILD = "\0"  # marks a wildcard in a split pattern; a pattern never contains NUL


class BadPattern(ValueError):
    """A pattern the allow-list cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class Pattern:
    """One compiled allow-list pattern."""

    source: str
    segments: tuple[str, ...] = field(repr=False)
    """The literal text around the wildcards: one more than there are ``*``."""
    bare: str | None = field(repr=False)
    """The command alone, which a final `` *`` also allows (``git`` for ``git *``)."""
    literal_words: frozenset[str] = field(repr=False)
    name: str | None
    """The command name when the pattern spells it out (its first word has no ``*``)."""

    def matches(self, command: str) -> bool:
        """Whether ``command`` (words joined by single spaces) is allowed by this pattern.

        Linear time whatever the pattern, so no command can make the checker hang.
        """
        return command == self.bare or segments_match(self.segments, command)

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


def segments_match(segments: tuple[str, ...] | list[str], text: str) -> bool:
    """Whether ``text`` is ``segments`` joined by stretches of any text (``*``), in linear time."""
    if len(segments) == 1:
        return text == segments[0]
    first, *middle, last = segments
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    position = len(first)
    for segment in middle:  # leftmost matches are always safe with `*` as the only wildcard
        found = text.find(segment, position, end)
        if found < 0:
            return False
        position = found + len(segment)
    return True


def compile_pattern(source: str) -> Pattern:
    """Parse and compile one pattern; :class:`BadPattern` says what is wrong with it."""
    problem = _text_problem(source)
    if problem:
        raise BadPattern(f"pattern {source!r} {problem}")
    legacy = source.endswith(":*")
    marked = (source[:-2] if legacy else source).replace("*", WILD)
    if legacy:
        if WILD in marked:
            raise BadPattern(f"pattern {source!r} mixes the legacy ':*' suffix with other '*'; write it with ' *'")
        marked += " " + WILD
    segments = tuple(marked.split(WILD))
    bare = segments[0][:-1] if len(segments) == 2 and segments[0].endswith(" ") and not segments[1] else None
    words = marked.split(" ")
    return Pattern(
        source=source,
        segments=segments,
        bare=bare,
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
    if "\\" in source:
        return "contains a backslash; Claude Code reads escapes inconsistently, so '*' is always a wildcard"
    if "  " in source:
        return "contains two spaces in a row; commands are matched with single spaces between words"
    return None


def compile_patterns(sources: list[str]) -> list[Pattern]:
    """Compile a whole list; the first bad pattern raises :class:`BadPattern`."""
    if len(sources) > MAX_PATTERNS:
        raise BadPattern(f"has {len(sources)} patterns; at most {MAX_PATTERNS} are allowed")
    return [compile_pattern(source) for source in sources]
