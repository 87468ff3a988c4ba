"""Guards of the architecture and of the README's promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "peft", "trl", "bitsandbytes", "textual", "rich"]


def _modules_loaded_by(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_planner_imports_nothing_heavy():
    import pkgutil

    import planner

    names = ["planner"] + [f"planner.{m.name}" for m in pkgutil.iter_modules(planner.__path__)]
    loaded = _modules_loaded_by("\n".join(f"import {n}" for n in names))
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"]])
def test_help_loads_no_torch(argv):
    code = (
        "import sys\nfrom tuneplan.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    )
    loaded = _modules_loaded_by(code)
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tuneplan", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for name in ["plan", "train", "runs", "attach", "stop", "presets", "demo"]:
        assert re.search(rf"^\s+{name}\s", out.stdout, re.M), name
    version = subprocess.run([sys.executable, "-m", "tuneplan", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("tuneplan ")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"^(bash scripts/test\.sh)\s", readme, re.M).group(1)
    assert re.search(rf"^{re.escape(test_cmd)}$", ci, re.M)
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands


def test_the_readme_is_short_and_links_every_page_of_docs():
    """The README is a five-minute page; the manual is docs/, every page of it linked from the
    README, and every link between them leads to a file."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages and pages <= linked, pages - linked
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which is not there"


def test_ci_runs_the_static_checks_and_the_layers_hold():
    """CI runs scripts/lint.sh; the import-linter contracts of pyproject.toml hold (the layers
    go one way: planner < core < services < training | ui < commands)."""
    assert re.search(r"^bash scripts/lint\.sh$", (ROOT / ".ci" / "run").read_text(), re.M)
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": str(lint.parent), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-2000:]
    assert "broken" not in out.stdout.lower().replace("0 broken", "")


def test_test_script_fails_when_no_test_ran():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert '"$rc" -eq 5' in script and "exit 1" in script


def test_the_fast_loop_leaves_out_only_the_slow_tests():
    """`scripts/test.sh --fast` deselects the tests marked `slow` (real training processes) and
    keeps the rest; it reuses .venv as it is, so this runs where .venv exists (CI, a dev tree)."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv here: scripts/test.sh --fast would set it up first")
    target = "tests/tuneplan/commands/test_train_target.py"
    env = {**os.environ, "TUNEPLAN_TEST_WORKERS": "0"}
    out = subprocess.run(["bash", "scripts/test.sh", "--fast", "--collect-only", "-q", target],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "test_bundled_tiny_model_plans_for_the_cpu_in_full" not in out.stdout  # trains: slow
    assert "test_gated_model_without_token_is_refused_before_launch" in out.stdout
    assert re.search(r"\b[1-9]\d* deselected", out.stdout), out.stdout[-500:]


# development-only modules: the memory model's verification, never shipped
NOT_SHIPPED = ("verification", "memory_calibration", "memory_trace", "trace", "cuda_semantics")


def _shipped_modules() -> set[str]:
    """Every package and module the wheel holds, by pyproject's `[tool.setuptools.packages.find]`."""
    import pkgutil

    from setuptools import find_namespace_packages

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_namespace_packages(where=str(ROOT), include=include)
    modules = {f"{p}.{m.name}" for p in packages for m in pkgutil.iter_modules([str(ROOT / p.replace(".", "/"))])}
    return set(packages) | modules


def test_the_wheel_leaves_out_the_verification_tools():
    shipped = _shipped_modules()
    assert {"planner", "tuneplan", "tuneplan.training", "tuneplan.training.memory_tracker"} <= shipped
    assert "planner.memory" in shipped and "tuneplan.training.probe" in shipped
    leaked = {m for m in shipped if set(m.split(".")) & set(NOT_SHIPPED)}
    assert not leaked, leaked
    assert (ROOT / "verification" / "__init__.py").is_file()  # it exists, for the tests and bench/


@pytest.mark.slow
def test_wheel_ships_presets(tmp_path):
    # built from a copy: setuptools would also pack what an earlier build left in ./build/lib
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("planner", "tuneplan", "verification"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(src)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("tuneplan-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("tuneplan/data/presets/") and n.endswith(".toml")}
    expected = {p.name for p in (ROOT / "tuneplan" / "data" / "presets").glob("*.toml")}
    assert expected and expected <= shipped
    assert any(n.startswith("planner/") for n in names)
    assert any(n.startswith("tuneplan/") for n in names)
    modules = {n[:-3].replace("/", ".") for n in names if n.endswith(".py")}
    assert not {m for m in modules if set(m.split(".")) & set(NOT_SHIPPED)}


def test_bad_flag_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "tuneplan", "plan", "--no-such-flag"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-such-flag" in lines[0]


def test_test_folders_mirror_the_source_folders():
    """tests/ mirrors the packages: every folder of test files names a source folder
    (tests/tuneplan/commands holds the tests of tuneplan/commands, tests/bench of bench/)."""
    skip = {"data", "__snapshots__", "__pycache__"}
    folders = {p.parent for p in (ROOT / "tests").rglob("test_*.py") if not skip & set(p.parts)}
    assert len(folders) > 5
    for folder in folders:
        source = ROOT / folder.relative_to(ROOT / "tests")
        assert source.is_dir(), f"{folder.relative_to(ROOT)} has no source folder {source.relative_to(ROOT)}"
