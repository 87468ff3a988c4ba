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


def _data_report(source: str = "/data/other.jsonl") -> eval_results.EvalReport:
    r = _report()
    r.scored_on, r.data_source, r.data_split, r.data_rows = eval_results.OTHER_DATA, source, "", 5
    return r


def test_an_eval_json_without_the_data_fields_reads_as_the_held_out_split(tmp_path):
    """eval.json written before `--data` existed (no scored_on / data_* keys) still loads, as an
    eval of the held-out split; a `--data` report keeps its source, split and row count."""
    import json

    old = _report().to_dict()
    for key in ("scored_on", "data_source", "data_split", "data_rows"):
        old.pop(key)
    (tmp_path / "eval.json").write_text(json.dumps(old), encoding="utf-8")
    back = eval_results.read_eval(tmp_path)
    assert back.scored_on == "held-out" and not back.on_other_data and back.data_label() == "the held-out split"
    assert back.held_out_examples == 2 and back.adapter.loss == 1.0
    r = _data_report()
    r.data_split = "test"
    eval_results.write_eval(tmp_path, r, force=True)
    again = eval_results.read_eval(tmp_path)
    assert again == r and again.data_label() == "/data/other.jsonl (split test)"
    # the refusal to overwrite names what the kept file scored
    with pytest.raises(UserError, match=r"eval.json already exists \(on /data/other.jsonl \(split test\)\): .*--force"):
        eval_results.refuse_overwrite(tmp_path)


def test_an_eval_on_other_data_is_named_everywhere_it_is_shown():
    """The summary line, the card section, the tracker's names and `compare` do not take the rows
    of `--data` for the run's held-out split."""
    from tuneplan.services.compare import eval_summary, scored_other_data
    from tuneplan.training.tracking import eval_metrics

    r = _data_report("tuneplan:sample-chat")
    assert eval_results.summary(r).startswith("eval (base -> tuned): loss on tuneplan:sample-chat 2.0000 -> 1.0000")
    card = "\n".join(eval_results.card_section(r))
    assert "2 examples of `tuneplan:sample-chat` (other data, not the run's held-out split)" in card
    assert "held-out examples" not in card
    assert eval_metrics(r)["eval_data/tuned/loss"] == 1.0 and "eval/tuned/loss" not in eval_metrics(r)
    assert eval_metrics(_report())["eval/tuned/loss"] == 1.0
    assert scored_other_data(r.to_dict()) and not scored_other_data(_report().to_dict())
    assert eval_summary(r.to_dict())["eval_loss"] == 1.0  # the numbers still read; compare checks scored_on first
