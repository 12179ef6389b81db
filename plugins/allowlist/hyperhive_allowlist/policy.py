"""The allow-list's judgement of one Bash command: every part must match a pattern.

Each simple command of the line (see :mod:`shell`) is matched on its own. Some
commands are riskier than their pattern suggests — ``bash -c``, ``git -c``,
``find -exec``, ``xargs``, a program run by path, a ``NAME=value`` prefix — so they
pass only when a matching pattern spells the risky word out: ``python3 -c *``
allows ``python3 -c 'print(1)'``, ``python3 *`` does not. Whatever a command writes —
through a redirection, or an option or operand of a program :mod:`writes` knows
(``git log --output=F``, ``sort -o F``, ``cp a F``) — must be a path the agent's
``writable`` grants allow, and never a hidden one. Anything not understood is refused.

Stdlib only: the checker imports it inside the agent's sandbox.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from hyperhive_allowlist.patterns import Pattern
from hyperhive_allowlist.shell import Part, Redirect, Refused, Word, split_commands
from hyperhive_allowlist.writable import Grant
from hyperhive_allowlist.writes import (
    DIR,
    PREFIX,
    PROGRAMS,
    REPOSITORY,
    Reading,
    Write,
    prefixed,
    read_command,
    read_git,
    read_sed,
)

MAX_COMMAND = 64 * 1024
MAX_PARTS = 100  # bounds the work per call: Claude Code lets a call through if its hook times out
HARMLESS_DEVICES = ("/dev/null", "/dev/stdout", "/dev/stderr")
# Opening one of these reopens the file its descriptor names at that moment, with write access.
STANDARD_STREAMS = ("/dev/stdout", "/dev/stderr")
# Redirections that open no file: here-documents, here-strings and duplicated descriptors.
OPENS_NO_FILE = ("<<", "<<-", "<<<", ">&", "<&")


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


CHANGES_DIRECTORY = _names("cd pushd popd")
# Shell keywords: a compound command (if, for, { …; }, [[ … ]]) is not judged part by part.
KEYWORDS = _names("! [[ ]] { } case coproc do done elif else esac fi for function if in select then time until while")
# Commands that run other commands, or change how the shell runs what follows.
RUNS_OTHERS = {
    **dict.fromkeys(
        _names(
            "eval exec source . command builtin xargs env sudo doas su runuser pkexec chroot nsenter unshare setsid "
            "stdbuf flock watch strace ltrace gdb script ionice chrt taskset parallel fakeroot busybox systemd-run"
        ),
        "runs another command",
    ),
    **dict.fromkeys(
        _names(
            "alias unalias hash enable trap set shopt bind complete compgen fc declare typeset local export readonly "
            "unset let read mapfile readarray"
        ),
        "changes how the shell runs what follows",
    ),
}

# Interpreters: the option letters that take a program on the command line, and
# those whose value is the rest of the cluster (-Werror, -Ilib), which hide no option.
INLINE_CODE = {
    "shell": "c",
    "python": "ci",
    "node": "epi",
    "perl": "eEmM",
    "php": "rRBE",
    **dict.fromkeys(("ruby", "lua", "julia", "r", "elixir"), "e"),
}
VALUE_LETTERS = {"shell": "oO", "python": "WX", "perl": "Iix", "ruby": "IrCEFKTWx0", "php": "cdfzt", "lua": "l"}
INLINE_LONG = {"shell": ("--command", "--init-command"), "node": ("--eval", "--print", "--interactive")}
STDIN_SCRIPTS = ("-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0")
OPTION_ARGUMENTS = {  # options whose value is the next word, so it is not the script
    "shell": ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"),
    "python": ("-W", "-X", "--check-hash-based-pycs"),
    "node": ("-r", "--require", "--import", "--loader", "--experimental-loader", "-C", "--conditions", "--title"),
}
INTERPRETER = re.compile(
    r"(?P<family>sh|bash|rbash|dash|zsh|ksh|mksh|ash|yash|posh|csh|tcsh|fish|python|pypy|node|nodejs|bun|"
    r"perl|ruby|php|lua|luajit|julia|Rscript|R|elixir)"
    r"[0-9.]*"
)
FAMILIES = {
    **dict.fromkeys(_names("sh bash rbash dash zsh ksh mksh ash yash posh csh tcsh fish"), "shell"),
    **dict.fromkeys(("python", "pypy"), "python"),
    **dict.fromkeys(("node", "nodejs", "bun"), "node"),
    "perl": "perl",
    "ruby": "ruby",
    "php": "php",
    "lua": "lua",
    "luajit": "lua",
    "julia": "julia",
    "Rscript": "r",
    "R": "r",
    "elixir": "elixir",
}

MAX_GLOB_MATCHES = 1000  # bounds the work of checking a glob's files
TIMEOUT_FLAGS = frozenset({"--preserve-status", "--foreground", "-v", "--verbose"})
TIMEOUT_VALUES = frozenset({"-k", "--kill-after", "-s", "--signal"})
DURATION = re.compile(r"(\d+(\.\d*)?|\.\d+)[smhd]?")


@dataclass(frozen=True)
class Risk:
    """Something in a command that a pattern must spell out to allow."""

    token: str
    why: str
    as_command: bool = False


class Denied(Exception):
    """The command is not allowed; the message is the reason the agent reads."""


@functools.cache
def installed_git_commands() -> frozenset[str]:
    """git's commands here: its builtins and the git-* programs on PATH. An alias never
    shadows one of these, so a repository's config cannot turn them into something else.
    Listing them reads no repository (it runs from /)."""
    try:
        done = subprocess.run(
            ["git", "--list-cmds=main,others"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"},
            check=False,
        )
    except OSError:
        return frozenset()
    return frozenset(done.stdout.split()) if done.returncode == 0 else frozenset()


@dataclass(frozen=True)
class Policy:
    """What one agent may run, and where it may write."""

    patterns: Sequence[Pattern]
    writable: Sequence[Grant]
    """Absolute path patterns (as the agent sees them) a command may write to."""
    git_commands: Callable[[], frozenset[str]] = field(default=installed_git_commands, compare=False)

    def check(self, command: str, cwd: str | None) -> None:
        """Raise :class:`Denied` unless every part of ``command`` is allowed.

        :param cwd: the directory the command starts in, for relative paths.
        """
        if len(command) > MAX_COMMAND:
            raise Denied(f"the command is longer than {MAX_COMMAND} characters")
        if any(ord(char) < 32 and char not in "\t\n" for char in command):
            raise Denied("the command contains a control character (NUL, carriage return, escape…)")
        try:
            parts = split_commands(command)
        except Refused as exc:
            raise Denied(f"cannot check this command: {exc}") from None
        if not parts:
            raise Denied("the command is empty")
        if len(parts) > MAX_PARTS:
            raise Denied(f"the command has {len(parts)} parts, more than {MAX_PARTS}; split it into several calls")
        for number, part in enumerate(parts, 1):
            try:
                self._check_part(part, cwd)
            except Refused as exc:
                where = f"part {number} (`{_short(part.text)}`)" if len(parts) > 1 else f"`{_short(part.text)}`"
                raise Denied(f"{where}: {exc}") from None
            if part.words and part.words[0].text in CHANGES_DIRECTORY:
                cwd = None  # relative paths after a `cd` could be anywhere

    def _check_part(self, part: Part, cwd: str | None) -> None:
        for redirect in part.redirects:
            self._check_redirect(redirect, cwd)
        if not part.words:
            raise Refused("a redirection without a command is not allowed")
        assignments = part.words[: next((i for i, w in enumerate(part.words) if not w.assignment), len(part.words))]
        risks = [Risk(word.text, "sets a variable for the command (a NAME=value prefix)") for word in assignments]
        command = unwrap(part.words[len(assignments) :])
        if not command:
            raise Refused("only sets shell variables, which is not allowed")
        reading = read_part(command, self.git_commands)
        risks += command_risks(command) + [Risk(token, why) for token, why in reading.risks]
        text = " ".join(word.raw for word in [*assignments, *command])  # as written, as Claude Code matches it
        matching = [pattern for pattern in self.patterns if pattern.matches(text)]
        if not any(all(pattern.names(r.token, as_command=r.as_command) for r in risks) for pattern in matching):
            unnamed = [r for r in risks if not any(p.names(r.token, as_command=r.as_command) for p in matching)]
            if not unnamed:  # no pattern matches, and nothing risky to explain why
                raise Refused(f"`{_short(text)}` matches none of the allowed patterns")
            token = _short(unnamed[0].token)
            raise Refused(f"`{token}` {unnamed[0].why}; only a pattern that spells out `{token}` allows it")
        _check_streams(part, reading.writes)
        for write in reading.writes:
            self._check_write(write, cwd)

    def _check_redirect(self, redirect: Redirect, cwd: str | None) -> None:
        target = redirect.target
        if redirect.op in ("<<", "<<-"):
            return
        if redirect.op in (">&", "<&"):
            if not re.fullmatch(r"\d+-?|-", target.text):
                raise Refused(f"`{redirect.op}{target.text}`: only file descriptors (2>&1) may follow `{redirect.op}`")
            return
        if redirect.op == "<<<":
            return
        if not target.literal:
            raise Refused(f"the redirection target `{target.text}` has wildcards, braces or `~`; write the path out")
        if target.text.startswith(("/dev/tcp/", "/dev/udp/")):
            raise Refused(f"`{target.text}` opens a network connection")
        if redirect.writes:
            self._check_write(Write(target, f"`{redirect.op}`"), cwd)

    def _check_write(self, write: Write, cwd: str | None) -> None:
        """Refuse ``write`` unless every path it may write is granted and not hidden."""
        word, who = write.path, write.via
        if write.kind == PREFIX:
            word = prefixed(word)
        if word.text in HARMLESS_DEVICES and write.name is None:
            return
        if word.braces or word.tilde:
            raise Refused(f"{who} writes to `{word.text}`, which has braces or `~`; write the path out")
        if "[" in word.text and word.glob:
            raise Refused(f"{who} writes to `{word.text}`, whose brackets the allow-list does not expand; use * or ?")
        text = word.text if write.name is None else os.path.join(word.text, write.name)
        starts = [self._start(text, write, cwd)] + ([] if write.also_under is None else [write.also_under])
        for start in starts:
            path = os.path.normpath(os.path.join(start, text))
            if write.kind == REPOSITORY:
                self._check_repository(path, who)
            elif word.glob:
                self._check_glob(path, who)
            else:
                self._check_path(os.path.realpath(path), path, who, new=write.kind == DIR and write.name is None)

    def _start(self, text: str, write: Write, cwd: str | None) -> str:
        """The directory a relative ``text`` is under."""
        if os.path.isabs(text):
            return "/"
        if write.unknown_base:
            raise Refused(f"{write.via} writes to `{text}` under `--work-tree`; use an absolute path")
        if write.base is not None and os.path.isabs(write.base):
            return write.base
        if cwd is None:
            raise Refused(f"{write.via} writes to `{text}` after a `cd`; use an absolute path")
        return cwd if write.base is None else os.path.join(cwd, write.base)

    def _check_path(self, resolved: str, path: str, who: str, *, new: bool = False) -> None:
        """Refuse unless ``resolved`` (``path``, symlinks followed) is granted.

        :param new: ``path`` is a directory the program writes new files into.
        """
        names = [name for name in resolved.split("/") if name]
        hidden = next((name for name in names if name.startswith(".")), None)
        # A directory written into: a new name in it, whichever the program picks.
        probe, wild_from = ([*names, "*"], len(names)) if new else (names, None)
        if any(grant.matches(probe, wild_from=wild_from) for grant in self.writable):
            return
        shown = f"`{path}`" if resolved == path else f"`{path}` (`{resolved}`)"
        grants = ", ".join(grant.source for grant in self.writable) or "nothing"
        if hidden is not None and any(grant.matches(_unhidden(names)) for grant in self.writable):
            raise Refused(
                f"{who} writes to {shown}, inside `{hidden}`: hidden files and directories configure "
                "programs (the shell, git, Claude Code) and are never writable"
            )
        raise Refused(f"{who} writes to {shown}, outside what the agent may write ({grants})")

    def _check_glob(self, path: str, who: str) -> None:
        """A glob: every name it may expand to must be granted, and so must what it matches now."""
        names = path.split("/")[1:]
        first = next(index for index, name in enumerate(names) if any(char in name for char in "*?"))
        if any(name in ("", ".", "..") for name in names[first:]):
            raise Refused(f"{who} writes to `{path}`; write `..` before any wildcard")
        directory = os.path.realpath("/" + "/".join(names[:first]))
        fixed = [name for name in directory.split("/") if name]
        if not any(grant.matches(fixed + names[first:], wild_from=len(fixed)) for grant in self.writable):
            grants = ", ".join(grant.source for grant in self.writable) or "nothing"
            raise Refused(f"{who} writes to `{path}`, and not everything it may match is writable ({grants})")
        matches = glob.glob(os.path.join(directory, *names[first:]))  # bash's matches: no hidden names either
        if len(matches) > MAX_GLOB_MATCHES:
            raise Refused(f"{who} writes to `{path}`, which matches more than {MAX_GLOB_MATCHES} files; narrow it")
        for match in matches:
            self._check_path(os.path.realpath(match), match, who)

    def _check_repository(self, path: str, who: str) -> None:
        """A repository git is told to use must not have a config the agent may write."""
        config = os.path.join(path, "config")
        try:
            self._check_path(os.path.realpath(config), config, who)
        except Refused:
            return
        raise Refused(
            f"{who} names `{path}`, a repository whose config the agent may write, and git runs programs a "
            "config names; use a repository's own .git directory"
        )


def read_part(words: list[Word], git_commands: Callable[[], frozenset[str]]) -> Reading:
    """What a simple command writes and risks, for the programs :mod:`writes` knows."""
    program = os.path.basename(words[0].text)
    if program == "git":
        return read_git(words[1:], git_commands())
    if program not in PROGRAMS:
        return Reading()
    reading = read_command(PROGRAMS[program], words[1:], program)
    if program == "sed":
        read_sed(reading)
    return reading


def _check_streams(part: Part, writes: Sequence[Write]) -> None:
    """Refuse writing ``/dev/stdout`` or ``/dev/stderr`` in a command that also opens a file.

    They count as harmless because descriptors 1 and 2 are Claude Code's. But a command's
    own redirection may point one at a file first (``1<.git/config >/dev/stdout``), and
    opening the device then opens that file for writing, past every check of paths.
    """
    streams = [r.target.text for r in part.redirects if r.writes and r.target.text in STANDARD_STREAMS]
    streams += [
        word.text
        for word in ((prefixed(w.path) if w.kind == PREFIX else w.path) for w in writes if w.name is None)
        if word.text in STANDARD_STREAMS
    ]
    files = [r.target.text for r in part.redirects if r.op not in OPENS_NO_FILE]
    files = [name for name in files if name not in HARMLESS_DEVICES]
    if streams and files:
        raise Refused(
            f"`{streams[0]}` reopens whatever file a descriptor names, and this command opens `{files[0]}`; "
            "write to a file by its own name, or to the output without naming the device (2>&1)"
        )


def _unhidden(names: list[str]) -> list[str]:
    """``names`` with hidden ones renamed: would the path be granted but for them?"""
    return [name.lstrip(".") or "_" for name in names]


def unwrap(words: list[Word]) -> list[Word]:
    """The command a ``timeout``, ``nice`` or ``nohup`` wrapper runs (as Claude Code matches it)."""
    while words and words[0].text in ("timeout", "nice", "nohup"):
        name, rest = words[0].text, words[1:]
        if name == "timeout":
            rest = _skip_options(rest, TIMEOUT_FLAGS, TIMEOUT_VALUES, name)
            if not rest or not rest[0].literal or not DURATION.fullmatch(rest[0].text):
                raise Refused("could not tell which command `timeout` runs: write it as `timeout 60 command …`")
            rest = rest[1:]
        elif name == "nice":
            if rest and rest[0].literal and re.fullmatch(r"-\d+", rest[0].text):
                rest = rest[1:]
            else:
                rest = _skip_options(rest, frozenset(), frozenset({"-n", "--adjustment"}), name)
        elif rest and rest[0].text == "--":
            rest = rest[1:]
        if not rest:
            raise Refused(f"`{name}` without a command to run")
        if rest[0].text.startswith("-"):
            raise Refused(f"could not tell which command `{name}` runs: unfamiliar option `{rest[0].text}`")
        words = rest
    return words


def _skip_options(words: list[Word], flags: frozenset[str], values: frozenset[str], name: str) -> list[Word]:
    """``words`` after a wrapper's options; :class:`Refused` for an option it does not know."""
    index = 0
    while index < len(words) and words[index].text.startswith("-") and words[index].text != "-":
        option = words[index].text
        if option == "--":
            return words[index + 1 :]
        if option in flags or (option.split("=", 1)[0] in values and "=" in option):
            used = 1
        elif option in values:
            used = 2
        elif any(option.startswith(value) and len(value) == 2 for value in values):
            used = 1  # -k5, -sKILL, -n10
        else:
            raise Refused(f"could not tell which command `{name}` runs: unfamiliar option `{option}`")
        if not all(word.literal for word in words[index : index + used]):
            raise Refused(f"could not tell which command `{name}` runs: write its options out")
        index += used
    return words[index:]


