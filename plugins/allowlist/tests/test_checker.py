"""The checker process: what it lets through, and how it fails closed on bad input."""

from __future__ import annotations

import json

import pytest

LEGITIMATE = [
    "git status",
    "git",
    "git status && git diff --stat",
    "git log --oneline -5 | grep fix",
    'git commit -m "fix: the parser; handle && and | in messages"',
    "git log --format='%H $x' -3",
    "git -C /state/repo --no-pager log -1",
    "git push -u origin main",
    "git clone --depth 1 https://example.com/repo.git /tmp/repo",
    "git add *.py",
    "git log @{u}..HEAD",
    "pytest -q tests/ 2>&1 | grep -c passed",
    "pytest-3 --version",
    "nix build .#hyperhive",
    "python3 script.py --verbose",
    "python3 -m pytest -c pytest.ini",
    "python3 -W ignore script.py",
    "python3 ~/tools/report.py",
    "bash ./build.sh",
    "perl -Ilib script.pl",
    "ls -la /state; ls /tmp",
    "ls *.md",
    "echo done > /tmp/result.txt",
    "echo done >> /state/notes/result.txt",
    "echo done > result.txt",
    "git status > /dev/null 2>&1",
    "git status 2>/dev/null >&2",
    "cat <<'EOF' > /tmp/plan.txt\n$HOME is literal here\nEOF",
    "cat <<EOF\nplain text\nEOF",
    "grep -n 'TODO' *.py < /etc/hostname",
    "grep foo <<< 'a haystack'",
    "timeout 60 pytest -x",
    "timeout -k 5s --preserve-status 1m git fetch",
    "nice -n 10 pytest",
    "nohup git gc",
    "find . -name '*.py' -newer setup.cfg",
    "[ -f /state/notes.md ] && cat /state/notes.md",
    "test -d /tmp || echo missing",
    "printf '%s\\n' a b",
    "echo a\\ b 'c d' \"e f\"",
    "git status # why not",
    "git status &&\n  git log -1",
    "git fetch &",
    "git log --output=/state/log.txt",
    "git log --output=log.txt -3",
    "git show --output=/dev/null",
    "git format-patch -1 -o /tmp/patches",
    "git -C /state/repo log --output=../log.txt",
    "git --git-dir=/state/repo/.git log -1",
    "git clone https://example.com/repo.git",
    "git bundle create /tmp/repo.bundle HEAD",
    "sort -o /state/sorted.txt in.txt",
    "sort in.txt -o /tmp/sorted",
    "sort -k2 -t, in.csv",
    "tee -a /state/notes.md",
    "cp in /state/copy",
    "cp -r /state/repo /tmp/",
    "mv /tmp/a /state/b",
    "sed -i.bak s/a/b/ /state/x",
    "sed -n '/x/p' in",
    "sed -e 's/a/b/' -e '1w /tmp/first' in",
    "find . -name '*.py' -fprint /tmp/list",
    "tar -czf /tmp/out.tgz dir",
    "tar -tzf /usr/share/doc/x.tgz",
    "curl -sSo /tmp/x https://example.com/",
    "curl -O https://example.com/file.txt",
    "wget -qO /tmp/x https://example.com/",
    "mkdir -p /state/a/b",
    "touch /state/made",
    "dd if=in of=/tmp/out",
]


@pytest.mark.parametrize("command", LEGITIMATE, ids=[command[:40] for command in LEGITIMATE])
def test_legitimate_commands_pass(check, command):
    assert check(command) is None


def test_an_exact_pattern_allows_that_command_only(check):
    patterns = ["git status", "npm run test:*"]
    assert check("git status", patterns) is None
    assert check('git "status"', patterns) is not None  # matched as written, like Claude Code
    assert check("git status --short", patterns) is not None
    assert check("npm run test", patterns) is None
    assert check("npm run test unit", patterns) is None
    assert check("npm run testing", patterns) is not None


def test_a_descriptor_sticks_only_to_operators_that_take_one(check):
    assert check("git 2>/dev/null", ["git"]) is None
    assert check("git 2&>/dev/null", ["git"]) is not None  # bash runs `git 2`, with &> to /dev/null


def test_word_boundaries_follow_claude_code(check):
    assert check("ls", ["ls *"]) is None
    assert check("lsof", ["ls *"]) is not None
    assert check("lsof", ["ls*"]) is None


def test_risky_words_pass_when_a_pattern_spells_them_out(check):
    assert check("python3 -c 'print(1)'", ["python3 -c *"]) is None
    assert check("git -c color.ui=never status", ["git -c color.ui=never status"]) is None
    assert check("find . -name '*.pyc' -delete", ["find . -name * -delete"]) is None
    assert check("tar xzf /tmp/a.tgz", ["tar xzf *"]) is None  # an old-style bundle, spelled out
    assert check("tar -xzf /tmp/a.tgz", ["tar -x*"]) is not None  # not through a wildcard
    assert check("./manage.py test", ["./manage.py test"]) is None
    assert check("LANG=C sort x", ["LANG=C sort *"]) is None
    assert check("xargs -n1 echo", ["xargs *"]) is None
    # ... and not through a wildcard that happens to cover them
    assert check("python3 -c 'print(1)'", ["python3 *"]) is not None
    assert check("xargs -n1 echo", ["x*"]) is not None


def test_denial_names_the_failing_part_and_the_allowed_patterns(check):
    reason = check("git status && rm -rf x", ["git *", "pytest*"])
    assert reason == (
        "hyperhive allow-list: part 2 (`rm -rf x`): `rm -rf x` matches none of the allowed patterns. "
        "Allowed commands: `git *`, `pytest*`; join them with &&, ||, ;, | or newlines."
    )


