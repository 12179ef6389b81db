"""The pattern grammar: Claude Code's Bash(…) rules, matched in linear time."""

from __future__ import annotations

import time

import pytest
from hyperhive_allowlist.patterns import BadPattern, compile_pattern, compile_patterns, pattern_problem

MATCHING = [
    ("git *", ["git", "git status", "git push origin main"], ["gitk", "git-lfs pull", "sudo git status"]),
    ("git:*", ["git", "git status"], ["gitk"]),
    ("npm run test:*", ["npm run test", "npm run test unit"], ["npm run testing"]),
    ("pytest*", ["pytest", "pytest-3", "pytest tests/ -x"], ["py.test"]),
    ("git * main", ["git push origin main", "git merge main"], ["git main", "git push origin main2"]),
    ("nix build .*", ["nix build .", "nix build .#hive"], ["nix build", "nix build /nix/store/x"]),
    ("git status", ["git status"], ["git status -s", "git statu"]),
    ("a*b*c", ["abc", "a b c", "abcbc"], ["acb", "ab"]),
]


@pytest.mark.parametrize(("source", "allowed", "refused"), MATCHING, ids=[m[0] for m in MATCHING])
def test_matching_follows_claude_code(source, allowed, refused):
    pattern = compile_pattern(source)
    assert [command for command in allowed if pattern.matches(command)] == allowed
    assert [command for command in refused if pattern.matches(command)] == []


def test_matching_takes_linear_time():
    pattern = compile_pattern("a*a*a*a*a*a*a*b")
    started = time.perf_counter()
    assert not pattern.matches("a" * 64_000)
    assert time.perf_counter() - started < 0.5  # a backtracking regex takes hours here


def test_a_pattern_names_only_what_it_spells_out():
    pattern = compile_pattern("python3 -c *")
    assert pattern.name == "python3"
    assert pattern.names("-c")
    assert not pattern.names("-e")
    assert compile_pattern("git -ccolor.ui=never status").names("-c")  # attached value
    assert compile_pattern("LANG=C sort *").names("LANG=C")
    assert compile_pattern("git --upload-pack=x fetch").names("--upload-pack")
    assert not compile_pattern("python3 *").names("-c")
    assert not compile_pattern("x*").names("xargs", as_command=True)
    assert compile_pattern("xargs *").names("xargs", as_command=True)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        (" git *", "starts or ends with whitespace"),
        ("git\n*", "control character"),
        ("git\0", "control character"),
        ("* --version", "must start with the command's name"),
        (":*", "must start with the command's name"),
        ("git log (x)", "parenthesis"),
        ("git  status", "two spaces in a row"),
        ("echo a\\*b", "contains a backslash"),
        ("git * x:*", "mixes the legacy ':*' suffix"),
        ("g" * 501, "longer than 500 characters"),
        (3, "must be a string"),
    ],
)
def test_bad_patterns_say_what_is_wrong(source, problem):
    message = pattern_problem(source)
    assert message is not None
    assert problem in message
    assert message.startswith(f"pattern {source!r} ")
    if isinstance(source, str):
        with pytest.raises(BadPattern, match="pattern"):
            compile_pattern(source)


def test_good_patterns_have_no_problem():
    for source, _, _ in MATCHING:
        assert pattern_problem(source) is None


def test_the_list_is_bounded():
    with pytest.raises(BadPattern, match="201 patterns; at most 200"):
        compile_patterns(["git *"] * 201)
