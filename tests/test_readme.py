"""The README's commands run as written, and the docs name only commands and options that exist.

The shell commands of the README's code blocks (lines that start with `segtool `, `$ segtool `
or `python scripts/`) run for real, in the README's order, in a fresh folder holding what a
clone has (copies of configs/ and docs/), after the set-up command's own `segtool train
configs/quickstart.yaml`, which writes the runs/quickstart that later examples use. A
command runs unless one of the SKIP rules below names it (data outside the repository, a
download, a GPU, several processes, minutes of training, or the reader's own data); each
skip is reported with its rule. A command whose shown output has an `error:` line is one
the README shows failing on purpose: it must exit 2 and print that line.

Every `segtool` command in the README and in docs/*.md (skipped or not, torchrun's
included) must name a real command and only options it has, and the files from the
repository it names must exist.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from segtool.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# The README's set-up command, exactly (.ci/run runs its twin, the ".[dev]" one).
SETUP = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[train]" && .venv/bin/segtool train configs/quickstart.yaml'
)

# The skip rules, in order: a command containing the text on the left is not run here.
SKIP = [
    ("../shared", "needs CamVid, which lives outside the repository"),
    ("torchrun", "starts several processes (tests/test_distributed.py covers torchrun)"),
    ("--nproc", "starts several processes (tests/test_distributed.py covers it)"),
    ("time_limit", "trains for minutes by design"),
    ("--device cuda", "needs a GPU"),
    ("path/to", "a placeholder for the reader's own data"),
    ("data/", "the reader's own data (or CamVid as scripts/get_camvid.py lays it out)"),
    ("configs/mine.yaml", "written by `segtool init path/to/data`, which is not run"),
    ("bench_", "benchmarks take minutes (and bench_install.py builds virtual environments)"),
    ("segtool serve", "serves until stopped (tests/test_serve.py runs it as a process)"),
]


def skip_reason(command: str) -> str | None:
    if "get_camvid" in command and "--archive" not in command:
        return "downloads CamVid (about 600 MB) unless --archive names a local copy"
    for text, why in SKIP:
        if text in command:
            return f"contains {text!r}: {why}"
    return None


def code_blocks(text: str):
    """(info string, lines) of each fenced ``` block."""
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```\s*$", text, re.S | re.M):
        yield m.group(1).strip(), m.group(2).splitlines()


def readme_commands(text: str):
    """[(command, shown output lines)] from the README's shell blocks, in order."""
    found = []
    for info, lines in code_blocks(text):
        if info not in ("", "sh", "bash", "console", "shell"):
            continue  # yaml (the CI recipe, run by .ci/run) and python (tests/test_api.py)
        for i, line in enumerate(lines):
            prompt = line.startswith("$ ")
            command = line[2:] if prompt else line
            if not command.startswith(("segtool ", "python scripts/")):
                continue
            shown = []
            if prompt:  # the output shown under it, up to the next prompt
                for after in lines[i + 1 :]:
                    if after.startswith("$ "):
                        break
                    shown.append(after)
            found.append((command, shown))
    return found


def test_the_benchmarks_page_answers_in_at_most_300_lines():
    assert len((DOCS / "benchmarks.md").read_text().splitlines()) <= 300


def test_the_readme_is_short_and_keeps_its_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert SETUP in text
    assert 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/pytest' in text


