"""read_records: formats, normalisation, and errors that name file and line."""

import json

import pytest

from jaxlm.data.records import DataError, ReadStats, read_records


def write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def jsonl(path, *objects):
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


def test_jsonl_kinds_are_recognised_from_their_fields(tmp_path):
    path = jsonl(tmp_path / "mixed.jsonl",
                 {"messages": [{"role": "user", "content": "hi"}]},
                 {"prompt": "2+2=", "completion": "4"},
                 {"text": "plain"},
                 {"tokens": ["Paris"], "tags": ["B-loc"]})
    assert [r.kind for r in read_records(path)] == ["messages", "prompt_completion", "text", "ner"]


def test_records_know_their_file_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "one"}\n\n{"text": "three"}\n')
    assert [(r.path, r.line) for r in read_records(path)] == [(path, 1), (path, 3)]


def test_fields_rename_and_extra_keys_are_kept(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", {"body": "hello", "source": "web", "passage_id": 7})
    (record,) = read_records(path, fields={"text": "body"})
    assert record.data == {"text": "hello", "source": "web", "passage_id": 7}


def test_a_text_file_is_one_document(tmp_path):
    path = write(tmp_path / "a.txt", "para one\n\npara two\n")
    (record,) = read_records(path)
    assert (record.kind, record.data["text"]) == ("text", "para one\n\npara two\n")


def test_a_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "sub" / "a.md", "ay")
    jsonl(tmp_path / "c.jsonl", {"text": "sea"})
    assert [r.data["text"] for r in read_records(tmp_path)] == ["bee", "sea", "ay"]


def test_conll_sentences_are_split_on_blank_lines(tmp_path):
    path = write(tmp_path / "a.conll", "-DOCSTART-\tO\n\nEmpire\tB-facility\nState\tI-facility\n\nhi\tO\n")
    records = list(read_records(path))
    assert [r.data for r in records] == [
        {"tokens": ["Empire", "State"], "tags": ["B-facility", "I-facility"]},
        {"tokens": ["hi"], "tags": ["O"]}]
    assert [r.line for r in records] == [3, 6]


def test_tab_separated_lines_are_detected_as_conll_without_extension(tmp_path):
    path = write(tmp_path / "ner.txt.data", "Paris\tB-loc\n")
    assert next(iter(read_records(path))).kind == "ner"


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', ":2: malformed JSON"),
    ("missing.jsonl", '{"body": "x"}\n', ":1: missing field"),
    ("wrong_type.jsonl", '{"prompt": "x", "completion": 3}\n', ":1: field 'completion' must be a string"),
    ("empty.jsonl", "", ":1: empty file"),
    ("empty.txt", "  \n", ":1: empty file"),
    ("no_tag.conll", "Paris\tB-loc\nLondon\n", ":2: expected 'token<TAB>tag'"),
    ("bad_tag.conll", "Paris\tLOCATION\n", ":1: unknown tag 'LOCATION'"),
])
def test_bad_input_raises_data_error_naming_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=message) as error:
        list(read_records(path))
    assert str(error.value).startswith(path + ":")
    assert isinstance(error.value, ValueError)


def test_non_utf8_bytes_raise_with_the_line(tmp_path):
    path = write(tmp_path / "latin1.jsonl", '{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"), "wb")
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        list(read_records(path))


def test_tags_outside_allowed_tags_are_unknown(tmp_path):
    path = write(tmp_path / "a.conll", "Paris\tB-city\n")
    with pytest.raises(DataError, match="unknown tag 'B-city'"):
        list(read_records(path, allowed_tags={"O", "B-loc", "I-loc"}))


def test_skip_counts_every_dropped_record(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a"}\nnot json\n{"nope": 1}\n{"text": "b"}\n')
    stats = ReadStats()
    texts = [r.data["text"] for r in read_records(path, on_error="skip", stats=stats)]
    assert texts == ["a", "b"]
    assert (stats.records, stats.skipped) == (2, 2)
    assert stats.errors[0].startswith(f"{path}:2:") and stats.errors[1].startswith(f"{path}:3:")


def test_skip_drops_the_whole_conll_sentence_with_a_bad_line(tmp_path):
    path = write(tmp_path / "a.conll", "a\tO\nb\n\nc\tO\n")
    stats = ReadStats()
    assert [r.data["tokens"] for r in read_records(path, on_error="skip", stats=stats)] == [["c"]]
    assert stats.skipped == 1


def test_reading_is_streaming(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "first"}\nbroken\n')
    records = read_records(path)
    assert next(records).data["text"] == "first"  # the bad line is not reached yet