def command_risks(words: list[Word]) -> list[Risk]:
    """What a pattern must spell out for this command (its name first, then its arguments)."""
    name = words[0]
    if name.text in KEYWORDS:
        raise Refused(f"the shell keyword `{name.text}` starts a compound command; run simple commands only")
    risks = []
    if not name.text:
        raise Refused("the command name is empty")
    if "/" in name.text:
        risks.append(Risk(name.text, "runs a program by its path", as_command=True))
    if not name.literal or name.text.startswith("-") or any(char.isspace() for char in name.text):
        risks.append(Risk(name.text, "is not a plain command name", as_command=True))
    if name.text in RUNS_OTHERS:
        risks.append(Risk(name.text, RUNS_OTHERS[name.text], as_command=True))
    program = os.path.basename(name.text)
    interpreter = INTERPRETER.fullmatch(program)
    if interpreter:
        risks += interpreter_risks(FAMILIES[interpreter["family"]], words[1:])
    elif program == "deno" and len(words) > 1 and words[1].text in ("eval", "repl"):
        risks.append(Risk(words[1].text, "runs code given on the command line"))
    elif program in ("test", "[", "printf"):
        risks += [Risk(w.text, "evaluates a variable name, which can run code") for w in words[1:] if w.text == "-v"]
    return risks


