"""UI test helpers: the real services, with fakes only at the NVML and Hub boundaries."""

from __future__ import annotations

import shutil
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fake_nvml import FakeNVML, MiB, NVMLError, gpu_device  # noqa: F401 (re-exported to the UI tests)
from tuneplan.services.gpu import GpuProbe
from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter, RunsAdapter
from tuneplan.ui.services import ServiceBundle

DATA = Path(__file__).resolve().parents[2] / "data"
RUNS = DATA / "runs"


class NVMLError_DriverNotLoaded(NVMLError):
    pass


def rtx_4090(used_mib=600, procs=((4242, 500 * MiB),)):
    return gpu_device("NVIDIA GeForce RTX 4090", 24564, used_mib=used_mib, procs=procs)


class FakeHub:
    """The Hub boundary: nothing is reachable, as in an offline test run."""

    def __init__(self, files: dict | None = None, error: Exception | None = None):
        self.files = files or {}
        self.error = error

    def list_files(self, repo_id, repo_type):
        if self.error:
            raise self.error
        return [name for (repo, name) in self.files if repo == repo_id]

    def download(self, repo_id, filename, repo_type):
        if self.error:
            raise self.error
        return Path(self.files[(repo_id, filename)])


def make_services(tmp_path: Path, *, nvml=None, hub=None) -> ServiceBundle:
    return ServiceBundle(
        gpu=GpuProbe(nvml=nvml if nvml is not None else FakeNVML(init_error=NVMLError_DriverNotLoaded("Driver Not Loaded"))),
        models=ModelsAdapter(hub=hub),
        planning=PlanningAdapter(),
        runs=RunsAdapter(tmp_path / "runs"),
        hub_files=hub or FakeHub(),
        runs_root=tmp_path / "runs",
    )



async def wait_for(pilot, predicate, timeout: float = 10.0) -> None:
    """Let the app run until `predicate()` holds (workers report through messages)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def tiny_plan(tmp_path: Path, fixed: dict | None = None, card: str = "4GiB"):
    """The planner's plan for the bundled tiny model (a folder with only its config.json) on
    the sample chat dataset copied to `tmp_path/data.jsonl`: (plan, dataset preview, data path)."""
    from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG
    from tuneplan.services.dataset_preview import preview_dataset
    from tuneplan.ui.target import dry_run_target

    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")
    data = tmp_path / "data.jsonl"
    shutil.copy(SAMPLE_CHAT, data)
    dataset = preview_dataset(str(data))
    plan = PlanningAdapter().plan(ModelsAdapter().resolve(str(folder)), dry_run_target(card), dataset, fixed or {})
    return plan, dataset, data


@asynccontextmanager
async def review_screen(tmp_path: Path, plan, dataset, *, local_gpus: int = 0):
    """The wizard's review step for `plan` in an 80x24 app with `local_gpus` local GPUs:
    yields (pilot, screen); `pilot.app.screen` is whatever screen shows later."""
    from tuneplan.ui.app import create_app
    from tuneplan.ui.screens.review_screen import ReviewScreen

    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.local_gpus = local_gpus
        await app.push_screen(ReviewScreen(plan, dataset))
        yield pilot, app.screen


async def open_plan_screen(app, pilot, model: str = "llama-3.1-8b", card: str = "3060"):
    """Push the wizard's plan step for `model` on a dry-run `card` (no dataset) and wait for
    the solver's plan; the screen."""
    from tuneplan.ui.screens.plan_screen import PlanScreen
    from tuneplan.ui.target import dry_run_target

    target = dry_run_target(card)
    resolved = ModelsAdapter().resolve(model)
    app.state.target, app.state.model = target, resolved
    await app.push_screen(PlanScreen(target, resolved, None))
    screen = app.screen
    await wait_for(pilot, lambda: screen.plan is not None)
    return screen
