"""The parser against real bash: for random command lines it accepts, bash runs exactly the
commands it found, with exactly the words it found. A disagreement would be a bypass."""

from __future__ import annotations

import random
import subprocess

import pytest
from hyperhive_allowlist.shell import Refused, split_commands

# Pieces of words: quoting, escapes, and characters that look special but are not.
PIECES = [
    "x",
    "a-b",
    "--opt=v",
    "'q u'",
    "'a;b|c'",
    '"d q"',
    '"e\\"s\\\\c\\q"',
    '"it\'s"',
    "w\\ s",
    "\\;",
    "\\|",
    "\\&",
    "'#'",
    "p#q",
    "'*'",
    '"?"',
    "{x}",
    "@{u}",
    "\\\n",
    "'multi\nline'",
    "=",
    "%s",
]
SEPARATORS = ["; ", " && ", "\n", " | ", " |& ", " \\\n&& ", ";\n\n", " & "]
REDIRECTIONS = ["", "", "", " >out", " 2>&1", " >>out", " <in", " 2>/dev/null", " &>out", " 1>&2"]
LOGGER = '#!/bin/sh\nprintf "%s\\0" "${0##*/}" "$@" > "$LOGDIR/${0##*/}"\n'


def random_line(rng: random.Random, count: int) -> str:
    line = ""
    for index in range(count):
        words = ["".join(rng.choices(PIECES, k=rng.randint(1, 3))) for _ in range(rng.randint(0, 3))]
        line += " ".join([f"c{index}", *words]) + rng.choice(REDIRECTIONS)
        if index < count - 1:
            line += rng.choice(SEPARATORS)
    ending = rng.random()
    if ending < 0.2:
        line += " # a comment; c99 x"
    elif ending < 0.4:
        line += " <<'EOF'\nc98 body\nEOF"
    return line


@pytest.fixture
def bash_runner(tmp_path):
    programs = tmp_path / "bin"
    programs.mkdir()
    for index in range(100):
        program = programs / f"c{index}"
        program.write_text(LOGGER)
        program.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "in").write_text("input\n")

    def run(line: str) -> dict[str, list[str]]:
        logs = tmp_path / "logs"
        logs.mkdir()
        env = {"PATH": f"{programs}:/usr/bin:/bin", "LOGDIR": str(logs), "LANG": "C.UTF-8"}
        # `wait`: commands sent to the background log before the comparison
        subprocess.run(["bash", "-c", f"{line}\nwait"], cwd=work, env=env, capture_output=True, timeout=20)
        seen = {path.name: path.read_bytes().decode().split("\0")[:-1] for path in logs.iterdir()}
        for path in logs.iterdir():
            path.unlink()
        logs.rmdir()
        return seen

    return run


def test_accepted_lines_run_as_parsed(bash_runner):
    rng = random.Random(20261122)
    compared = 0
    for _ in range(150):
        line = random_line(rng, rng.randint(1, 4))
        try:
            parts = split_commands(line)
        except Refused:
            continue
        expected = {part.words[0].text: [word.text for word in part.words] for part in parts}
        assert bash_runner(line) == expected, line
        compared += 1
    assert compared > 100  # most random lines are ones the parser accepts


def test_ran_commands_from_the_documented_examples(bash_runner):
    line = "c0 'a b' \"c\\\"d\" e\\ f # c1 hidden\nc2 x 2>&1 | c3 <<'EOF'\n$HOME `id`\nEOF"
    parts = split_commands(line)
    assert [[word.text for word in part.words] for part in parts] == [["c0", "a b", 'c"d', "e f"], ["c2", "x"], ["c3"]]
    assert bash_runner(line) == {"c0": ["c0", "a b", 'c"d', "e f"], "c2": ["c2", "x"], "c3": ["c3"]}