def test_the_readme_links_every_docs_page_and_each_link_resolves():
    text = README.read_text()
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = [page for entry in nav for page in entry.values()]
    linked = set(re.findall(r"\]\(docs/([^)#]+)", text))
    missing = [p for p in pages if p not in linked and not p.startswith("examples/")]
    assert not missing, f"the README links no {missing}"
    for target in re.findall(r"\]\(([^)#]+)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"the README links {target}, which does not exist"


COMMANDS = readme_commands(README.read_text())


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A folder holding what a clone has, after the set-up command's quickstart training."""
    here = tmp_path_factory.mktemp("clone")
    for folder in ("configs", "docs"):
        shutil.copytree(ROOT / folder, here / folder)
    env = {**os.environ, "SEGTOOL_CACHE": str(tmp_path_factory.mktemp("cache"))}
    train = "segtool " + SETUP.split(".venv/bin/segtool ", 1)[1]
    done = run(train, here, env)
    assert done.returncode == 0, f"the set-up command's `{train}` failed:\n{done.stderr[-3000:]}"
    assert (here / "runs" / "quickstart" / "best.pt").is_file()
    return here, env


def run(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    argv = shlex.split(command, comments=True)
    if argv[0] == "segtool":
        argv = [sys.executable, "-m", "segtool", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command, shown", COMMANDS, ids=[f"{i}:{c[:60]}" for i, (c, _) in enumerate(COMMANDS)])
def test_a_readme_command_runs_as_written(clone, command, shown):
    why = skip_reason(command)
    if why:
        pytest.skip(why)
    here, env = clone
    done = run(command, here, env)
    said = done.stdout + done.stderr
    errors = [line for line in shown if line.startswith("error:")]
    if errors:  # shown failing on purpose: a usage or config error, in the words shown
        assert done.returncode == 2, f"{command}: exit {done.returncode}, expected 2\n{said[-3000:]}"
        for line in errors:
            assert line in said, f"{command}: the README shows {line!r}; segtool said:\n{said[-3000:]}"
    else:
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{said[-3000:]}"
    for line in shown:
        if line.startswith("wrote "):
            assert line in said, f"{command}: the README shows {line!r}; segtool said:\n{said[-3000:]}"


def test_the_readme_shows_the_three_commands_init_and_a_failure():
    words = [shlex.split(c, comments=True)[:2] for c, _ in COMMANDS]
    for name in ("train", "evaluate", "predict", "init"):
        assert ["segtool", name] in words
    assert any(line.startswith("error:") for _, shown in COMMANDS for line in shown)
    assert not skip_reason(COMMANDS[0][0]), "the first README command runs"


# --- every segtool command the README and the docs pages show --------------------------


def shown_command_lines(text: str):
    """Shell lines of the code blocks, and the `run:` steps of YAML blocks (folded ones joined)."""
    for info, lines in code_blocks(text):
        if info == "python":
            continue
        if info == "yaml":
            i = 0
            while i < len(lines):
                m = re.match(r"(\s*)- run: (.*)", lines[i])
                i += 1
                if not m:
                    continue
                if m.group(2).strip() != ">":
                    yield m.group(2)
                    continue
                folded = []
                while i < len(lines) and len(lines[i]) - len(lines[i].lstrip()) > len(m.group(1)) + 2:
                    folded.append(lines[i].strip())
                    i += 1
                yield " ".join(folded)
            continue
        for line in lines:
            yield line[2:] if line.startswith("$ ") else line


def segtool_invocations(line: str):
    """(command, [options], [arguments]) of each segtool invocation on a shell line."""
    for part in re.split(r"&&|\|\|", line):
        try:
            argv = shlex.split(part, comments=True)
        except ValueError:
            continue
        for i, word in enumerate(argv):
            if i == 0 and (word == "segtool" or word.endswith("/segtool")):
                rest = argv[i + 1 :]
            elif word == "-m" and argv[i + 1 : i + 2] == ["segtool"]:
                rest = argv[i + 2 :]
            else:
                continue
            if rest and not rest[0].startswith("-"):
                yield rest[0], [w.split("=")[0] for w in rest[1:] if w.startswith("-")], rest[1:]
            break


OPTIONS = {
    name: {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]} | {"--help"}
    for name, cmd in typer.main.get_command(app).commands.items()
}
# benchmarks.md is left out: it records the commands that measured its tables as they were
# run (scripts since moved included), and shows their output.
PAGES = [README, *sorted(p for p in DOCS.glob("*.md") if p.name.lower() != "benchmarks.md")]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_commands_a_page_shows_exist_with_their_options(page):
    written = set()  # what earlier commands on the page write (--out), so may be named later
    problems = []
    for line in shown_command_lines(page.read_text()):
        for command, options, args in segtool_invocations(line):
            if command not in OPTIONS:
                problems.append(f"{line}: segtool has no command {command!r}")
                continue
            problems += [f"{line}: segtool {command} has no option {o}" for o in options if o not in OPTIONS[command]]
            for before, word in zip(["", *args], args):
                if before == "--out":
                    written.add(word)
                elif word.startswith(("configs/", "docs/examples/", "scripts/")) and "*" not in word:
                    if word not in written and not (ROOT / word).exists():
                        problems.append(f"{line}: {word} does not exist")
        python = re.match(r"python (scripts/\S+|docs/examples/\S+)", line)
        if python and not (ROOT / python.group(1)).is_file():
            problems.append(f"{line}: {python.group(1)} does not exist")
    assert not problems, "\n".join(problems)
