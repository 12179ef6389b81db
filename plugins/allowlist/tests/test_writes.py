"""What commands write, read off their command lines: against the real programs, and through the checker."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hyperhive_allowlist.policy import installed_git_commands, read_part
from hyperhive_allowlist.shell import Refused, split_commands
from hyperhive_allowlist.writes import DIR, PREFIX, PROGRAMS, read_sed_script

# Each runs in a fresh directory holding `in` (a text file), `sub/` and a git repository
# in `repo/` (cwd for git); OUT, OUT2 and DIR name where it should write. The real
# program runs, and every file it created or changed must be one the reading found.
REAL = [
    "sort -rno OUT in",
    "sort --outp=OUT in",
    "sort in -o OUT",
    "sort -oOUT in",
    "shuf -oOUT in",
    "uniq in OUT",
    "tee -a OUT OUT2 < in",
    "cp in OUT",
    "cp in sub",
    "cp -t sub in",
    "cp --target=sub in",
    "cp --parents in sub",
    "mv in OUT",
    "ln -s in OUT",
    "ln -s /etc/hostname",
    "install -D in sub/deep/OUT",
    "install -d OUT OUT2",
    "touch OUT OUT2",
    "mkdir -p OUT/x",
    "truncate -s 10 OUT",
    "rm in",
    "split -l 1 in OUT",
    "csplit -s -f OUT in 2",
    "dd if=in of=OUT status=none",
    "sed -n 'w OUT' in",
    "sed 's/a/b/w OUT' in",
    "sed -e 's/a/b/' -e '1w OUT' in",
    "sed -i.bak s/a/b/ in",
    "cp -b -S .old in sub/in2",
    "split -l 1 --additional-suffix=.txt in sub/OUT",
    "sed -ni p in",
    "find . -name in -fprint OUT",
    "find . -fprintf OUT '%p' -name in",
    "tar -cf OUT in",
    "tar cf OUT in",
    "tar -czf OUT in",
    "tar -f OUT -c in",
    "tar --create --file=OUT in",
    "curl -s -o OUT file://HERE/in",
    "curl -sOo OUT file://HERE/in",
    "curl -s -O file://HERE/in --output-dir sub",
    "git log --output=../OUT",
    "git log --output ../OUT",
    "git show --output=../OUT",
    "git -C repo log --output=OUT",
    "git -C sub -C ../repo log --output=../OUT",
    "git format-patch -q -1 -o ../DIR",
    "git format-patch -1 -ko../DIR",
    "git archive -o ../OUT HEAD",
    "git bundle create ../OUT HEAD",
    "git clone -q . ../OUT",
    "git init -q ../OUT",
    "git worktree add -q ../OUT",
    "git merge-file ../in ../in ../in",
    "git fast-export --export-marks=../OUT HEAD",
]


def make_dir(root: Path) -> Path:
    root.mkdir()
    (root / "in").write_text("a\nb\na\n")
    (root / "sub").mkdir()
    repo = root / "repo"
    env = git_env(root)
    script = "git init -q -b main && echo x > f && git add f && git commit -q -m one"
    script += " && git commit -q --allow-empty -m two"
    repo.mkdir()
    subprocess.run(script, shell=True, cwd=repo, env=env, check=True, timeout=30)
    return repo


def git_env(root: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(root / "home"),
        "GIT_CONFIG_NOSYSTEM": "1",
        **{f"GIT_{who}_NAME": "a" for who in ("AUTHOR", "COMMITTER")},
        **{f"GIT_{who}_EMAIL": "a@b.invalid" for who in ("AUTHOR", "COMMITTER")},
    }


def snapshot(root: Path) -> dict[str, tuple[float, int]]:
    """Every file and directory under ``root`` but the repository's own .git: mtime and size."""
    seen = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name != ".git"]
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            seen[path] = (info.st_mtime_ns, info.st_size)
    return seen


def read_paths(command: str, cwd: Path) -> list[tuple[str, str]]:
    """Where the checker's reading says the command writes: (path, "file", "dir" written into, or "prefix")."""
    [part] = split_commands(command)
    reading = read_part(part.words, installed_git_commands)
    assert reading.risks == [], reading.risks
    found = []
    for write in reading.writes:
        base = cwd if write.base is None else cwd / write.base
        path = os.path.normpath(os.path.join(base, write.path.text))
        if write.name is not None:
            found.append((os.path.join(path, write.name), "file"))
        else:
            found.append((path, {DIR: "dir", PREFIX: "prefix"}.get(write.kind, "file")))
    return found


@pytest.mark.parametrize("template", REAL)
def test_the_reading_finds_every_file_the_real_program_writes(tmp_path, template):
    program = template.split()[0]
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    root = tmp_path / "t"
    repo = make_dir(root)
    cwd = repo if program == "git" and " -C " not in template else root
    command = template.replace("HERE", str(root)).replace("OUT2", "out2").replace("OUT", "out").replace("DIR", "dir")
    read = read_paths(command, cwd)
    before = snapshot(root)
    done = subprocess.run(command, shell=True, cwd=cwd, env=git_env(root), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    after = snapshot(root)
    changed = [path for path, state in after.items() if before.get(path) != state]
    changed += [path for path in before if path not in after]  # removed
    assert changed, "the command wrote nothing, so it proves nothing"
    for path in changed:
        covered = any(
            path == written
            or (path.startswith(written + "/") and (kind == "dir" or os.path.isdir(written)))
            or (kind == "prefix" and path.startswith(written))
            for written, kind in read
        )
        # A directory whose entries changed is covered by a write inside it.
        covered = covered or (os.path.isdir(path) and any(w.startswith(path + "/") for w, _ in read))
        assert covered, f"{command}: wrote {path}, which the reading missed ({read})"


def test_every_table_program_is_exercised():
    exercised = {template.split()[0] for template in REAL}
    assert set(PROGRAMS) - exercised <= {"wget", "unlink", "rmdir", "shred"}  # wget cannot fetch file:// URLs


@pytest.mark.parametrize(
    ("script", "files", "runs"),
    [
        ("s/a/b/", [], False),
        ("s/a/b/w out", ["out"], False),
        ("1w out; p", ["out; p"], False),  # sed reads a file name to the end of the line
        ("/x/!w out\np", ["out"], False),
        ("\\%a/b%w out", ["out"], False),
        ("s/[/]/x/w out", ["out"], False),  # the delimiter inside brackets is part of the regex
        ("$W out", ["out"], False),
        ("1e touch x", [], True),
        ("s/a/b/e", [], True),
        ("s/a/b/gew out", ["out"], True),
        ("a\\\nw not a command", [], False),
        ("a text w out", [], False),
        ("1{w out\n}", ["out"], False),
        (":a;s/b/c/;ta", [], False),
        ("y/abc/xyz/", [], False),
        ("# w comment\np", [], False),
        ("r /etc/hostname", [], False),
    ],
)
def test_sed_scripts(script, files, runs):
    assert read_sed_script(script) == (files, runs)


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("s/a/b", "an unterminated"),
        ("s/a/b/X", "unknown flag `X`"),
        ("k", "unknown command `k`"),
        ("w", "`w` without a file name"),
        ("1", "an address without a command"),
        ("p x", "unexpected `x`"),
        ("s/[a/b/", "an unterminated"),
    ],
)
def test_sed_scripts_that_cannot_be_read_are_refused(script, why):
    with pytest.raises(Refused, match=why):
        read_sed_script(script)
