"""The ``writable`` grants: their grammar, what they match, and their problems."""

from __future__ import annotations

import pytest
from hyperhive_allowlist.writable import (
    BadGrant,
    compile_grant,
    compile_grants,
    for_state,
    grant_problem,
    resolved,
)

MATCHING = [
    ("/state/**", ["/state", "/state/a", "/state/a/b/c"], ["/statefoo", "/tmp/a", "/state/.git/config"]),
    ("/state/work/**", ["/state/work", "/state/work/x"], ["/state", "/state/other/x", "/state/work/.env"]),
    ("/state/out/*.txt", ["/state/out/a.txt", "/state/out/b.txt"], ["/state/out/a.log", "/state/out/.txt"]),
    ("/state/*/build/**", ["/state/a/build", "/state/a/build/x/y"], ["/state/build", "/state/a/b/build"]),
    ("/state/**/*.log", ["/state/x.log", "/state/a/b/x.log"], ["/state/a/x.txt", "/state/a/.x.log"]),
    ("/state/notes.md", ["/state/notes.md"], ["/state/notes.md/x", "/state/notes.mdx"]),
    ("/", ["/"], ["/etc"]),
]


@pytest.mark.parametrize(("source", "granted", "refused"), MATCHING, ids=[m[0] for m in MATCHING])
def test_what_a_grant_matches(source, granted, refused):
    grant = compile_grant(source)
    components = [[name for name in path.split("/") if name] for path in granted + refused]
    assert [grant.matches(names) for names in components] == [True] * len(granted) + [False] * len(refused)


def test_a_name_the_program_picks_needs_a_bare_wildcard():
    names = ["state", "out", "new"]
    assert compile_grant("/state/out/*").matches(names, wild_from=2)
    assert compile_grant("/state/**").matches(names, wild_from=2)
    assert not compile_grant("/state/out/*.txt").matches(names, wild_from=2)
    assert not compile_grant("/state/out/new").matches(names, wild_from=2)


def test_hidden_names_in_the_literal_prefix_are_the_state_dirs_own():
    state = "/root/.local/share/hyperhive/agents/w/state"  # the process backend's host path
    grant = compile_grant(state + "/**")
    assert grant.matches(f"{state}/x".split("/")[1:])
    assert not grant.matches(f"{state}/.git/config".split("/")[1:])


def test_matching_is_bounded_by_the_lengths():
    grant = compile_grant("/" + "/".join(["**"] * 50 + ["x"]))
    assert not grant.matches(["a"] * 2000)
    assert grant.matches(["a"] * 2000 + ["x"])


def test_state_means_the_agents_state_dir():
    sources = ["/state/**", "/state", "/statefoo/**", "/tmp/**", "/st*/x"]
    assert for_state(sources, "/var/lib/hyperhive/agents/w/state") == [
        "/var/lib/hyperhive/agents/w/state/**",
        "/var/lib/hyperhive/agents/w/state",
        "/statefoo/**",
        "/tmp/**",
        "/st*/x",
    ]
    assert for_state(sources, "/state") == sources


def test_a_symlinked_prefix_is_resolved(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    grant = resolved(compile_grant(f"{tmp_path}/link/*.txt"))
    assert grant.source == f"{tmp_path}/link/*.txt"  # shown as written
    assert grant.matches([*str(tmp_path / "real").split("/")[1:], "a.txt"])
    assert resolved(compile_grant("/state/**")) == compile_grant("/state/**")  # nothing to follow


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("state/**", "must be absolute"),
        ("", "must be absolute"),
        ("/state/" + "x" * 500, "longer than 500 characters"),
        ("/state/\nx", "control character"),
        ("/state/?", "only '*' and '**' as wildcards"),
        ("/state/[ab]", "only '*' and '**' as wildcards"),
        ("/state/{a,b}", "only '*' and '**' as wildcards"),
        ("~/x", "must be absolute"),
        ("/state/", "has an empty component"),
        ("/state//x", "has an empty component"),
        ("/state/../etc", "contains '.' or '..'"),
        ("/state/a**", "'**' must be a whole component"),
        ("/state/.git/**", "names a hidden file or directory"),
        ("/state/**/.bashrc", "names a hidden file or directory"),
        (3, "must be a string"),
    ],
)
def test_bad_grants_say_what_is_wrong(source, problem):
    message = grant_problem(source)
    assert message is not None
    assert problem in message
    assert message.startswith(f"writable path {source!r} ")


def test_the_list_is_bounded():
    with pytest.raises(BadGrant, match="101 paths; at most 100"):
        compile_grants(["/state/**"] * 101)
    assert [grant.source for grant in compile_grants(["/state/**", "/tmp/**"])] == ["/state/**", "/tmp/**"]
