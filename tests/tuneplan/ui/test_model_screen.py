"""Step 2: catalog search as you type; Hub ids through a faked Hub boundary."""

from __future__ import annotations

import pytest
from textual.widgets import OptionList, Static

from tuneplan.ui.app import create_app
from tuneplan.ui.messages import ModelChosen
from tuneplan.ui.screens.dataset_screen import DatasetScreen
from tuneplan.ui.screens.model_screen import ModelScreen
from tuneplan.ui.target import dry_run_target

from ui_helpers import FakeHub, make_services, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def _open(app, pilot) -> ModelScreen:
    app.state.target = dry_run_target("3060")
    await app.push_screen(ModelScreen())
    await pilot.pause()
    return app.screen


async def test_search_as_you_type_then_choose(tmp_path):
    app = create_app(make_services(tmp_path))
    seen: list[ModelChosen] = []
    hook = lambda m: seen.append(m) if isinstance(m, ModelChosen) and not any(m is s for s in seen) else None
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        screen = await _open(app, pilot)
        hits = screen.query_one("#hits", OptionList)
        everything = hits.option_count
        await pilot.press(*"llama-3.1-8")
        assert 0 < hits.option_count < everything
        assert hits.get_option_at_index(0).id.startswith("llama-3.1-8b")
        await pilot.press("enter")  # look it up
        await wait_for(pilot, lambda: screen.model is not None)
        details = str(screen.query_one("#details", Static).render())
        assert "llama-3.1-8b" in details and "8.0B" in details and "gated" in details
        assert "architecture llama" in details and "context 131,072" in details
        await pilot.press("enter")  # continue
        await wait_for(pilot, lambda: isinstance(app.screen, DatasetScreen))
    assert seen[0].model.name == "llama-3.1-8b" and seen[0].model.source == "meta-llama/Llama-3.1-8B"


class _Unreachable(Exception):
    pass


class HubDown(FakeHub):
    """The models service's Hub boundary, unreachable."""

    def hf_hub_download(self, repo_id, filename, token=None, **kw):
        raise ConnectionError("Name or service not known")

    def model_info(self, repo_id, **kw):
        raise ConnectionError("Name or service not known")


async def test_hub_id_error_is_one_red_line(tmp_path):
    app = create_app(make_services(tmp_path, hub=HubDown()))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot)
        screen.query_one("#model-input").value = "someorg/some-model"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "some-model" in str(screen.query_one("#details", Static).render())
                       and not screen.query_one("#spinner").display)
        details = str(screen.query_one("#details", Static).render())
        assert "cannot fetch config.json of someorg/some-model" in details
        assert screen.model is None and "\n" not in details.strip()


async def test_local_folder(tmp_path):
    import shutil

    from tuneplan.data import TINY_MODEL_CONFIG

    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot)
        screen.query_one("#model-input").value = str(folder)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.model is not None)
        assert screen.model.kind == "local" and screen.model.architecture == "llama"
