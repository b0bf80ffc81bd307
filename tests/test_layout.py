"""The rule the layout shows: the daemon never depends on what users run and read.

``wattspan.agent`` and ``wattspan.collectors`` import nothing of ``wattspan.analysis`` or
``wattspan.cli``, checked both at run time (what importing the daemon loads) and statically
(every import statement, lazy ones inside functions too); and no two modules import each
other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import wattspan

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_FOR_DAEMON = ("wattspan.analysis", "wattspan.cli")
DAEMON_SIDE = ("wattspan.agent", "wattspan.collectors")


def _module_files() -> dict[str, Path]:
    """Module name -> source file, for every module of the distribution, from the
    package-dir mapping in pyproject (the same one setuptools installs by). The mapped
    folders do not nest, so each file has one name."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    out: dict[str, Path] = {}
    for pkg, folder in cfg["package-dir"].items():
        base = ROOT / folder
        for f in base.rglob("*.py"):
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every ``wattspan`` module that ``module`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("wattspan"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("wattspan"):
                found.add(target)
    found.discard(module)
    return found


def test_daemon_import_loads_no_analysis_or_cli() -> None:
    code = (
        "import sys, wattspan.agent.daemon, wattspan.agent.runner; "
        "print('\\n'.join(m for m in sys.modules if m.startswith(('wattspan.analysis', "
        "'wattspan.cli'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [], f"the daemon pulled in {out}"


def test_daemon_side_sources_never_import_analysis_or_cli() -> None:
    files = _module_files()
    assert "wattspan.agent.daemon" in files and "wattspan.analysis" in files
    offenders = sorted(
        (mod, imp)
        for mod, f in files.items()
        if mod.startswith(DAEMON_SIDE)
        for imp in _imports(f, mod)
        if imp.startswith(FORBIDDEN_FOR_DAEMON)
    )
    assert offenders == []


def test_no_two_modules_import_each_other() -> None:
    files = _module_files()
    graph = {mod: _imports(f, mod) & set(files) for mod, f in files.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of two modules.
    mutual = sorted(
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if a < b
        and a in graph.get(b, set())
        and not (b.startswith(a + ".") or a.startswith(b + "."))
    )
    assert mutual == []


def test_checker_sees_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    """The static checks above would fail on the patterns they exist to catch."""
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from wattspan.cli.tables import fmt_num\n", encoding="utf-8")
    assert "wattspan.cli.tables" in _imports(a, "wattspan.agent.a")
    rel = tmp_path / "b.py"
    rel.write_text("from .c import x\n", encoding="utf-8")
    assert _imports(rel, "wattspan.agent.b") == {"wattspan.agent.c"}
    assert wattspan.__name__ == "wattspan"


def test_the_checkout_top_folder_serves_the_mapped_subpackages(tmp_path: Path) -> None:
    """``python -c`` from the checkout's top folder imports the checkout's ``wattspan/``
    (the current folder comes first on sys.path), which alone has no ``agent`` inside:
    ``wattspan.agent`` was "No module named" there, even with wattspan installed. ``-S``
    leaves out site-packages (and any editable finder), so only the checkout can answer."""
    code = "import wattspan.agent.private as p, wattspan; print(p.__file__)"
    p = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()) == ROOT / "agent" / "private.py"
    # Elsewhere the same folder name means nothing: a tree without the mapped folders is
    # left as it is.
    (tmp_path / "wattspan").mkdir()
    (tmp_path / "wattspan" / "__init__.py").write_text((ROOT / "wattspan/__init__.py").read_text())
    (tmp_path / "pyproject.toml").write_text("")
    q = subprocess.run(
        [sys.executable, "-S", "-c", "import wattspan; print(wattspan.__path__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert q.returncode == 0 and q.stdout.strip() == str([str(tmp_path / "wattspan")]), q