def test_a_long_command_is_cut_short_in_the_reason(check):
    reason = check("rm " + "x" * 5000)
    assert len(reason) < 1000
    assert "`rm xxx" in reason
    assert "…` matches none of the allowed patterns" in reason


def test_an_empty_list_allows_no_command(check):
    assert "Allowed commands: nothing" in check("ls", [])


def test_relative_redirections_resolve_against_the_hook_cwd(check):
    assert check("echo x > out.txt", cwd="/etc") is not None
    assert check("echo x > out.txt", cwd="/tmp/work") is None


def test_symlinks_out_of_the_agent_dirs_are_followed(check, tmp_path):
    (tmp_path / "escape").symlink_to("/etc")
    reason = check("echo x > escape/passwd", writable=[f"{tmp_path}/**"], cwd=str(tmp_path))
    assert f"`>` writes to `{tmp_path}/escape/passwd` (`/etc/passwd`), outside what the agent may write" in reason


def test_writes_go_only_where_writable_says(check):
    work = ["/state/work/**"]
    assert check("echo x > /state/work/a/b", writable=work) is None
    assert check("git log --output=/state/work/log", writable=work) is None
    assert check("git log --output=log", writable=work, cwd="/state/work") is None
    reason = check("echo x > /state/notes.md", writable=work)
    assert "`>` writes to `/state/notes.md`, outside what the agent may write (/state/work/**)" in reason
    assert "outside what the agent may write (/state/work/**)" in check("sort -o /tmp/x in", writable=work)
    texts = ["/state/out/*.txt"]
    assert check("sort -o /state/out/a.txt in", writable=texts) is None
    assert check("sort -o /state/out/a.log in", writable=texts) is not None
    assert check("sort -o /state/out/deeper/a.txt in", writable=texts) is not None
    # a program that names its own files needs the whole directory
    assert check("git format-patch -1 -o /state/out", writable=texts) is not None
    assert check("git format-patch -1 -o /state/out", writable=["/state/out/*"]) is None
    assert "outside what the agent may write (nothing)" in check("echo x > /tmp/x", writable=[])


def test_hidden_names_are_never_writable_whatever_is_granted(check):
    reason = check("echo x > /state/work/.env", writable=["/state/work/*"])
    assert "inside `.env`: hidden files and directories configure programs" in reason
    assert check("touch /state/work/.x", writable=["/state/**"]) is not None
    assert "`rm` writes to `/state/repo/.git`, inside `.git`" in check("rm -rf /state/repo/.git", ["rm *"])
    assert check("rm -rf /state/build", ["rm *"]) is None
    assert check("rm -f *.pyc", ["rm *"]) is None


def test_a_glob_must_only_reach_writable_paths(check, tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "link.txt").symlink_to("/etc/hostname")
    grant = [f"{tmp_path}/**"]
    reason = check(f"touch {tmp_path}/*.txt", writable=grant)
    assert f"`touch` writes to `{tmp_path}/link.txt` (`/etc/hostname`), outside" in reason  # what it matches now
    (tmp_path / "link.txt").unlink()
    assert check(f"touch {tmp_path}/*.txt", writable=grant) is None
    assert "not everything it may match is writable" in check("rm -f /state/*", ["rm *"], ["/state/out/**"])


def test_a_symlink_in_a_grant_is_followed(check, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert check(f"echo x > {tmp_path}/link/out", writable=[f"{tmp_path}/link/**"]) is None
    assert check(f"echo x > {tmp_path}/real/out", writable=[f"{tmp_path}/link/**"]) is None


def test_other_tools_are_not_its_business(raw_check, event, default_config):
    assert raw_check(event("rm -rf x", tool="Write"), default_config) is None


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        ("not json", "the hook input is not valid JSON"),
        ("[1, 2]", "the hook input is not a JSON object"),
        (json.dumps({"tool_name": "Bash", "tool_input": {}}), "the Bash call has no command"),
        (json.dumps({"tool_name": "Bash", "tool_input": {"command": 3}}), "the Bash call has no command"),
        ("{" + " " * (1024 * 1024 + 1) + "}", "larger than 1048576 bytes"),
        ("\udcff", "hyperhive allow-list: "),
    ],
    ids=["not-json", "not-object", "no-command", "command-not-string", "oversized", "not-utf8"],
)
def test_bad_hook_input_is_denied(raw_check, default_config, stdin, reason):
    denial = raw_check(stdin, default_config)
    assert denial is not None
    assert reason in denial


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("not json", "JSONDecodeError"),
        ({"bash": "git *", "writable": ["/state/**"]}, "needs the lists 'bash' and 'writable'"),
        ({"bash": ["git *"], "dirs": ["/state"]}, "needs the lists 'bash' and 'writable'"),
        ({"bash": ["git *"], "writable": ["state/**"]}, "writable path 'state/**' must be absolute"),
        ({"bash": ["git *"], "writable": [3]}, "writable path 3 must be a string"),
        ({"bash": ["* --help"], "writable": ["/state/**"]}, "must start with the command's name"),
    ],
    ids=["not-json", "bash-not-list", "no-writable", "relative-writable", "writable-not-string", "bad-pattern"],
)
def test_a_misconfigured_checker_denies_everything(raw_check, event, config, reason):
    denial = raw_check(event("git status"), config)
    assert denial is not None
    assert "the checker is misconfigured or failed" in denial
    assert reason in denial
