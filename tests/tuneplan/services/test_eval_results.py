"""`RUN/eval.json` (`tuneplan.services.eval_results`): written whole and kept, read back, and
shown as a table, a summary line and a model-card section."""

from __future__ import annotations

import pytest

from tuneplan.errors import UserError
from tuneplan.services import eval_results

from eval_reports import sample_report as _report


def test_eval_json_round_trip_is_atomic_and_kept(tmp_path):
    report = _report()
    path = eval_results.write_eval(tmp_path, report)
    assert eval_results.read_eval(tmp_path) == report
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temporary file left
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists .*--force"):
        eval_results.write_eval(tmp_path, _report(loss=(3.0, 0.5)))
    assert path.read_bytes() == before
    eval_results.write_eval(tmp_path, _report(loss=(3.0, 0.5)), force=True)
    assert eval_results.read_eval(tmp_path).adapter.loss == 0.5
    (tmp_path / "eval.json").write_text("{not json", encoding="utf-8")
    assert eval_results.read_eval(tmp_path) is None


def test_card_section_replaces_itself_and_keeps_the_card(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# run\n\nbody\n", encoding="utf-8")
    assert eval_results.update_card_file(card, _report())
    first = card.read_text(encoding="utf-8")
    assert first.startswith("# run\n\nbody\n") and "| loss | 2.0000 | 1.0000 | -1.0000 |" in first
    eval_results.update_card_file(card, _report(loss=(3.0, 0.5)))
    second = card.read_text(encoding="utf-8")
    assert second.count("## Evaluation") == 1 and "| loss | 3.0000 | 0.5000 |" in second
    assert second.startswith("# run\n\nbody\n")
    assert not eval_results.update_card_file(tmp_path / "missing.md", _report())


def test_summary_and_table_name_both_sides():
    r = _report()
    assert eval_results.summary(r) == ("eval (base -> tuned): held-out loss 2.0000 -> 1.0000, "
                                       "exact match 0.0% -> 50.0%, t acc - -> 0.250")
    table = eval_results.table_lines(r)
    assert table[0].split() == ["base", "tuned", "change"]
    assert any(line.startswith("exact match") and "+50.0 pts" in line for line in table)
