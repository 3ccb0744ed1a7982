"""The pages say what exists and what data they came from (issue #20, item 8).

- Every `python -m X` in README.md and docs/ names a module that can be imported from the repository
  (or an installed tool such as pip or pytest), or the same page says X was removed: a reader who
  copies a command either runs it or has been told it is gone.
- Every results page (docs/results/*.md) gives the data checksum of its run (`sha256:<64 hex>`, the
  MLflow tag `iqa_ls.data_checksum`) or says that none was recorded.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RESULTS = sorted((REPO / "docs" / "results").glob("*.md"))
# results pages that state their data elsewhere: the index (docs/results/README.md) gives the copy's
# checksum once for every row. gpu-notes.md is another branch's page in this round (issue #20): its
# campaign recorded no checksum, which the page is to say; remove it from here once it does.
NO_CHECKSUM_YET: set[str] = set()  # pages whose checksum line is due from work in flight

COMMAND = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
REMOVED = re.compile(r"\bremoved\b|\bno longer exists\b", re.IGNORECASE)
CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}|checksum(?: was)?:? not recorded", re.IGNORECASE)


def modules_named(text: str) -> set[str]:
    """Every X of `python -m X` in `text` (a trailing full stop is prose, not part of the name)."""
    return {m.group(1).rstrip(".") for m in COMMAND.finditer(text)}


def exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def said_removed(text: str, module: str) -> bool:
    """The page says `module` is gone: 'removed' or 'no longer exists' within 120 characters of a mention."""
    for m in re.finditer(re.escape(module) + r"(?![\w.])", text):
        if REMOVED.search(text[max(0, m.start() - 120):m.end() + 120]):
            return True
    return False


def missing_commands(text: str) -> list[str]:
    return sorted(x for x in modules_named(text) if not exists(x) and not said_removed(text, x))


def test_the_checks_catch_a_missing_command_and_accept_a_removed_one():
    assert modules_named("run `python -m study.table2 --preset smoke`, then python3 -m bench.speed.") == {
        "study.table2", "bench.speed"}
    assert missing_commands("python -m study.table2 and python -m pytest") == []
    assert missing_commands("run `python -m study.no_such_command --x`") == ["study.no_such_command"]
    assert missing_commands("`python -m study.no_such_command` (removed: use study.table2)") == []
    # a removal said of another command does not cover this one
    assert missing_commands("python -m study.gone_a; study.gone_b " + "x" * 200 + " removed") == [
        "study.gone_a"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_python_m_command_exists_or_is_named_as_removed(page):
    missing = missing_commands(page.read_text())
    assert not missing, (f"{page.relative_to(REPO)} names `python -m` {missing}: no such module, and the "
                         "page does not say it was removed")


@pytest.mark.parametrize("page", [p for p in RESULTS if p.name != "README.md"], ids=lambda p: p.name)
def test_every_results_page_gives_its_data_checksum_or_says_none_was_recorded(page):
    if page.name in NO_CHECKSUM_YET:
        pytest.skip(f"{page.name}: its checksum line is due from another branch (issue #20)")
    assert CHECKSUM.search(page.read_text()), (f"{page.name} gives no data checksum (sha256:...) and does "
                                                "not say that none was recorded")


def test_the_results_index_gives_the_checksum_of_the_data_copy():
    assert re.search(r"sha256:[0-9a-f]{64}", (REPO / "docs" / "results" / "README.md").read_text())
