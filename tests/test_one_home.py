"""One home per concept: a second copy of a rule, a name or an error class fails here.

Cheap checks over the library's source (no import of torch, mlflow or the SDK): each
concept below has one module that defines it and every other module imports it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "ptdeploy"
SOURCES = {p.relative_to(LIB).as_posix(): p.read_text() for p in sorted(LIB.rglob("*.py"))}


def _string_constants(tree: ast.AST) -> list[str]:
    """String literals of code, docstrings left out (they may name a task for the reader)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _definitions(tree: ast.Module) -> list[str]:
    """Functions and classes (at any depth) and module-level constants of a module."""
    names = [
        node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)
    ]
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


def _classes(tree: ast.Module) -> list[tuple[str, set[str]]]:
    """Each class of a module with the names of its bases."""
    return [
        (
            node.name,
            {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases},
        )
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]


# Parsed once; the trees themselves are not kept (millions of nodes slow every test's GC).
LITERALS: dict[str, set[str]] = {}
DEFINITIONS: dict[str, list[str]] = {}
CLASSES: dict[str, list[tuple[str, set[str]]]] = {}
for _path, _text in SOURCES.items():
    _tree = ast.parse(_text)
    LITERALS[_path] = set(_string_constants(_tree))
    DEFINITIONS[_path] = _definitions(_tree)
    CLASSES[_path] = _classes(_tree)
del _path, _text, _tree


def _homes_of_literal(value: str) -> list[str]:
    return [path for path, literals in LITERALS.items() if value in literals]


def _defining(name: str) -> list[str]:
    """Modules that define a function, class or module-level constant called ``name``."""
    return [path for path, names in DEFINITIONS.items() for n in names if n == name]


@pytest.mark.parametrize("task", ["llm/v1/completions", "llm/v1/chat", "llm/v1/embeddings"])
def test_task_names_are_written_once(task):
    assert _homes_of_literal(task) == ["llm_tasks.py"]


@pytest.mark.parametrize("step", ["register", "deploy", "smoke_test"])
def test_job_steps_are_written_once(step):
    # the CLI's subcommand named "deploy" is a command, not the job step
    homes = [p for p in _homes_of_literal(step) if p != "cli.py"]
    assert homes == ["templates/notebook.py"]


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("TASKS", "llm_tasks.py"),
        ("EMBEDDING_MODEL_TYPES", "llm_tasks.py"),
        ("EMBEDDING_FAMILIES", "llm_tasks.py"),
        ("logged_task", "llm_tasks.py"),
        ("STEPS", "templates/notebook.py"),
        ("JOB_TASKS", "templates/notebook.py"),
        ("check_endpoint_name", "names.py"),
        ("check_served_entity_name", "names.py"),
        ("default_served_entity_name", "names.py"),
        ("version_list", "errors.py"),
        ("not_valid", "errors.py"),
        ("MAX_N", "limits.py"),
        ("ENDPOINT_NAME_PATTERN", "limits.py"),
    ],
)
def test_a_concept_has_one_definition(name, home):
    assert _defining(name) == [home]


def test_the_mlmodel_task_is_read_in_one_place():
    # metadata.task, else the transformers flavor's inference_task: llm_tasks.logged_task
    readers = [p for p, text in SOURCES.items() if re.search(r"""get\(["']inference_task""", text)]
    assert readers == ["llm_tasks.py"]


def test_version_listings_go_through_one_helper():
    # "existing versions: 1, 2, 10" is written by errors.version_list only
    listing = re.compile(r"sorted\(\s*\(?\s*(int\(|str\()?v\.version\)?\s+for v in [^\n]*")
    sorts = [
        f"{p}: {m.group()}"
        for p, text in SOURCES.items()
        for m in listing.finditer(text)
        if " if " not in m.group()  # a filter (READY versions) is not a listing
    ]
    assert sorts == []


def test_files_are_replaced_atomically_in_one_place():
    # state.write_atomic writes text; capacity/plots.py renames the PNGs matplotlib saved
    renamers = [p for p, text in SOURCES.items() if "os.replace(" in text]
    assert renamers == ["capacity/plots.py", "state.py"]


def test_argparse_is_used_by_the_command_line_only():
    # workspace/server.py is the server process's own entry point (python -m ...), spawned
    # by `ptdeploy workspace start`; the local workspace imports nothing from cli.py
    users = [
        p for p, text in SOURCES.items() if re.search(r"^\s*(import|from) argparse", text, re.M)
    ]
    assert users == ["cli.py", "workspace/server.py"]


def test_every_exception_class_lives_in_errors():
    error_names = {name for name, _ in CLASSES["errors.py"]}
    error_names |= {"Exception", "ValueError", "LookupError", "TimeoutError", "RuntimeError"}
    outside = [
        f"{path}:{name}"
        for path, classes in CLASSES.items()
        if path != "errors.py"
        for name, bases in classes
        if bases & error_names or name.endswith(("Error", "Exception"))
    ]
    assert outside == []


def test_every_error_is_a_ptdeploy_error():
    from ptdeploy import errors

    classes = [
        v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)
    ]
    assert len(classes) > 20
    assert all(issubclass(c, errors.PtdeployError) for c in classes)
