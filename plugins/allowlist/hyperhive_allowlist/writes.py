"""The files a command line makes its program write, read off it as the program would.

:data:`PROGRAMS` describes, for each program an allow-list commonly lists, which of
its options take a value and what that value is to it (a file it writes, a directory
it writes into, …), and what its operands are. :func:`read_command` reads one command
line with that description the way the program's own parser does:

- ``--opt=V`` and ``--opt V``; ``-oV`` and ``-o V``; bundled short options
  (``-rno out`` is ``-r -n -o out``);
- ``--`` ends the options; options may follow operands (GNU programs permute);
- a long option may be shortened to any unambiguous prefix (getopt_long, and git's
  parse-options): ``--outp=x`` is ``--output=x``. An abbreviation that could stand for
  an option that writes is read as that option, ambiguous or not: fail closed.

The policy then checks every path found against the agent's ``writable`` grants.

Stdlib only: the checker imports it inside the agent's sandbox.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from hyperhive_allowlist.shell import Refused, Word

# What an option's value is to its program.
FILE = "file"
"""A file it writes: creates, truncates, changes or deletes."""
DIR = "dir"
"""A directory it writes files into, under names it picks itself."""
TARGET = "target"
"""A directory it writes its operands into, under their own names (``cp -t``)."""
OUTPUT_BASE = "output-base"
"""A directory it writes into, and the one its relative output paths are under (``curl --output-dir``)."""
BASE = "base"
"""The directory later relative paths are taken from (``git -C``)."""
UNKNOWN_BASE = "unknown-base"
"""Makes relative paths resolve somewhere the checker does not follow (``git --work-tree``)."""
SUFFIX = "suffix"
"""Text added to the names it writes (backups): a ``/`` in it would write elsewhere."""
PREFIX = "prefix"
"""The start of the names of the files it writes (``split``'s ``x`` for ``xaa``, ``xab``…)."""
REPOSITORY = "repository"
"""A git repository git is told to use: its ``config`` must not be a file the agent may write."""
VALUE = "value"
"""Any other value."""


@dataclass(frozen=True)
class Option:
    """One option of a program."""

    value: str | None = None
    """What its value is (:data:`FILE`, :data:`DIR`, …); ``None``: it takes no value."""
    optional: bool = False
    """Its value is only ever attached (``--backup=numbered``, ``-i.bak``), never the next word."""
    risky: str = ""
    """Why only a pattern that spells it out allows it: it runs a program, or writes
    files whose names the checker cannot see."""
    only_with: frozenset[str] = frozenset()
    """Its value is written only when one of these options is given too (``tar -f`` with ``-c``)."""

    @property
    def matters(self) -> bool:
        """It writes, or changes where or whether something is written, or is risky."""
        return self.value not in (None, VALUE) or bool(self.risky)


@dataclass(frozen=True)
class Operands:
    """A rule for which of a program's operands it writes."""

    written: str = "all"
    """``all``; ``nth`` (:attr:`nth`); or ``destination``: the last operand (or a
    :data:`TARGET` option's value), each other operand written into it by name."""
    nth: int = 0
    kind: str = FILE
    """What a written operand is: :data:`FILE` or :data:`PREFIX`."""
    first: str = ""
    """The rule holds only when the first operand is this word, and counts after it
    (``git bundle create FILE``)."""
    only_with: frozenset[str] = frozenset()
    """The rule holds only with one of these options (``sed -i``)."""
    not_with: frozenset[str] = frozenset()
    """The rule does not hold with any of these options (``git merge-file -p``)."""
    sources: bool = False
    """For ``destination``: the other operands are written too (``mv`` removes them;
    ``ln`` makes a way to write them)."""
    sources_with: frozenset[str] = frozenset()
    """For ``destination``: as :attr:`sources`, with one of these options (``cp -s``)."""
    parents: frozenset[str] = frozenset()
    """For ``destination``: with one of these, operands land under their whole path (``cp --parents``)."""


@dataclass(frozen=True)
class Program:
    """How a program's command line names what it writes."""

    options: Mapping[str, Option] = field(default_factory=dict)
    """Every spelling of every option that takes a value, writes, or changes what is written."""
    operands: tuple[Operands, ...] = ()
    abbreviations: bool = True
    """Long options may be shortened to a prefix (getopt_long, git); ``find``'s may not."""
    whole_words: bool = False
    """Options are whole words, never bundles of letters (``find -fprint``)."""
    old_style: bool = False
    """A first argument without a dash bundles options whose values follow (``tar cf x.tar``)."""
    assignments: Mapping[str, str] = field(default_factory=dict)
    """Operands ``key=value`` and what the value is (``dd of=FILE``)."""
    script: frozenset[str] = frozenset()
    """Without one of these options, the first operand is a script, not a file (``sed``)."""
    url_names: frozenset[str] | None = None
    """It saves each URL operand under the URL's last path component: always when
    empty, with one of these options otherwise; ``None``: never."""
    url_names_unless: frozenset[str] = frozenset()
    """…except with one of these options (``wget -O``)."""

    def option(self, name: str) -> tuple[str, Option | None]:
        """The option ``name`` stands for, under its full name; ``None`` when it is not in the table.

        A prefix of long options stands for one of them (the first that matters, so an
        abbreviation that might write is read as writing).
        """
        if name in self.options:
            return name, self.options[name]
        if not self.abbreviations or not name.startswith("--") or len(name) < 3:
            return name, None
        candidates = [full for full in self.options if full.startswith(name)]
        candidates.sort(key=lambda full: not self.options[full].matters)
        return (candidates[0], self.options[candidates[0]]) if candidates else (name, None)

    @property
    def writes_through_options(self) -> bool:
        return any(option.matters for option in self.options.values())


@dataclass
class Write:
    """A path the command writes, and where its command line says so (for the reason)."""

    path: Word
    via: str
    """The option, or operand, as the reason names it."""
    kind: str = FILE
    """:data:`FILE`; :data:`DIR` (a file :attr:`name` in it, or a new one); :data:`REPOSITORY`."""
    base: str | None = None
    """The directory a relative path is under, when an option said so (``git -C``)."""
    unknown_base: bool = False
    """An option moved relative paths somewhere the checker does not follow."""
    name: str | None = None
    """For :data:`DIR`: the name the program writes in it, when the command line says."""
    only_with: frozenset[str] = frozenset()
    """Written only when one of these options is given too."""
    also_under: str | None = None
    """A relative path is written under this directory too (``curl --output-dir``): both are checked."""


@dataclass
class Reading:
    """What one command line says its program writes, and what a pattern must spell out."""

    given: set[str] = field(default_factory=set)
    """Every option found, under its full name."""
    values: list[tuple[str, Word]] = field(default_factory=list)
    """Each value an option was given, in order, under the option's full name."""
    operands: list[Word] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    risks: list[tuple[str, str]] = field(default_factory=list)
    """(token, why): each passes only when a matching pattern spells the token out."""
    base: str | None = None
    unknown_base: bool = False
    suffixes: list[str] = field(default_factory=list)
    """Suffixes of backup files, written beside the files written (``sed -i.bak``, ``cp -S``)."""

    def has(self, names: frozenset[str]) -> bool:
        return not names.isdisjoint(self.given)

    def write(
        self, path: Word, via: str, kind: str = FILE, name: str | None = None, only_with: frozenset[str] = frozenset()
    ) -> None:
        self.writes.append(Write(path, via, kind, self.base, self.unknown_base, name, only_with))


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _flags(names: str, why: str = "") -> dict[str, Option]:
    return dict.fromkeys(names.split(), Option(risky=why))


def _values(
    names: str, value: str = VALUE, *, optional: bool = False, risky: str = "", only_with: frozenset[str] = frozenset()
) -> dict[str, Option]:
    return dict.fromkeys(names.split(), Option(value, optional, risky, only_with))


RUNS = "runs another program"
GIT_RUNS = "makes git run another program"
UNSEEN = "writes files whose names the allow-list cannot see"
BACKUP = {**_values("--backup", optional=True), **_values("-S --suffix", SUFFIX)}
COPYING = {
    **BACKUP,
    **_values("-t --target-directory", TARGET),
    **_flags("-T --no-target-directory -s --symbolic-link -l --link --parents"),
    **_values("--preserve --reflink --context --update", optional=True),
    **_values("--no-preserve --sparse"),
}
LINKS = frozenset({"-s", "--symbolic-link", "-l", "--link"})
INSTALL_DIRS = frozenset({"-d", "--directory"})
TAR_CREATES = _words("-c --create -r --append -u --update -A --catenate --concatenate --delete")

PROGRAMS: dict[str, Program] = {
    "sort": Program(
        {
            **_values("-o --output", FILE),
            **_values("-T --temporary-directory", DIR),
            **_values("--compress-program", risky=RUNS),
            **_values("-k --key -t --field-separator -S --buffer-size --batch-size --files0-from --parallel"),
            **_values("--random-source --sort"),
        }
    ),
    "shuf": Program({**_values("-o --output", FILE), **_values("-i --input-range -n --head-count --random-source")}),
    "uniq": Program(
        {
            **_values("-f --skip-fields -s --skip-chars -w --check-chars"),
            **_values("--all-repeated --group", optional=True),
        },
        (Operands("nth", 1),),
    ),
    "tee": Program(_values("--output-error", optional=True), (Operands(),)),
    "cp": Program(COPYING, (Operands("destination", sources_with=LINKS, parents=frozenset({"--parents"})),)),
    "mv": Program(COPYING, (Operands("destination", sources=True),)),
    "ln": Program(COPYING, (Operands("destination", sources=True),)),
    "install": Program(
        {
            **COPYING,
            **_values("-m --mode -o --owner -g --group"),
            **_values("--strip-program", risky=RUNS),
            **_flags("-d --directory -D"),
        },
        (Operands(only_with=INSTALL_DIRS), Operands("destination", not_with=INSTALL_DIRS)),
    ),
    "touch": Program(_values("-d --date -r --reference -t --time"), (Operands(),)),
    "mkdir": Program({**_values("-m --mode"), **_values("--context", optional=True)}, (Operands(),)),
    "rmdir": Program({}, (Operands(),)),
    "rm": Program(_values("--interactive --preserve-root", optional=True), (Operands(),)),
    "unlink": Program({}, (Operands(),)),
    "shred": Program(
        {**_values("-n --iterations -s --size --random-source"), **_values("--remove", optional=True)}, (Operands(),)
    ),
    "truncate": Program(_values("-s --size -r --reference"), (Operands(),)),
    "split": Program(
        {
            **_values("-a --suffix-length -b --bytes -C --line-bytes -l --lines -n --number -t --separator"),
            **_values("--additional-suffix", SUFFIX),
            **_values("--numeric-suffixes --hex-suffixes", optional=True),
            **_values("--filter", risky=RUNS),
        },
        (Operands("nth", 1, kind=PREFIX),),
    ),
    "csplit": Program(
        {**_values("-f --prefix", PREFIX), **_values("-b --suffix-format", SUFFIX), **_values("-n --digits")}
    ),
    "dd": Program(assignments={"of": FILE}),
    "sed": Program(
        {
            **_values("-i --in-place", SUFFIX, optional=True),
            **_values("-e --expression -l --line-length"),
            **_values("-f --file", risky="runs a sed script from a file, which the allow-list cannot read"),
            **_flags("--sandbox"),
        },
        (Operands(only_with=frozenset({"-i", "--in-place"})),),
        script=frozenset({"-e", "--expression", "-f", "--file"}),
    ),
    "find": Program(
        {
            **_values("-fprint -fprint0 -fls -fprintf", FILE),
            **_flags("-exec -execdir -ok -okdir -delete", "runs commands or changes files"),
        },
        abbreviations=False,
        whole_words=True,
    ),
    "tar": Program(
        {
            **_values("-f --file", FILE, only_with=TAR_CREATES),
            **_values("-g --listed-incremental --index-file --volno-file", FILE),
            **dict.fromkeys(TAR_CREATES, Option()),
            **_flags("-x --extract --get", "extracts the files the archive names, which the allow-list cannot see"),
            **_flags("--remove-files", "removes the files it archives"),
            **_values("--one-top-level", risky=UNSEEN, optional=True),
            **_values("-I --use-compress-program --to-command --checkpoint-action --rsh-command", risky=RUNS),
            **_values("--rmt-command -F --info-script --new-volume-script", risky=RUNS),
            **_values("-C --directory -T --files-from -X --exclude-from --add-file --exclude --exclude-tag"),
            **_values("--exclude-tag-all --exclude-tag-under --exclude-ignore --exclude-ignore-recursive"),
            **_values("-b --blocking-factor -H --format -K --starting-file -L --tape-length -N --newer"),
            **_values("--after-date -V --label --group --group-map --mode --mtime --owner --owner-map --sort"),
            **_values("--transform --xform --strip-components --newer-mtime --record-size --hole-detection"),
            **_values("--level --sparse-version --quote-chars --no-quote-chars --quoting-style --warning"),
            **_values("--xattrs-exclude --xattrs-include"),
            **BACKUP,
            **_values("--occurrence --checkpoint --totals --atime-preserve", optional=True),
        },
        old_style=True,
    ),
    "curl": Program(
        {
            **_values("-o --output", FILE),
            **_values("-D --dump-header -c --cookie-jar --trace --trace-ascii --stderr --libcurl", FILE),
            **_values("--etag-save --hsts --alt-svc", FILE),
            **_values("--output-dir", OUTPUT_BASE),
            **_flags("-O --remote-name --remote-name-all"),
            **_flags("-J --remote-header-name", "takes the file name from the server"),
            **_values("-K --config", risky="reads options from a file, which the allow-list cannot see"),
            **_values("-w --write-out", risky="can write a file (%output{…}) or read its format from one"),
            **_values("-A --user-agent -b --cookie -C --continue-at -d --data -e --referer -E --cert -F --form"),
            **_values("-H --header -m --max-time -P --ftp-port -Q --quote -r --range -t --telnet-option"),
            **_values("-T --upload-file -u --user -U --proxy-user -x --proxy -X --request -y --speed-time"),
            **_values("-Y --speed-limit -z --time-cond --data-ascii --data-binary --data-raw --data-urlencode"),
            **_values("--json --url --cacert --capath --connect-timeout --max-filesize --max-redirs --retry"),
            **_values("--retry-delay --retry-max-time --limit-rate --proto --proto-redir --resolve --connect-to"),
            **_values("--interface --key --pass --netrc-file --create-file-mode --expect100-timeout --noproxy"),
        },
        url_names=frozenset({"-O", "--remote-name", "--remote-name-all"}),
    ),
    "wget": Program(
        {
            **_values("-O --output-document -o --output-file -a --append-output --save-cookies", FILE),
            **_values("--rejected-log", FILE),
            **_values("--warc-file", PREFIX),
            **_values("-P --directory-prefix", OUTPUT_BASE),
            **_values("--warc-tempdir", DIR),
            **_flags("-r --recursive -m --mirror -p --page-requisites -x --force-directories", UNSEEN),
            **_flags("--protocol-directories --content-disposition --trust-server-names", UNSEEN),
            **_values("-i --input-file --default-page", risky=UNSEEN),
            **_values("-e --execute --config", risky="runs wgetrc commands, which can write any file"),
            **_values("--use-askpass", risky=RUNS),
            **_values("-B --base -t --tries -T --timeout -w --wait -Q --quota -U --user-agent -l --level"),
            **_values("-A --accept -R --reject -D --domains -I --include-directories -X --exclude-directories"),
            **_values("--header --user --password --http-user --http-password --post-data --post-file"),
            **_values("--body-data --body-file --method --load-cookies --referer --limit-rate --cut-dirs"),
            **_values("--connect-timeout --read-timeout --dns-timeout --waitretry --retry-on-http-error"),
            **_values("--ca-certificate --certificate --private-key --progress --backups --start-pos"),
        },
        url_names=frozenset(),
        url_names_unless=frozenset({"-O", "--output-document"}),
    ),
}

# -- git ------------------------------------------------------------------------------

GIT_FLAGS = _words(
    "-p --paginate -P --no-pager --bare --no-replace-objects --no-lazy-fetch --no-optional-locks --no-advice "
    "--literal-pathspecs --glob-pathspecs --noglob-pathspecs --icase-pathspecs --version -v "
    "--html-path --man-path --info-path --exec-path"
)
GIT_VALUES = _words("--namespace --super-prefix --list-cmds --attr-source")
GIT_HELP = "opens git's manual with a viewer a repository's config can choose (man.<tool>.cmd)"
GIT_RISKY_SUBCOMMANDS = {
    "config": "changes git's configuration, which can make git run any program",
    "filter-branch": "runs shell code",
    "submodule": "can run commands (`foreach`)",
    "submodule--helper": "can run commands (`foreach`)",
    "bisect": "can run commands (`bisect run`)",
    "bisect--helper": "can run commands (`bisect run`)",
    "difftool": "runs external programs",
    "difftool--helper": "runs external programs",
    "mergetool": "runs external programs",
    "merge-index": "runs the program it is given",
    "send-email": "runs external programs",
    "imap-send": "runs the tunnel command of the repository's config",
    "hook": "runs hooks",
    "instaweb": "runs a web server program",
    "web--browse": "runs the browser a repository's config names",
    "help": GIT_HELP,
    "daemon": "runs a server, and the access hook it is given",
    "shell": "runs commands (`-c`)",
    "remote-ext": "runs the command it is given",
    "for-each-repo": "runs git commands, with options the allow-list does not see, in other repositories",
}
# Every git command takes these: many (log, show, diff, rev-list, cherry-pick, …) write --output.
GIT_EVERY = {**_values("--output", FILE), **_flags("--help", GIT_HELP)}
# Read as writing wherever a command of the diff family is given it, across git versions.
DIFF_O = _values("-o", FILE)
# Commands that refuse --output and write nothing their options name: a glob among their
# arguments may expand into options harmlessly (`git add *.py`).
GIT_PATHS_ONLY = _words(
    "add rm mv status restore switch reset branch tag fetch pull push merge rebase remote notes sparse-checkout gc "
    "ls-files ls-tree cat-file show-ref apply am commit checkout clean"
)
SEPARATE = _values("--separate-git-dir", REPOSITORY)
UPLOAD_PACK = _values("-u --upload-pack", risky=GIT_RUNS)
GIT_COMMANDS: dict[str, Program] = {
    "format-patch": Program({**_values("-o --output-directory", DIR), **_values("-v --reroll-count")}),
    "archive": Program(
        {**_values("-o --output", FILE), **_values("--exec", risky=GIT_RUNS), **_values("--prefix --format --remote")}
    ),
    "bundle": Program(operands=(Operands("nth", 0, first="create"),)),
    "clone": Program(
        {
            **SEPARATE,
            **UPLOAD_PACK,
            **_values("--template -c --config", risky="sets git configuration, which can run programs"),
            **_values("-o --origin -b --branch --depth --reference --reference-if-able --filter -j --jobs"),
            **_values("--shallow-since --shallow-exclude --server-option --bundle-uri"),
        },
        (Operands("nth", 1),),
    ),
    "init": Program(
        {
            **SEPARATE,
            **_values("--template", risky="copies hooks and configuration from a template"),
            **_values("-b --initial-branch --object-format"),
            **_values("--shared", optional=True),
        },
        (Operands("nth", 0),),
    ),
    "worktree": Program(_values("-b -B --reason"), (Operands("nth", 0, first="add"), Operands("nth", 1, first="move"))),
    "merge-file": Program(_values("-L --marker-size"), (Operands("nth", 0, not_with=frozenset({"-p", "--stdout"})),)),
    "fast-export": Program({**_values("--export-marks", FILE), **_values("--import-marks")}),
    "fast-import": Program(
        {**_values("--export-marks --export-pack-edges", FILE), **_values("--import-marks --import-marks-if-exists")}
    ),
    "bugreport": Program({**_values("-o --output-directory", DIR), **_values("-s --suffix", SUFFIX)}),
    "diagnose": Program(
        {**_values("-o --output-directory", DIR), **_values("-s --suffix", SUFFIX), **_values("--mode")}
    ),
    "index-pack": Program({**_values("-o", FILE), **_values("--keep", optional=True)}),
    "pack-objects": Program(operands=(Operands("nth", 0, kind=PREFIX, not_with=frozenset({"--stdout"})),)),
    "mailsplit": Program(_values("-o", DIR, optional=True)),
    "mailinfo": Program(operands=(Operands("nth", 0), Operands("nth", 1))),
    "read-tree": Program(_values("--index-output", FILE)),
    "checkout-index": Program(_values("--prefix", risky=UNSEEN)),
    "credential-store": Program(_values("--file", FILE)),
    "rebase": Program(_values("-x --exec", risky=GIT_RUNS)),
    "grep": Program(_values("-O --open-files-in-pager", risky=GIT_RUNS, optional=True)),
    "fetch": Program(_values("--upload-pack", risky=GIT_RUNS)),
    "pull": Program(_values("--upload-pack", risky=GIT_RUNS)),
    "ls-remote": Program(_values("--upload-pack", risky=GIT_RUNS)),
    "push": Program(_values("--receive-pack --exec", risky=GIT_RUNS)),
    "commit": Program(_values("-m --message -F --file -C --reuse-message -c --reedit-message -t --template --author")),
    "tag": Program(_values("-m --message -F --file -u --local-user")),
    **dict.fromkeys(
        ("diff", "log", "show"),
        Program({**DIFF_O, **_flags("--ext-diff", GIT_RUNS), **_values("-n --max-count -S -G --grep")}),
    ),
    **dict.fromkeys(("diff-tree", "diff-index", "diff-files", "whatchanged", "range-diff"), Program(DIFF_O)),
}


def read_command(program: Program, arguments: list[Word], name: str, reading: Reading | None = None) -> Reading:
    """What ``arguments`` of ``program`` (``name`` in reasons) write, and what a pattern must spell out."""
    reading = reading if reading is not None else Reading()
    words, bundled, bundle = list(arguments), 0, None
    if program.old_style and words and words[0].literal and words[0].text and not words[0].text.startswith("-"):
        bundle = words[0].text
        words, bundled = _old_style(program, words)
    # Where options write, a glob that bash could expand into options is risky.
    guarded = program.writes_through_options or program.url_names is not None
    index, ended = 0, False
    while index < len(words):
        word = words[index]
        index += 1
        text = word.text
        if ended or text == "-" or not text.startswith("-"):
            if not ended and guarded and _may_become_option(word):
                reading.risks.append((text, f"could expand into options of `{name}`; put `--` before it, or quote it"))
            reading.operands.append(word)
        elif guarded and word.expands:
            reading.risks.append((text, f"could expand into options of `{name}`; write them out"))
        elif text == "--" and not program.whole_words:
            ended = True
        elif program.whole_words or text.startswith("--"):
            spelled, equals, _ = text.partition("=")
            full, option = program.option(spelled)
            value = None
            if option is not None and option.value is not None:
                if equals:
                    value = _tail(word, len(spelled) + 1)
                elif not option.optional and index < len(words):
                    value, index = words[index], index + 1
            _record(reading, name, full, option, value=value, via=spelled)
        else:
            old = bundle if index <= bundled else None
            index = _bundle(program, name, word, words, index=index, reading=reading, written_as=old)
    _after_options(program, name, reading)
    return reading


def _bundle(
    program: Program, name: str, word: Word, words: list[Word], *, index: int, reading: Reading, written_as: str | None
) -> int:
    """Read a bundle of short options (``-rno out``); the index of the word after it and its value.

    :param written_as: the old-style bundle this option came from (``xzf``), as a pattern spells it.
    """
    letters = word.text[1:]
    for position, letter in enumerate(letters):
        spelled = "-" + letter
        option = program.options.get(spelled)
        value = None
        if option is not None and option.value is not None:
            if position + 1 < len(letters):
                value = _tail(word, position + 2)
            elif not option.optional and index < len(words):
                value, index = words[index], index + 1
        _record(reading, name, spelled, option, value=value, via=written_as or spelled)
        if option is not None and option.value is not None:
            break  # the rest of the bundle was its value
    return index


def _old_style(program: Program, words: list[Word]) -> tuple[list[Word], int]:
    """``tar cf out.tar dir`` read as ``tar -c -f out.tar dir``: each letter that takes a
    value takes the next word. Also how many of the words the bundle became."""
    bundle, rest = words[0], words[1:]
    expanded: list[Word] = []
    for letter in bundle.text:
        option = program.options.get("-" + letter)
        expanded.append(Word("-" + letter, "-" + letter, bundle.start, bundle.end, [False, False]))
        if option is not None and option.value is not None and not option.optional and rest:
            expanded.append(rest.pop(0))
    return expanded + rest, len(expanded)


def _record(reading: Reading, name: str, full: str, option: Option | None, *, value: Word | None, via: str) -> None:
    """One option: remember it, and what it risks or writes.

    :param via: the option as written (``-o``, ``--outp``), which a pattern must spell out.
    """
    reading.given.add(full)
    if option is None:
        return
    if value is not None:
        reading.values.append((full, value))
    if option.risky:
        reading.risks.append((via, option.risky if via == full else f"(`{full}`) {option.risky}"))
    if value is None or option.value in (None, VALUE):
        return
    if option.value == SUFFIX:
        if "/" in value.text or "*" in value.text:
            reading.risks.append((via, f"names the files `{name}` writes after `{value.text}`"))
        else:
            reading.suffixes.append(value.text)
    elif option.value == BASE:
        reading.base = value.text if reading.base is None else posixpath.join(reading.base, value.text)
    elif option.value == UNKNOWN_BASE:
        reading.unknown_base = True
    else:
        said = f"`{via}`" if via == full else f"`{via}` (`{full}`)"
        reading.write(value, said, option.value, only_with=option.only_with)


def _after_options(program: Program, name: str, reading: Reading) -> None:
    """What depends on all the options: deferred option values, operands, names from URLs."""
    reading.writes[:] = [write for write in reading.writes if not write.only_with or reading.has(write.only_with)]
    operands = reading.operands
    if program.script and not reading.has(program.script) and operands:
        operands = operands[1:]  # sed's script
    for key, kind in program.assignments.items():
        for word in operands:
            if word.text.startswith(key + "="):
                reading.write(_tail(word, len(key) + 1), f"`{name} {key}=`", kind)
    targets = [write for write in reading.writes if write.kind == TARGET]
    for write in targets:
        write.kind = DIR
    for rule in program.operands:
        if (rule.only_with and not reading.has(rule.only_with)) or reading.has(rule.not_with):
            continue
        these = operands
        if rule.first:
            if not operands or operands[0].text != rule.first:
                continue
            these = operands[1:]
        if rule.written == "all":
            for word in these:
                reading.write(word, f"`{name}`", rule.kind)
        elif rule.written == "nth":
            if rule.nth < len(these):
                reading.write(these[rule.nth], f"`{name}`", rule.kind)
        else:
            _destination(rule, name, these, targets[-1].path if targets else None, reading)
    for suffix in reading.suffixes:
        for write in list(reading.writes):
            if write.kind == FILE:
                reading.write(_suffixed(write.path, suffix), write.via)
            elif write.kind == DIR and write.name is not None:
                reading.write(write.path, write.via, DIR, write.name + suffix)
    outputs = [write for write in reading.writes if write.kind == OUTPUT_BASE]
    for write in outputs:
        write.kind = DIR
    saves = program.url_names is not None and (not program.url_names or reading.has(program.url_names))
    if saves and not reading.has(program.url_names_unless):
        _url_names(name, operands, outputs[-1].path if outputs else HERE, reading)
    if outputs:
        for write in reading.writes:
            if write.kind == FILE and not write.path.text.startswith("/"):
                write.also_under = outputs[-1].path.text


HERE = Word(".", ".", 0, 0, [False])


def _destination(rule: Operands, name: str, operands: list[Word], target: Word | None, reading: Reading) -> None:
    """cp, mv, ln, install: the destination, and each source's name in it."""
    if target is not None:
        into, sources = target, operands
    elif len(operands) >= 2:
        into, sources = operands[-1], operands[:-1]
        reading.write(into, f"`{name}`")
    elif operands and rule.sources:  # `ln -s /x/y`: the link y, here
        into, sources = HERE, operands
    else:
        return
    parents = reading.has(rule.parents)
    for source in sources:
        landed = source.text.lstrip("/") if parents else posixpath.basename(source.text.rstrip("/"))
        if landed:
            reading.write(into, f"`{name}` (for `{source.text}`)", DIR, landed)
        if rule.sources or reading.has(rule.sources_with):
            reading.write(source, f"`{name}` (its source: removed, or linked to)")


def _url_names(name: str, operands: list[Word], into: Word, reading: Reading) -> None:
    """curl -O, wget: each URL is saved under its last path component, in the output dir."""
    for word in operands:
        if not word.literal or any(char in word.text for char in "[]{}"):
            reading.risks.append((word.text, f"makes `{name}` save files under names the allow-list cannot see"))
            continue
        path = urllib.parse.urlsplit(word.text).path
        for last in {path.rsplit("/", 1)[-1], urllib.parse.unquote(path).rsplit("/", 1)[-1]}:
            if last:
                reading.write(into, f"`{name}` (saving `{word.text}`)", DIR, last)


def read_git(arguments: list[Word], known: frozenset[str]) -> Reading:
    """What a git command line writes and risks.

    :param known: git's commands on this machine (builtins and git-* programs): any other
        subcommand could be an alias from a repository's config, which can run anything.
    """
    reading = Reading()
    index = 0
    while index < len(arguments) and arguments[index].text.startswith("-"):
        word = arguments[index]
        index += 1
        spelled, equals, _ = word.text.partition("=")
        value = _tail(word, len(spelled) + 1) if equals else None
        if word.expands:
            reading.risks.append((word.text, "could expand into git options"))
        elif word.text.startswith("-c") or spelled == "--config-env":
            token = "-c" if word.text.startswith("-c") else spelled
            reading.risks.append((token, "sets git configuration, which can run programs"))
        elif spelled == "--exec-path" and equals:
            reading.risks.append((spelled, "makes git run programs from another directory"))
        elif spelled in ("--help", "-h"):
            reading.risks.append((spelled, GIT_HELP))
        elif spelled in ("-C", "--git-dir", "--work-tree") or spelled in GIT_VALUES:
            if value is None and index < len(arguments):
                value, index = arguments[index], index + 1
            if value is not None and value.expands:
                reading.risks.append((value.text, "could expand into git options"))
            elif value is not None and spelled == "-C":
                _record(reading, "git", "-C", Option(BASE), value=value, via="-C")
            elif value is not None and spelled == "--git-dir":
                reading.write(value, "`--git-dir`", REPOSITORY)
            elif spelled == "--work-tree":
                if value is not None:  # checkout, reset, stash... write the tracked files there
                    reading.write(value, "`--work-tree` (git writes the work tree's files there)", DIR)
                reading.unknown_base = True
        elif spelled not in GIT_FLAGS:
            reading.risks.append((spelled, "is a git option the allow-list does not know"))
    if index == len(arguments):
        return reading
    subcommand = arguments[index]
    if subcommand.expands:
        reading.risks.append((subcommand.text, "could expand into git options"))
        return reading
    name = subcommand.text
    if name in GIT_RISKY_SUBCOMMANDS:
        reading.risks.append((name, GIT_RISKY_SUBCOMMANDS[name]))
    elif name not in known:
        reading.risks.append(
            (name, "is not a git command here, so a repository's config could make it an alias that runs anything")
        )
    own = GIT_COMMANDS.get(name, Program())
    rest = arguments[index + 1 :]
    if name in GIT_PATHS_ONLY and not own.writes_through_options:
        # These refuse --output: a glob among their paths expanding into options is harmless (`git add *.py`).
        rest = [word for word in rest if not _may_become_option(word)]
    read_command(Program({**GIT_EVERY, **own.options}, own.operands), rest, f"git {name}", reading)
    if name == "clone" and len(reading.operands) == 1 and reading.operands[0].literal:
        _clone_default(reading)
    return reading


def _clone_default(reading: Reading) -> None:
    """``git clone URL`` writes the directory git names after the URL (``repo`` for ``…/repo.git``)."""
    url = reading.operands[0].text.rstrip("/")
    name = posixpath.basename(url.rsplit(":", 1)[-1]).removesuffix(".git") or url
    reading.write(HERE, "`git clone` (a directory named after the repository)", DIR, name=name)


# -- sed scripts ----------------------------------------------------------------------

SED_SIMPLE = set("=dDgGhHlnNpPxzF}")
SED_NUMBERED = set("lLqQ")
SED_S_FLAGS = set("gpiImM0123456789")


def read_sed_script(script: str) -> tuple[list[str], bool]:
    """The files a sed script writes (``w``, ``W``, ``s///w``), and whether it runs shell
    commands (``e``, ``s///e``). :class:`Refused` for what it cannot read: GNU sed's
    grammar is followed closely enough that anything else would be a guess."""
    return _SedScript(script).read()


class _SedScript:
    def __init__(self, script: str) -> None:
        self.text = script
        self.index = 0
        self.files: list[str] = []
        self.runs = False

    def read(self) -> tuple[list[str], bool]:
        while True:
            self._skip(" \t\n;")
            if self._at_end():
                return self.files, self.runs
            if self._peek() == "#":
                self._rest_of_line()
                continue
            self._address()
            self._skip(" \t")
            if self._peek() == ",":
                self.index += 1
                self._skip(" \t")
                self._address()
            self._skip(" \t")
            while self._peek() == "!":
                self.index += 1
                self._skip(" \t")
            if self._at_end():
                raise Refused("cannot check this sed script: an address without a command")
            self._command(self._take())

    def _command(self, command: str) -> None:
        if command == "{":
            return  # a block: commands follow at once
        if command in SED_SIMPLE:
            pass
        elif command in SED_NUMBERED:
            self._skip(" \t")
            while self._peek().isdigit():
                self.index += 1
        elif command in ":btTv":
            self._label()
            return
        elif command in "aic":
            self._text()
            return
        elif command in "rRwW":
            name = self._rest_of_line().strip(" \t")
            if command in "wW":
                self._file(name)
            return
        elif command == "e":
            self.runs = True
            self._rest_of_line()
            return
        elif command in "sy":
            self._substitute(command)
            return
        else:
            raise Refused(f"cannot check this sed script: unknown command `{command}`")
        self._end_of_command()

    def _substitute(self, command: str) -> None:
        delimiter = self._take()
        if delimiter in ("", "\n", "\\"):
            raise Refused(f"cannot check this sed script: `{command}` needs a delimiter")
        self._part(delimiter, regex=True)
        self._part(delimiter, regex=command == "y")
        if command == "y":
            self._end_of_command()
            return
        while not self._at_end() and self._peek() not in "; \t\n}#":
            flag = self._take()
            if flag == "e":
                self.runs = True
            elif flag == "w":
                self._file(self._rest_of_line().strip(" \t"))
                return
            elif flag not in SED_S_FLAGS:
                raise Refused(f"cannot check this sed script: unknown flag `{flag}` of `s`")
        self._end_of_command()

    def _part(self, delimiter: str, *, regex: bool) -> None:
        """Up to the next unescaped delimiter; in a regex, not inside a bracket expression (as GNU sed)."""
        while not self._at_end():
            char = self._take()
            if char == "\\":
                self._take()
            elif char == delimiter:
                return
            elif char == "[" and regex:
                self._bracket()
        raise Refused("cannot check this sed script: an unterminated `s`, `y` or address")

    def _bracket(self) -> None:
        if self._peek() == "^":
            self.index += 1
        if self._peek() == "]":
            self.index += 1
        while not self._at_end():
            char = self._take()
            if char == "[" and self._peek() in ".:=":
                end = self.text.find(self._peek() + "]", self.index + 1)
                if end < 0:
                    break
                self.index = end + 2
            elif char == "]":
                return
        raise Refused("cannot check this sed script: an unterminated bracket expression")

    def _address(self) -> None:
        char = self._peek()
        if char in ("/", "\\"):
            self.index += 1
            delimiter = "/" if char == "/" else self._take()
            self._part(delimiter, regex=True)
            while self._peek() in ("I", "M"):
                self.index += 1
        elif char == "$":
            self.index += 1
        elif char.isdigit() or char in "+~":
            self.index += 1
            while self._peek().isdigit() or self._peek() == "~":
                self.index += 1

    def _label(self) -> None:
        while not self._at_end() and self._peek() not in ";\n":
            self.index += 1

    def _text(self) -> None:
        """``a``, ``i``, ``c``: text to the end of the line, and on while lines end in a backslash."""
        while True:
            line = self._rest_of_line()
            if not line.endswith("\\") or self._at_end():
                return

    def _file(self, name: str) -> None:
        if not name:
            raise Refused("cannot check this sed script: `w` without a file name")
        self.files.append(name)

    def _end_of_command(self) -> None:
        self._skip(" \t")
        if not self._at_end() and self._peek() not in ";\n}#":
            raise Refused(f"cannot check this sed script: unexpected `{self._peek()}` after a command")

    def _rest_of_line(self) -> str:
        end = self.text.find("\n", self.index)
        end = len(self.text) if end < 0 else end
        line, self.index = self.text[self.index : end], min(end + 1, len(self.text))
        return line

    def _skip(self, chars: str) -> None:
        while not self._at_end() and self._peek() in chars:
            self.index += 1

    def _peek(self) -> str:
        return self.text[self.index : self.index + 1]

    def _take(self) -> str:
        char = self._peek()
        self.index += 1
        return char

    def _at_end(self) -> bool:
        return self.index >= len(self.text)


def read_sed(reading: Reading) -> None:
    """Add what sed's scripts write and run to ``reading`` (of its command line)."""
    if reading.has(frozenset({"--sandbox"})):
        return  # sed itself refuses w, e and r then
    scripts = [value for option, value in reading.values if option in ("-e", "--expression")]
    if not scripts and not reading.has(frozenset({"-f", "--file"})) and reading.operands:
        scripts = [reading.operands[0]]
    if not scripts:
        return
    if not all(script.literal for script in scripts):
        reading.risks.append((scripts[0].text, "is a sed script bash could change; quote it"))
        return
    files, runs = read_sed_script("\n".join(script.text for script in scripts))  # sed joins -e scripts so
    if runs:
        reading.risks.append((scripts[0].text, "runs shell commands (sed's `e`)"))
    for name in files:
        if name not in ("/dev/stdout", "/dev/stderr"):
            reading.write(Word(name, name, 0, 0, [True] * len(name)), "sed's `w`")


# -- words ------------------------------------------------------------------------------


def _suffixed(word: Word, suffix: str) -> Word:
    return Word(word.text + suffix, word.raw + suffix, word.start, word.end, word.chars_quoted + [True] * len(suffix))


def prefixed(word: Word) -> Word:
    """The names a :data:`PREFIX` stands for, as a glob: the prefix, then anything."""
    return Word(word.text + "*", word.raw + "*", word.start, word.end, [*word.chars_quoted, False])


def _tail(word: Word, offset: int) -> Word:
    """The part of ``word`` from ``offset`` on: an attached value (``-oFILE``, ``--output=FILE``)."""
    return Word(word.text[offset:], word.text[offset:], word.start, word.end, word.chars_quoted[offset:])


def _may_become_option(word: Word) -> bool:
    """Bash may expand it into words that start with ``-``: it expands, and does not start
    with a character that every expansion keeps (a literal one other than ``-``)."""
    if not word.expands:
        return False
    first, quoted = word.text[:1], word.chars_quoted[:1] == [True]
    return not quoted and (first in "*?[{-" or first == "")
