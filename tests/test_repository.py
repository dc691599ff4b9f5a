"""The repository stands alone: no tracked file reaches outside it, every bundled data file says where it came from."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_FOLDERS = ("data", "tests/fixtures")
TEXT_SUFFIXES = {".py", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".md", ".txt", ".json", ".env"}
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".gitignore", ".dockerignore"}

RELATIVE_PATH = re.compile(r"(?<![\w.])((?:\.\./)+)([\w.-]*)")
FILE_PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(\.parents\[(\d+)\]|(?:\.parent\b)+)")
ROOT_PARENT = re.compile(r"\b(?:ROOT|REPO|REPO_ROOT|PROJECT_ROOT)\.parent\b")
SIBLING = "shared"  # the data folder beside the checkout on the machines that develop rtml
NAMED_OUTSIDE = re.compile(rf"{SIBLING}/data|\"{SIBLING}\"\s*/\s*\"data\"|{SIBLING.upper()}_DATA|(?<![\w.])/work/")


def tracked_files(repo: Path) -> list[Path]:
    """Every file git tracks (or, outside a git checkout, every file under the root but .venv)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True
        ).stdout.decode()
        return [repo / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".rtml", "node_modules"}
        return [p for p in repo.rglob("*") if p.is_file() and not skip & set(p.relative_to(repo).parts)]


def is_text_source(repo: Path, path: Path) -> bool:
    relative = path.relative_to(repo).as_posix()
    if any(relative.startswith(folder + "/") for folder in DATA_FOLDERS):
        return relative.endswith("README.md")
    return path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES


def _outside(repo: Path, target: Path) -> bool:
    return not target.resolve().is_relative_to(repo.resolve())


def outside_references(repo: Path, path: Path) -> list[str]:
    """Each reference in ``path`` to a location outside ``repo``, as 'line N: text'."""
    found = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        problems = []
        for ups, rest in RELATIVE_PATH.findall(line):
            # Read relative to the file's folder and to the root (Makefile, scripts, CI run from it).
            if _outside(repo, path.parent / ups / rest) and _outside(repo, repo / ups / rest):
                problems.append(ups + rest)
        for chain, index in FILE_PARENTS.findall(line):
            up = int(index) + 1 if index else chain.count(".parent")
            if _outside(repo, path.parents[up - 1] if up <= len(path.parents) else Path("/")):
                problems.append(f"Path(__file__){chain}")
        problems += ROOT_PARENT.findall(line) + NAMED_OUTSIDE.findall(line)
        found += [f"line {number}: {problem}" for problem in problems]
    return found


def test_no_tracked_file_refers_to_a_path_outside_the_repository():
    this_file = Path(__file__).resolve()
    offenders = {
        path.relative_to(REPO).as_posix(): refs
        for path in tracked_files(REPO)
        if path.exists() and path.resolve() != this_file and is_text_source(REPO, path)
        for refs in [outside_references(REPO, path)]
        if refs
    }
    assert offenders == {}, f"paths outside the repository (a user's clone has none): {offenders}"


@pytest.mark.parametrize(
    ("relative", "text", "expected"),
    [
        ("tests/x.py", 'ROOT = Path(__file__).resolve().parents[2] / "shared"', 1),
        ("tests/x.py", 'ROOT = Path(__file__).resolve().parents[1] / "data"', 0),
        ("bench/x.py", "FILE = ROOT.parent / 'other'", 1),
        ("Makefile", "\tcp ../elsewhere/file.csv data/", 1),
        ("docs/x.md", "see [the README](../README.md)", 0),
        ("tests/x.py", "x = SHARED_DATA / 'candles'", 1),
        ("scripts/x.sh", "cat /work/other/file", 1),
        ("tests/x.py", "fine = 'data/btc.csv.gz'", 0),
    ],
)
def test_the_check_finds_outside_references(tmp_path, relative, text, expected):
    repo = tmp_path / "repo"
    path = repo / relative
    path.parent.mkdir(parents=True)
    path.write_text(text + "\n")
    assert len(outside_references(repo, path)) == expected


@pytest.mark.parametrize("folder", DATA_FOLDERS)
def test_every_bundled_data_file_has_a_provenance_line(folder):
    readme = (REPO / folder / "README.md").read_text()
    files = [p.name for p in (REPO / folder).iterdir() if p.is_file() and p.name != "README.md"]
    assert files, f"{folder} holds no data"
    missing = [name for name in files if f"`{name}`" not in readme]
    assert missing == [], f"{folder}/README.md names no source for {missing}"


def test_bundled_data_stays_small():
    total = sum(p.stat().st_size for folder in DATA_FOLDERS for p in (REPO / folder).iterdir() if p.is_file())
    assert total < 10 * 1024 * 1024, f"bundled data is {total / 1e6:.1f} MB"
