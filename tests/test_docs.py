"""The README and docs/ as a user reads them: the Quickstart CI runs, links that resolve, and every
command they quote still accepted as written.

Running every quoted command would take hours (the claims and the sweeps are minutes each), so a
`python -m sim.run` command is checked the way a run starts: composed and validated by
`sim.run.validate` (unknown keys, options and bad values fail there, before compilation); a
multirun's comma lists are expanded and each job validated. Commands of the other entry points
are parsed by their own argument parsers, and `python -c` snippets (cheap by nature) are run.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def quickstart_commands() -> list[str]:
    section = _text(ROOT / "README.md").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def test_readme_is_a_front_page_with_the_two_quickstart_commands():
    assert len(_text(ROOT / "README.md").splitlines()) <= 200
    run, test = quickstart_commands()  # exactly two
    assert run.startswith("python3 -m venv .venv") and run.endswith("-m sim.run")
    assert test.startswith("python3 -m venv .venv") and test.endswith("-m pytest -q")
    ci = _text(ROOT / ".ci" / "run")
    # .ci/run takes the first README line that looks like the test command: it must be this one
    pattern = re.search(r"grep -m1 -E '([^']+)' README.md", ci).group(1)
    first = next(line for line in _text(ROOT / "README.md").splitlines() if re.search(pattern, line))
    assert first == test


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", _text(page), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def _commands(text: str) -> list[str]:
    """Shell commands quoted in a page: the lines of ```bash blocks (continuations joined, simple
    VAR="..." definitions of the block expanded) and inline `python ...` code spans."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        env = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if m := re.fullmatch(r'(\w+)="([^"]*)"', line):
                env[m.group(1)] = m.group(2)
            elif line:
                found.append(re.sub(r"\$(\w+)", lambda v: env.get(v.group(1), v.group(0)), line))
    inline = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    found += re.findall(r"`(python3? -[mc] [^`]+)`", inline)
    return found


def _python_argv(command: str) -> list[str] | None:
    """argv after `python` of the last python invocation in a command line, or None."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    parts, words = [], []
    for token in lexer:
        if set(token) <= set(";&|"):
            parts, words = parts + [words], []
        else:
            words.append(token)
    for words in reversed(parts + [words]):
        if words and re.fullmatch(r"(\S*/)?python3?", words[0]):
            return words[1:]
    return None


def _multirun_jobs(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs: the product of its comma-separated values (Hydra's sweep syntax)."""
    choices = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and "," in value and not value.startswith(("[", "'", '"')):
            choices.append([f"{key}={v}" for v in value.split(",")])
        else:
            choices.append([o])
    return [list(job) for job in itertools.product(*choices)]


def check_command(argv: list[str]) -> None:
    """Raise if `python <argv>` would be refused before it starts working."""
    if argv[0] == "-c":
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(argv[1], "<docs>", "exec"), {})
        return
    module, args = argv[1], argv[2:]
    if module == "sim.run":
        from sim.run import validate

        if "--cfg" in args or "--help" in args:
            return
        # the launcher group and hydra.* keys configure Hydra (their plugins may be absent here)
        args = [a for a in args if not a.startswith(("hydra/", "hydra."))]
        multirun = "-m" in args or "--multirun" in args
        args = [a for a in args if a not in ("-m", "--multirun")]
        for job in (_multirun_jobs(args) if multirun else [args]):
            validate(job)
    elif module == "sim.bench":
        from sim import bench

        values = {i + 1 for i, a in enumerate(args) if a.startswith("--") and "=" not in a}  # an option's value
        unknown = [a for i, a in enumerate(args) if not a.startswith("-") and i not in values and a not in bench.SECTIONS]
        assert not unknown, f"unknown benchmark sections {unknown}; allowed: {bench.SECTIONS}"
    elif module == "sim.bench_lm":
        from sim import bench_lm

        bench_lm.parser().parse_args(args)  # exits (SystemExit 2) on an option it does not know
    elif module == "sim.aggregate" or module.startswith("experiments."):
        pass  # a directory, or a long experiment's subcommand: nothing to check without running it
    elif not module.startswith(("sim", "experiments")):
        return  # pip, pytest, venv: installation, checked by CI running the Quickstart itself
    else:
        pytest.fail(f"the docs quote `python -m {module}`, which this test does not know how to check")


def _docs_commands() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for command in _commands(_text(page)):
            argv = _python_argv(command)
            # placeholders (<dir>, ...) and `key=value ...` templates are prose, not commands
            # usage synopses (`[--repeats N]`, `[a|b]`) are prose too
            if argv and len(argv) >= 2 and not re.search(r"<[^>]+>|\.\.\.|\[-|\[\w+\|", command):
                out.append((page.name, command))
    return out


DOCS_COMMANDS = _docs_commands()


def test_the_docs_quote_commands():
    assert len(DOCS_COMMANDS) >= 10, DOCS_COMMANDS  # the extraction itself still works


@pytest.mark.parametrize("page,command", DOCS_COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in DOCS_COMMANDS])
def test_quoted_command_is_accepted(page, command):
    check_command(_python_argv(command))
