"""The documentation site: its API reference, its examples and its doctests.

- Every public name (``lyapopt.__all__`` and the subpackages' ``__all__``)
  is listed in exactly one ``autosummary`` of ``docs/api/``; each subpackage
  has its ``automodule`` there once.
- Every docstring example in ``lyapopt`` runs as a doctest.
- The Python blocks of the docs pages run: each page, in order, after the
  README's quick start and the ``make_step`` of the getting-started page.

Building the site itself (``sphinx-build -W``) is in ``.ci/run``.
"""

from __future__ import annotations

import collections
import doctest
import importlib
import inspect
import pkgutil
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import lyapopt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
SUBPACKAGES = ("diagnostics", "flax", "testing")
# Public functions whose docstring has no `Examples` yet; shrink it, never grow it.
WITHOUT_EXAMPLES: set[str] = set()


def public_names(module) -> list[str]:
    """``__all__``, or the functions and classes the module defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def public_objects() -> dict[str, object]:
    """Every public name, fully qualified, except the subpackages themselves."""
    out = {}
    for name in lyapopt.__all__:
        if name not in SUBPACKAGES:
            out[f"lyapopt.{name}"] = getattr(lyapopt, name)
    for sub in SUBPACKAGES:
        module = getattr(lyapopt, sub)
        for name in public_names(module):
            out[f"lyapopt.{sub}.{name}"] = getattr(module, name)
    return out


def api_reference() -> tuple[list[str], list[str]]:
    """The names in the autosummaries of docs/api/, and the automodules."""
    listed, modules = [], []
    for page in sorted((DOCS / "api").glob("*.rst")):
        current, in_summary = "", False
        for line in page.read_text().splitlines():
            if m := re.match(r"\.\. currentmodule:: (\S+)", line):
                current = m.group(1)
            elif m := re.match(r"\.\. automodule:: (\S+)", line):
                modules.append(m.group(1))
            elif line.startswith(".. autosummary::"):
                in_summary = True
            elif in_summary and re.match(r"   [A-Za-z_]\w*$", line):
                listed.append(f"{current}.{line.strip()}")
            elif in_summary and line and not line.startswith("   "):
                in_summary = False
    return listed, modules


def test_every_public_name_is_in_the_api_reference_exactly_once() -> None:
    listed, modules = api_reference()
    counts = collections.Counter(listed)
    assert {n: c for n, c in counts.items() if c > 1} == {}
    assert set(listed) == set(public_objects()), (
        f"missing: {sorted(set(public_objects()) - set(listed))}, "
        f"not public: {sorted(set(listed) - set(public_objects()))}"
    )
    assert sorted(modules) == sorted(f"lyapopt.{s}" for s in SUBPACKAGES)


def test_public_functions_have_examples() -> None:
    missing = {
        name
        for name, obj in public_objects().items()
        if inspect.isfunction(obj) and "Examples:" not in (obj.__doc__ or "")
    }
    assert missing <= WITHOUT_EXAMPLES, (
        f"add an Examples block: {missing - WITHOUT_EXAMPLES}"
    )
    assert missing >= WITHOUT_EXAMPLES, (
        f"these have examples now; drop them from WITHOUT_EXAMPLES: "
        f"{WITHOUT_EXAMPLES - missing}"
    )


def docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for info in pkgutil.walk_packages(lyapopt.__path__, "lyapopt."):
        if info.name == "lyapopt.demo":  # the main job, not a library module
            continue
        tests += finder.find(importlib.import_module(info.name))
    tests += finder.find(lyapopt)
    return sorted((t for t in tests if t.examples), key=lambda t: t.name)


DOCTESTS = docstring_tests()


def test_the_docstring_examples_are_found() -> None:
    names = {t.name for t in DOCTESTS}
    assert "lyapopt._guard.lyapunov_guard" in names
    assert len(DOCTESTS) >= 9


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_example_runs(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    return [
        (text[: m.start()].count("\n") + 2, m.group(1)) for m in FENCE.finditer(text)
    ]


def run_blocks(path: Path, namespace: dict) -> None:
    for line, code in python_blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the block at {where} failed: {e!r}") from e


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- quick start: begin -->", "<!-- quick start: end -->"
    return readme[readme.index(begin) + len(begin) : readme.index(end)]


PAGES = sorted(
    p
    for p in DOCS.rglob("*.md")
    if "_build" not in p.parts and p.name != "getting_started.md" and python_blocks(p)
)


@pytest.fixture(scope="module")
def started() -> dict:
    """The namespace after the quick start and the getting-started page."""
    namespace: dict = {"__name__": "docs"}
    for m in FENCE.finditer(quick_start()):
        exec(compile(m.group(1), "README.md (quick start)", "exec"), namespace)
    run_blocks(DOCS / "getting_started.md", namespace)
    assert "make_step" in namespace
    return namespace


def test_the_how_to_pages_have_examples() -> None:
    names = {p.stem for p in PAGES}
    assert {
        "optax_wrappers",
        "checkpoints",
        "logging",
        "configuration",
        "migrating",
    } <= names


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files under ``logdir``.

    Each record is a little-endian uint64 length, its masked CRC (uint32),
    the serialised ``Event``, and that record's masked CRC.
    """
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(
                    (event.step, value.simple_value)
                )
    return scalars


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_python_blocks_of_a_page_run(
    page: Path, started: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = dict(started)
    run_blocks(page, namespace)

    if page.stem == "logging":
        # TensorBoard holds every step's stats as the jitted step returned them.
        history = namespace["history"]
        scalars = read_scalars(tmp_path / "runs")
        assert set(scalars) == {f"lyapopt/{name}" for name in history[0]}
        for name in ("value_before", "value_after", "learning_rate"):
            steps, values = zip(*scalars[f"lyapopt/{name}"], strict=True)
            assert list(steps) == list(range(50))
            np.testing.assert_allclose(
                values, [h[name] for h in history], rtol=1e-6, err_msg=name
            )
        # The loss that each step's guard accepted is the next step's loss.
        np.testing.assert_allclose(
            [h["value_after"] for h in history[:-1]],
            [h["value_before"] for h in history[1:]],
            rtol=1e-5,
        )
    if page.stem == "checkpoints":
        restored = namespace["restored"]
        np.testing.assert_array_equal(
            restored["params"]["w1"], namespace["params"]["w1"]
        )
    if page.stem == "migrating":
        results = namespace["results"]
        assert results["lyapopt"] < 1.5, (
            results
        )  # the quick start's loss starts at ~2.3
