"""The test suite itself: a test defined twice in one module never runs its first definition
(the second replaces it silently), so no module may do that."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def twice_defined(source: str) -> list[str]:
    """Names of tests (functions or classes) defined more than once at one level of a module."""
    out = []
    for scope in [ast.parse(source), *(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef))]:
        names = Counter(n.name for n in scope.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                        and n.name.lower().startswith("test"))
        out += sorted(name for name, n in names.items() if n > 1)
    return out


def test_a_test_defined_twice_is_found() -> None:
    assert twice_defined("def test_a(): pass\ndef test_b(): pass\ndef test_a(): pass\n") == ["test_a"]
    assert twice_defined("class TestX:\n    def test_a(self): pass\n    def test_a(self): pass\n") == ["test_a"]
    assert twice_defined("def test_a(): pass\ndef helper(): pass\ndef helper(): pass\n") == []


def test_no_test_module_defines_a_test_twice() -> None:
    found = {path.name: twice_defined(path.read_text()) for path in sorted(TESTS.glob("test_*.py"))}
    assert {name: tests for name, tests in found.items() if tests} == {}
