"""runformat: the batch-setting parser, the crash-tolerant writers and readers, the summary format."""
from __future__ import annotations

import json

import pytest

import runformat as rf


# --- batch settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [("8x32", (8, 32)), ("1x16", (1, 16)), ("8X1", (8, 1)), (" 2x3 ", (2, 3)),
                                            ("8X2", (8, 2))])
def test_parse_batch(text, expected):
    assert rf.parse_batch(text) == expected


@pytest.mark.parametrize("text", ["8*2", "0x4", "8x0", "0x2", "x2", "8x", "abc", "8x2x1", "-1x2", "", "8.0x2", None, 8])
def test_parse_batch_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="bad batch setting"):
        rf.parse_batch(text)


def test_one_parser_for_writers_and_readers():
    import analysis.aggregate
    import analysis.tables
    import tasks.common.config

    assert analysis.aggregate.parse_batch is tasks.common.config.parse_batch is rf.parse_batch
    assert analysis.tables.parse_batch is rf.parse_batch


# --- CSV files --------------------------------------------------------------------------------
def _row(step, name="loss", value=1.0, split="train"):
    return {"step": step, "epoch": 0, "split": split, "name": name, "value": value}


def test_csvlog_appends_flushed_lines_and_skips_duplicate_keys(tmp_path):
    log = rf.CsvLog(tmp_path / "m.csv", rf.METRICS_COLUMNS, rf.METRICS_KEY)
    assert log.append(_row(1, value=0.5)) and log.append(_row(1, "acc", 0.25))
    assert not log.append(_row(1, value=9.0))  # same (step, split, name)
    # flushed: another reader sees the rows before close
    assert (tmp_path / "m.csv").read_text() == "step,epoch,split,name,value\n1,0,train,loss,0.5\n1,0,train,acc,0.25\n"
    with pytest.raises(ValueError, match="lacks columns"):
        log.append({"step": 2})


def test_cut_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("step,epoch,split,name,value\n1,0,train,loss,0.5\n2,0,train,lo")  # killed mid-write
    assert rf.read_rows(path) == [{"step": "1", "epoch": "0", "split": "train", "name": "loss", "value": "0.5"}]
    assert rf.read_table(path).cut == "2,0,train,lo"
    log = rf.CsvLog(path, rf.METRICS_COLUMNS, rf.METRICS_KEY)
    log.append(_row(2, value=0.75))
    log.close()
    assert path.read_text() == "step,epoch,split,name,value\n1,0,train,loss,0.5\n2,0,train,loss,0.75\n"


def test_csvlog_rejects_a_foreign_header(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        rf.CsvLog(tmp_path / "m.csv", rf.METRICS_COLUMNS)


def test_read_table_reports_malformed_lines_by_number(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("a,b\n1,2\n\n3\n4,5,6\n7,8\n")
    table = rf.read_table(path)
    assert table.header == ("a", "b") and table.cut is None
    assert table.records() == [{"a": "1", "b": "2"}, {"a": "7", "b": "8"}]
    assert table.malformed() == [4, 5]  # line 3 is blank
    assert rf.read_table(tmp_path / "missing.csv").records() == []


# --- JSONL files ------------------------------------------------------------------------------
def test_records_append_read_and_keep(tmp_path):
    path = tmp_path / rf.ARCHITECTURES_FILE
    for step in (6, 12, 18):
        rf.append_record(path, {"epoch": step // 6 - 1, "step": step, "val_acc": step / 100})
    with open(path, "a") as f:
        f.write('[1, 2]\nnot json\n{"epoch": 3, "st')  # not an object, not JSON, a cut line
    content = rf.read_records(path)
    assert [r["step"] for r in content.records] == [6, 12, 18]
    assert content.malformed == [4, 5] and content.cut == '{"epoch": 3, "st'
    assert rf.keep_records(path, lambda r: r["step"] <= 12) == 1
    assert path.read_text() == "".join(json.dumps({"epoch": e, "step": s, "val_acc": s / 100}) + "\n"
                                       for e, s in ((0, 6), (1, 12)))


# --- config and summary -----------------------------------------------------------------------
def test_summary_format_version_is_checked(tmp_path):
    path = tmp_path / rf.SUMMARY_FILE
    rf.write_summary(path, {"format_version": rf.FORMAT_VERSION, "status": rf.FINISHED, "final": {"acc": 0.5}})
    assert rf.read_summary(path)["final"] == {"acc": 0.5}
    path.write_text('{"format_version": 7, "status": "finished"}')
    with pytest.raises(rf.UnsupportedFormatError, match="format_version 7 is not supported.*reads format_version 1"):
        rf.read_summary(path)
    path.write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        rf.read_summary(path)


def test_config_round_trip_and_errors(tmp_path):
    path = tmp_path / rf.CONFIG_FILE
    rf.write_config(path, {"task": "toy", "milestones": [0.3, 0.6], "threads": None})
    assert rf.read_config(path) == {"task": "toy", "milestones": [0.3, 0.6], "threads": None}
    assert list(rf.read_config(path)) == ["task", "milestones", "threads"]  # order kept
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        rf.read_config(path)
    assert not list(tmp_path.glob("*.tmp"))


def test_run_paths_and_run_discovery(tmp_path):
    assert rf.run_path(tmp_path, "exp", "r1") == tmp_path / "exp" / "r1"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError, match="bad run name"):
            rf.run_path(tmp_path, "exp", bad)
    for exp, run in (("b", "r2"), ("a", "r1"), ("a", "_hidden")):
        (tmp_path / exp / run).mkdir(parents=True)
        (tmp_path / exp / run / rf.SUMMARY_FILE).write_text("{}")
    (tmp_path / "a" / "not-a-run").mkdir()
    assert [(e, p.name) for e, p in rf.find_run_dirs(tmp_path)] == [("a", "r1"), ("b", "r2")]
    assert [(e, p.name) for e, p in rf.find_run_dirs(tmp_path / "a")] == [("a", "r1")]  # an experiment folder