def interpreter_risks(family: str, arguments: list[Word]) -> Iterator[Risk]:
    """``-c``-style inline code, and a program read from standard input."""
    letters = INLINE_CODE[family]
    long_inline = INLINE_LONG.get(family, ())
    takes_value = OPTION_ARGUMENTS.get(family, ())
    index = 0
    while index < len(arguments):
        word = arguments[index]
        text = word.text
        if word.expands:
            yield Risk(text, "could expand into interpreter options")
            return
        if text == "--":
            index += 1
            break
        if text == "-" or not text.startswith(("-", "+")):
            break
        if text.startswith("--"):
            if text.split("=", 1)[0] in long_inline:
                yield Risk(text.split("=", 1)[0], "runs code given on the command line")
                return
        elif any(letter in letters for letter in _cluster(text, VALUE_LETTERS.get(family, ""))):
            yield Risk(text, "runs code given on the command line")
            return
        elif family == "python" and "m" in _cluster(text, VALUE_LETTERS["python"]):
            return  # -m module: the rest are the module's arguments
        if text in takes_value:
            index += 1
        index += 1
    script = arguments[index].text if index < len(arguments) else None
    if family == "shell" and any("s" in _cluster(word.text, VALUE_LETTERS["shell"]) for word in arguments[:index]):
        script = None
    if script is None or script in STDIN_SCRIPTS:
        yield Risk("-", "reads a program from its standard input")


def _short(text: str, limit: int = 200) -> str:
    """``text`` for a message: long commands are cut, so a denial stays readable."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cluster(option: str, value_letters: str) -> str:
    """The option letters of a short-option cluster (``-lc`` → ``lc``), up to one that takes a value."""
    if not option.startswith(("-", "+")) or option.startswith("--"):
        return ""
    letters = option[1:]
    cut = min((letters.index(letter) for letter in value_letters if letter in letters), default=len(letters))
    return letters[: cut + 1]
