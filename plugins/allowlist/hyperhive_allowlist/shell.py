"""Split a Bash command line into simple commands, the way bash would, or refuse it.

This understands the part of bash's grammar an allow-list can judge: words with
``'…'``, ``"…"`` and ``\\`` quoting, comments, line continuations, the control
operators ``&&``, ``||``, ``;``, ``|``, ``|&``, ``&`` and newlines, redirections
(``>``, ``>>``, ``>|``, ``<``, ``<>``, ``&>``, ``&>>``, ``N>&M``, ``<<``, ``<<-``,
``<<<``) and here-documents. Everything that makes bash compute a command rather
than read it — ``$`` expansions of any kind, backticks, ``( … )`` subshells,
process substitution, ``case`` syntax — raises :class:`Refused` with the reason.
So does anything malformed: the checker fails closed.

Stdlib only: the checker imports it inside the agent's sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

METACHARACTERS = frozenset(" \t\n;&|<>()")
CONTROL = ("&&", "||", ";;&", ";;", ";&", "|&", ";", "|", "&")
REDIRECTIONS = ("&>>", "&>", "<<<", "<<-", "<<", "<>", "<&", ">>", ">|", ">&", "<", ">")
OPERATORS = sorted(CONTROL + REDIRECTIONS + ("<(", ">(", "(", ")"), key=len, reverse=True)
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")


class Refused(ValueError):
    """The command cannot be judged; the message says why, for the agent to read."""


@dataclass
class Word:
    """One shell word, quotes removed, with what bash would still do to it."""

    text: str
    raw: str
    """The word as written, quotes and escapes included."""
    start: int
    end: int
    chars_quoted: list[bool] = field(repr=False)

    @property
    def quoted(self) -> bool:
        return any(self.chars_quoted)

    @property
    def glob(self) -> bool:
        """Bash would expand it as a filename pattern (an unquoted ``*``, ``?`` or ``[``)."""
        return any(char in "*?[" and not quoted for char, quoted in zip(self.text, self.chars_quoted, strict=True))

    @property
    def braces(self) -> bool:
        """Bash might brace-expand it (``{a,b}``, ``{1..3}``) into several words."""
        opened = separated = False
        previous = ""
        for char, quoted in zip(self.text, self.chars_quoted, strict=True):
            if not quoted and char == "{":
                opened = True
            elif opened and (char == "," or (char == "." and previous == ".")):
                separated = True
            elif not quoted and char == "}" and separated:
                return True
            previous = char
        return False

    @property
    def tilde(self) -> bool:
        """Bash would replace its leading ``~`` with a home directory."""
        return self.text.startswith("~") and not self.chars_quoted[0]

    @property
    def expands(self) -> bool:
        """Bash may turn it into other words, several or none (so also into options)."""
        return self.glob or self.braces

    @property
    def literal(self) -> bool:
        """Bash passes it on exactly as :attr:`text`."""
        return not (self.expands or self.tilde)

    @property
    def assignment(self) -> bool:
        """It is ``NAME=value`` (or ``NAME+=value``) with an unquoted name: a variable assignment."""
        found = ASSIGNMENT.match(self.text)
        return found is not None and not any(self.chars_quoted[: found.end()])


@dataclass
class Redirect:
    """A redirection of one simple command."""

    op: str
    target: Word
    body: str | None = None
    """A here-document's text."""

    @property
    def writes(self) -> bool:
        """It opens its target for writing (creating or truncating it)."""
        return self.op in (">", ">>", ">|", "<>", "&>", "&>>")


@dataclass
class Part:
    """One simple command: its words and redirections, and its text for messages."""

    words: list[Word]
    redirects: list[Redirect]
    text: str


@dataclass
class _Operator:
    op: str
    start: int
    end: int
    heredoc: Redirect | None = None


def split_commands(source: str) -> list[Part]:
    """The simple commands in ``source``, in order; :class:`Refused` for anything else."""
    return _Parser(source).parts()


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.index = 0
        self.pending: list[tuple[Redirect, bool, bool]] = []  # here-docs whose body follows the line

    def parts(self) -> list[Part]:
        parts: list[Part] = []
        words: list[Word] = []
        redirects: list[Redirect] = []
        span: list[int] = []  # source offsets of the current part's tokens
        last_control = None
        tokens = self._tokens()
        position = 0
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if isinstance(token, Word):
                words.append(token)
            elif token.op in REDIRECTIONS:
                target = token.heredoc.target if token.heredoc else None
                if target is None:
                    following = tokens[position] if position < len(tokens) else None
                    if not isinstance(following, Word):
                        raise Refused(f"syntax error: `{token.op}` needs a target")
                    target = following
                    position += 1
                redirects.append(self._redirect(token, target, words))
                span += [target.end]
            elif not words and not redirects:
                if token.op != "\n":  # blank lines, and a newline after `&&` or `|`, are fine
                    raise Refused(f"syntax error: nothing before `{token.op}`")
                continue
            else:
                parts.append(Part(words, redirects, self.source[min(span) : max(span)].strip()))
                words, redirects, span = [], [], []
                last_control = token.op
                continue
            span += [token.start, token.end]
        if words or redirects:
            parts.append(Part(words, redirects, self.source[min(span) : max(span)].strip()))
        elif last_control in ("&&", "||", "|", "|&"):
            raise Refused(f"syntax error: the command ends with `{last_control}`")
        return parts

    def _redirect(self, token: _Operator, target: Word, words: list[Word]) -> Redirect:
        """The redirection; a file descriptor number written against it (``2>``) is not a word."""
        # `2&>x` is the word 2 and then `&>x`: only the other operators take a descriptor.
        if words and words[-1].end == token.start and not words[-1].quoted and token.op not in ("&>", "&>>"):
            if words[-1].text.isdigit():
                words.pop()
            elif words[-1].text.startswith("{") and words[-1].text.endswith("}"):
                raise Refused(f"named file descriptors (`{words[-1].text}{token.op}`) are not allowed")
        return token.heredoc or Redirect(token.op, target)

    # -- lexing -------------------------------------------------------------------

    def _tokens(self) -> list[Word | _Operator]:
        tokens: list[Word | _Operator] = []
        source = self.source
        while self.index < len(source):
            char = source[self.index]
            if char in " \t":
                self.index += 1
            elif source.startswith("\\\n", self.index):
                self.index += 2
            elif char == "#":
                newline = source.find("\n", self.index)
                self.index = len(source) if newline < 0 else newline
            elif char == "\n":
                tokens.append(_Operator("\n", self.index, self.index + 1))
                self.index += 1
                self._read_heredoc_bodies()
            elif char in METACHARACTERS:
                tokens.append(self._operator())
            else:
                tokens.append(self._word())
        if self.pending:
            raise Refused(f"the here-document `{self.pending[0][0].target.text}` is never ended")
        return tokens

    def _operator(self) -> _Operator:
        start = self.index
        op = next(op for op in OPERATORS if self.source.startswith(op, start))
        self.index += len(op)
        if op in ("<(", ">("):
            raise Refused(f"process substitution `{op}…)` is not allowed")
        if op in ("(", ")"):
            raise Refused("`(` and `)` (subshells, function definitions, arrays) are not allowed")
        if op in (";;", ";&", ";;&"):
            raise Refused(f"`{op}` (case syntax) is not allowed")
        token = _Operator(op, start, self.index)
        if op in ("<<", "<<-"):
            while self.index < len(self.source) and self.source[self.index] in " \t":
                self.index += 1
            if self.index == len(self.source) or self.source[self.index] in METACHARACTERS:
                raise Refused(f"syntax error: `{op}` needs a delimiter word")
            delimiter = self._word()
            token.heredoc = Redirect(op, delimiter)
            token.end = delimiter.end
            self.pending.append((token.heredoc, delimiter.quoted, op == "<<-"))
        return token

    def _read_heredoc_bodies(self) -> None:
        source = self.source
        for redirect, quoted, strip_tabs in self.pending:
            lines = []
            while True:
                if self.index >= len(source):
                    raise Refused(f"the here-document `{redirect.target.text}` is never ended")
                newline = source.find("\n", self.index)
                stop = len(source) if newline < 0 else newline
                line = source[self.index : stop]
                self.index = stop + 1
                if strip_tabs:
                    line = line.lstrip("\t")
                if line == redirect.target.text:
                    break
                lines.append(line)
            body = "\n".join(lines)
            if not quoted and any(char in body for char in "$`\\"):
                raise Refused(
                    f"the here-document `{redirect.target.text}` contains $, ` or \\, which bash would expand; "
                    f"quote its delimiter (<<'{redirect.target.text}') to pass the text as written"
                )
            redirect.body = body
        self.pending = []
        self.index = min(self.index, len(source))

    def _word(self) -> Word:
        source = self.source
        start = self.index
        text: list[str] = []
        quoted: list[bool] = []
        while self.index < len(source):
            char = source[self.index]
            if char in METACHARACTERS:
                break
            if char == "\\":
                if self.index + 1 == len(source):
                    raise Refused("the command ends with a lone backslash")
                if source[self.index + 1] != "\n":  # a backslash-newline joins lines
                    text.append(source[self.index + 1])
                    quoted.append(True)
                self.index += 2
            elif char == "'":
                close = source.find("'", self.index + 1)
                if close < 0:
                    raise Refused("a single quote is never closed")
                text.extend(source[self.index + 1 : close])
                quoted.extend([True] * (close - self.index - 1))
                self.index = close + 1
            elif char == '"':
                self._double_quoted(text, quoted)
            elif char == "$":
                raise Refused(_expansion(source, self.index))
            elif char == "`":
                raise Refused("backticks (command substitution) are not allowed")
            else:
                text.append(char)
                quoted.append(False)
                self.index += 1
        return Word("".join(text), source[start : self.index], start, self.index, quoted)

    def _double_quoted(self, text: list[str], quoted: list[bool]) -> None:
        source = self.source
        self.index += 1
        while self.index < len(source):
            char = source[self.index]
            if char == '"':
                self.index += 1
                return
            if char == "\\" and self.index + 1 < len(source) and source[self.index + 1] in '$`"\\\n':
                if source[self.index + 1] != "\n":
                    text.append(source[self.index + 1])
                    quoted.append(True)
                self.index += 2
                continue
            if char == "$":
                raise Refused(_expansion(source, self.index))
            if char == "`":
                raise Refused("backticks (command substitution) are not allowed")
            text.append(char)
            quoted.append(True)
            self.index += 1
        raise Refused("a double quote is never closed")


def _expansion(source: str, index: int) -> str:
    """Why a ``$`` at ``index`` is refused, naming what bash would do with it."""
    following = source[index + 1 : index + 3]
    if following.startswith("(("):
        what = "arithmetic expansion `$((…))`"
    elif following.startswith("("):
        what = "command substitution `$(…)`"
    elif following.startswith("{"):
        what = "parameter expansion `${…}`"
    elif following.startswith("'"):
        what = "ANSI-C quoting `$'…'`"
    elif following.startswith('"'):
        what = 'locale quoting `$"…"`'
    else:
        what = "`$` (variable expansion)"
    return (
        f"{what} is not allowed: the allow-list judges commands as written, so write values out "
        "(in single quotes when they hold a `$`)"
    )
