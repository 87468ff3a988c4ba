"""`tuneplan attach` / `serve` without a terminal, and the UI process's imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneplan.cli import main
from tuneplan.commands.attach import resolve_run_dir
from tuneplan.errors import UserError

from ui_helpers import RUNS

ROOT = Path(__file__).resolve().parents[3]


def test_attach_resolves_newest_name_and_path(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(UserError, match="no runs in"):
        resolve_run_dir(None, str(root))
    for name in ("tiny-crashed", "tiny-done"):
        shutil.copytree(RUNS / name, root / name)
    assert resolve_run_dir("tiny-crashed", str(root)).name == "tiny-crashed"
    assert resolve_run_dir(str(root / "tiny-done"), None).name == "tiny-done"
    assert resolve_run_dir(None, str(root)).parent == root
    with pytest.raises(UserError):
        resolve_run_dir("no-such-run", str(root))


def test_attach_unknown_run_is_one_line(tmp_path, capsys):
    assert main(["attach", "nope", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuneplan: error:") and err.count("\n") == 1


def test_serve_without_textual_serve_says_what_to_install(capsys):
    try:
        import textual_serve  # noqa: F401
    except ImportError:
        assert main(["serve"]) == 2
        assert "pip install textual-serve" in capsys.readouterr().err
    else:
        pytest.skip("textual-serve is installed")


def test_the_ui_process_never_imports_torch():
    probe = (
        "import asyncio, sys\n"
        "sys.path[:0] = ['tests/tuneplan/ui', 'tests']\n"
        "from pathlib import Path\n"
        "from ui_helpers import make_services, wait_for\n"
        "from tuneplan.ui.app import create_app\n"
        "from tuneplan.ui.adapters import ModelsAdapter\n"
        "from tuneplan.ui.screens.plan_screen import PlanScreen\n"
        "from tuneplan.ui.screens.dashboard_screen import DashboardScreen\n"
        "from tuneplan.ui.target import dry_run_target\n"
        "async def main():\n"
        "    import tempfile\n"
        "    app = create_app(make_services(Path(tempfile.mkdtemp())))\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await app.push_screen(PlanScreen(dry_run_target('4090'), ModelsAdapter().resolve('llama-3.1-8b'), None))\n"
        "        await wait_for(pilot, lambda: app.screen.plan is not None)\n"
        "        await app.push_screen(DashboardScreen(Path('tests/data/runs/tiny-done')))\n"
        "        await wait_for(pilot, lambda: app.screen.snapshot is not None)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl', 'bitsandbytes') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
