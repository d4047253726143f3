"""Every test id with the assertions its function body holds, for before/after lists.

    python scripts/test_inventory.py > docs/tests/inventory-before.txt

One line per collected test id (parametrized ids expanded, as ``pytest --collect-only``
names them): ``<asserts>  <slow|quick>  <id>``. An assertion is an ``assert`` statement, a call of
an ``assert*`` function (``torch.testing.assert_close``, a test's own ``_assert_*`` helper) or a
``pytest.raises`` / ``pytest.warns`` / ``pytest.approx`` call in the test function's own
body (helpers it calls are not followed). A last line sums both columns. Comparing two
lists shows a test that lost assertions or disappeared.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CALLS = {"raises", "warns", "approx"}


def _is_assertion(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        return True
    if not isinstance(node, ast.Call):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    # assert_close, assert_allclose, assert_frame_equal, ...: checks that raise on failure
    if name.startswith(("assert", "_assert")):
        return True
    return (isinstance(node.func, ast.Attribute) and name in _CALLS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "pytest")


def _asserts(node: ast.AST) -> int:
    return sum(_is_assertion(sub) for sub in ast.walk(node))


def _functions(path: Path) -> dict[str, tuple[int, bool]]:
    """test function name -> (assertions, marked slow), for one test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_slow = any(isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and "slow" in ast.unparse(n.value) for n in tree.body)
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            slow = module_slow or any("slow" in ast.unparse(d) for d in node.decorator_list)
            out[node.name] = (_asserts(node), slow)
    return out


def main() -> None:
    ids = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    ids = [i for i in ids if "::" in i]
    parsed: dict[str, dict[str, tuple[int, bool]]] = {}
    total = slow_total = 0
    for test_id in ids:
        file, *_, name = test_id.split("::")
        name = name.split("[")[0]
        if file not in parsed:
            parsed[file] = _functions(ROOT / file)
        asserts, slow = parsed[file].get(name, (0, False))
        total += asserts
        slow_total += slow
        print(f"{asserts:4d}  {'slow ' if slow else 'quick'}  {test_id}")
    print(f"{total:4d}  {slow_total} slow of {len(ids)} tests")


if __name__ == "__main__":
    main()
