"""The front door stays usable: a short README whose links resolve, docs pages that exist,
``jobs/`` holding only entry points, and indexes of ``benchmarks/`` and ``results/`` that name
every file (issue 24). No Ray, no data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = ["own-data", "config", "models", "sweeps", "pipeline", "profiling", "finetune-predict-export",
         "techniques", "results", "history", "development"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    files = [README, REPO / "cluster" / "README.md", REPO / "benchmarks" / "README.md",
             REPO / "results" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, markup and punctuation dropped,
    spaces to hyphens (``## Faults survived: `x.py` `` -> ``faults-survived-xpy``)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links keep their text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else HEADING.match(line)
        if m:
            a = github_anchor(m.group(2))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def test_github_anchor_rules():
    assert github_anchor("Faults survived and bad input: `python jobs/faults.py`") == \
        "faults-survived-and-bad-input-python-jobsfaultspy"
    assert github_anchor("Main job (CIFAR-10, fast recipe)") == "main-job-cifar-10-fast-recipe"
    assert github_anchor("data.pca") == "datapca"


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; the front page keeps <= ~220"
    ci = (REPO / ".ci" / "run").read_text()
    test_command = next(line for line in lines[:8] if "pytest" in line)
    assert test_command.strip() in ci, ".ci/run must run the README's test command verbatim"
    assert any("jobs/train.py" in line and "pip install" in line for line in lines[:8])


def test_a_newcomer_finds_the_main_commands_in_the_first_100_lines():
    head = "\n".join(README.read_text().splitlines()[:100])
    for needle, what in [("pip install -e \".[", "install with the extras"),
                         ("data.train=", "the own-data quickstart"),
                         ("scaling.use_gpu=true", "the GPU submit"),
                         ("ray job submit", "the cluster submit"),
                         ("RAY_AUTH_MODE=token", "token auth"),
                         ("jobs/tune.py", "the sweep command")]:
        assert needle in head, f"README.md: {what} ({needle!r}) not in the first 100 lines"
    # token auth is switched on before the cluster starts and before anything is submitted
    auth, start = head.index("export RAY_AUTH_MODE=token"), head.index("ray start --head")
    assert auth < start < head.index("ray job submit --address", start)


def test_every_docs_page_exists_and_is_linked_from_the_readme():
    text = README.read_text()
    for page in PAGES:
        assert (REPO / "docs" / f"{page}.md").exists(), f"docs/{page}.md is missing"
        assert f"docs/{page}.md" in text, f"README.md does not link docs/{page}.md"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path):
    bad = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):            # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{path.relative_to(REPO)}: broken links:\n" + "\n".join(bad)


def test_jobs_holds_only_entry_points_and_recipes():
    from cnn_ray.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    commands = {c.replace("-", "_") for c in sub.choices}
    scripts = {p.stem for p in (REPO / "jobs").glob("*.py")}
    extra = scripts - commands - {"replay_sweep"}
    assert not extra, f"jobs/ holds scripts that are not entry points: {sorted(extra)}; " \
                      "measuring scripts go to benchmarks/"
    others = {p.name for p in (REPO / "jobs").iterdir()} - {f"{s}.py" for s in scripts} \
        - {"configs", "__pycache__"}
    assert not others, f"jobs/ holds {sorted(others)}"
    for script in scripts - {"replay_sweep"}:
        assert f'main(["{script}"' in (REPO / "jobs" / f"{script}.py").read_text()


def test_benchmarks_readme_names_every_script():
    text = (REPO / "benchmarks" / "README.md").read_text()
    files = [p for p in (REPO / "benchmarks").rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh", ".yaml") and "__pycache__" not in p.parts]
    assert files
    missing = [str(p.relative_to(REPO / "benchmarks")) for p in files
               if str(p.relative_to(REPO / "benchmarks")) not in text]
    assert not missing, f"benchmarks/README.md does not list {missing}"


def test_results_readme_indexes_every_file():
    text = (REPO / "results" / "README.md").read_text()
    files = [p for p in (REPO / "results").rglob("*") if p.is_file() and p.name != "README.md"]
    assert files
    lines = text.splitlines()

    def indexed(rel: Path) -> bool:   # its path, or its folder and its name on one row
        folder = str(rel.parent)
        return str(rel) in text or any(
            rel.name in line and (folder == "." or f"{folder}/" in line) for line in lines)

    missing = [str(p.relative_to(REPO / "results")) for p in files
               if not indexed(p.relative_to(REPO / "results"))]
    assert not missing, f"results/README.md does not index {missing}"
