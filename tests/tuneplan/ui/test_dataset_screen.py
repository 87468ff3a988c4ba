"""Step 3: dataset preview: format, samples, count, token lengths (exact or approximate)."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Input, Static

from tuneplan.data import SAMPLE_CHAT
from tuneplan.services.dataset_preview import preview_dataset
from tuneplan.ui.adapters import ModelsAdapter
from tuneplan.ui.app import create_app
from tuneplan.ui.messages import DatasetChosen
from tuneplan.ui.screens.dataset_screen import DatasetScreen

from ui_helpers import FakeHub, make_services, wait_for



def _tokenizer_folder(tmp_path):
    """A model folder with a real tokenizer.json (word-level, trained here in milliseconds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [m["content"] for line in SAMPLE_CHAT.read_text().splitlines() for m in json.loads(line)["messages"]]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    folder = tmp_path / "model"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.asyncio
async def test_preview_of_the_sample_dataset_then_continue(tmp_path):
    app = create_app(make_services(tmp_path))
    seen: list[DatasetChosen] = []
    hook = lambda m: seen.append(m) if isinstance(m, DatasetChosen) and not any(m is s for s in seen) else None
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        model = ModelsAdapter().resolve("llama-3.1-8b")
        await app.push_screen(DatasetScreen(model=model))
        screen = app.screen
        assert screen.query_one("#dataset-input", Input).value == str(SAMPLE_CHAT)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.preview is not None)
        summary = str(screen.query_one("#summary", Static).render())
        assert "format messages" in summary and "examples 400" in summary
        samples = str(screen.query_one("#samples", Static).render())
        assert samples.count("sample ") == 3 and "assistant:" in samples
        hist = str(screen.query_one("#histogram", Static).render())
        # offline, no tokenizer.json for a Hub model: counts are approximate and say why
        assert "APPROXIMATE" in hist and "p50" in hist and "p99" in hist and "truncated at seq len" in hist
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(seen))
    assert seen[0].preview.num_examples == 400


@pytest.mark.asyncio
async def test_bad_file_is_one_red_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n')
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(DatasetScreen())
        screen = app.screen
        screen.query_one("#dataset-input", Input).value = str(bad)
        await pilot.press("enter")
        await wait_for(pilot, lambda: not screen.query_one("#spinner").display)
        summary = str(screen.query_one("#summary", Static).render())
        assert "question, answer" in summary and screen.preview is None


def test_exact_counts_with_the_models_tokenizer(tmp_path):
    folder = _tokenizer_folder(tmp_path)
    p = preview_dataset(str(SAMPLE_CHAT), model_source=str(folder))
    assert p.tokens.exact and "model tokenizer" in p.tokens.method
    approx = preview_dataset(str(SAMPLE_CHAT), model_source=None)
    assert not approx.tokens.exact
    assert p.tokens.p50 <= p.tokens.p90 <= p.tokens.p99 <= p.tokens.max
    assert sum(n for _, _, n in p.tokens.histogram) == 400
    shares = [share for _, share in p.tokens.truncated_share]
    assert shares == sorted(shares, reverse=True) and shares[-1] == 0.0


def test_hub_dataset_through_the_boundary(tmp_path):
    hub = FakeHub(files={("org/chat", "data/train-00000.jsonl"): str(SAMPLE_CHAT), ("org/chat", "README.md"): ""})
    p = preview_dataset("org/chat", hub=hub)
    assert p.num_examples == 400 and any("from the Hub" in n for n in p.notes)
    from tuneplan.errors import UserError

    with pytest.raises(UserError, match="cannot be reached"):
        preview_dataset("org/chat", hub=FakeHub(error=ConnectionError("offline")))


def test_csv_json_and_parquet_files(tmp_path):
    import csv

    rows = [{"prompt": f"What is {i} plus 1?", "completion": str(i + 1)} for i in range(30)]
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "d.json").write_text(json.dumps({"train": rows}))
    paths = [tmp_path / "d.csv", tmp_path / "d.json"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
        paths.append(tmp_path / "d.parquet")
    except ImportError:
        pass
    for path in paths:
        p = preview_dataset(str(path))
        assert p.format == "prompt_completion" and p.num_examples == 30, path
        assert p.samples[0][-1] == ("assistant", "1")
