"""Caption ingestion: every quarantine reason with its exact line number, good rows never lost, all formats."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.data import caption_lines
from vlv.data.caption_formats import QUARANTINE_REASONS
from vlv.data.caption_ingest import IngestOptions, IngestStats, detect_format, expand_sources, ingest_captions
from vlv.data.caption_keys import KeptKeys
from vlv.data.caption_synthetic import blocked_line, error_line, response_line, vertex_line

KEYS = [f"{i:09d}" for i in range(2000)]


@dataclass
class Result:
    stats: IngestStats
    captions: list[dict]
    quarantine: list[dict]

    def rejects(self) -> list[tuple[str, int]]:
        return [(q["reason"], q["line_number"]) for q in self.quarantine]


def ingest(tmp_path: Path, lines: list[str | bytes], *, kept: list[str] | None = KEYS, name: str = "in.jsonl",
           newline: bytes = b"\n", prefix: bytes = b"", **options) -> Result:
    path = tmp_path / name
    body = newline.join(line.encode() if isinstance(line, str) else line for line in lines)
    path.write_bytes(prefix + body + newline)
    return run(tmp_path, [str(path)], kept=kept, **options)


def run(tmp_path: Path, sources: list[str], *, kept: list[str] | None = KEYS, **options) -> Result:
    captions, quarantine = tmp_path / "captions.parquet", tmp_path / "quarantine.parquet"
    stats = ingest_captions(sources, str(captions), str(quarantine),
                            kept=KeptKeys(pa.array(kept, pa.string())) if kept is not None else None,
                            options=IngestOptions(**options))
    return Result(stats, pq.read_table(captions).to_pylist(), pq.read_table(quarantine).to_pylist())


def good(i: int, text: str | None = None) -> str:
    return response_line(KEYS[i], text or f"Caption number {i}: a red boat on a calm lake at dawn.")


def assert_one(result: Result, reason: str, line: int) -> dict:
    assert result.rejects() == [(reason, line)]
    assert result.stats.quarantined == {reason: 1}
    return result.quarantine[0]


# -- one test per quarantine reason ---------------------------------------------------------------------------

def test_malformed_json(tmp_path):
    result = ingest(tmp_path, [good(0), '{"key": "000000001", "response": {"candidates": [', good(2)])
    record = assert_one(result, "malformed_json", 2)
    assert record["key"] == "000000001" and "invalid JSON" in record["detail"]
    assert [c["key"] for c in result.captions] == [KEYS[0], KEYS[2]]


def test_error_row(tmp_path):
    record = assert_one(ingest(tmp_path, [good(0), good(1), error_line(KEYS[2], 429, "quota")]), "error_row", 3)
    assert record["key"] == KEYS[2] and "429" in record["detail"] and "quota" in record["detail"]


def test_blocked(tmp_path):
    safety_stop = response_line(KEYS[2], "partial", finish_reason="SAFETY")
    result = ingest(tmp_path, [blocked_line(KEYS[0], "PROHIBITED_CONTENT"), good(1), safety_stop])
    assert result.rejects() == [("blocked", 1), ("blocked", 3)]
    assert "PROHIBITED_CONTENT" in result.quarantine[0]["detail"]


def test_empty(tmp_path):
    result = ingest(tmp_path, [good(0), response_line(KEYS[1], " \n "), good(2)])
    assert_one(result, "empty", 2)


def test_max_tokens(tmp_path):
    truncated = response_line(KEYS[1], "A long caption that was cut", finish_reason="MAX_TOKENS", output_tokens=1024)
    record = assert_one(ingest(tmp_path, [good(0), truncated]), "max_tokens", 2)
    assert "1024" in record["detail"]


def test_duplicate_key_second_and_later(tmp_path):
    result = ingest(tmp_path, [good(0, "first"), good(1), good(0, "second"), error_line(KEYS[1]), good(0, "third")])
    assert result.rejects() == [("duplicate_key", 3), ("error_row", 4), ("duplicate_key", 5)]
    assert {c["key"]: c["caption"] for c in result.captions}[KEYS[0]] == "first"


def test_unknown_key(tmp_path):
    record = assert_one(ingest(tmp_path, [good(0), response_line("not-a-kept-image", "text")]), "unknown_key", 2)
    assert record["key"] == "not-a-kept-image"


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", "a\\b", "", "a\x01b", "x" * 300])
def test_bad_key(tmp_path, key):
    record = assert_one(ingest(tmp_path, [good(0), response_line(key, "text"), good(1)]), "bad_key", 2)
    assert record["reason"] == "bad_key"


def test_line_too_long_inside_a_block(tmp_path):
    result = ingest(tmp_path, [good(0), good(1, "x" * 5000), good(2)], max_line_bytes=2048)
    record = assert_one(result, "line_too_long", 2)
    assert record["key"] == KEYS[1] and "max_line_bytes" in record["detail"]


def test_line_too_long_across_reads(tmp_path):
    # chunk_bytes < line: the reader skips the line chunk by chunk instead of holding it
    result = ingest(tmp_path, [good(0), good(1, "y" * 50_000), good(2), good(3)], max_line_bytes=4096,
                    chunk_bytes=1024, parse_bytes=1024)
    assert_one(result, "line_too_long", 2)
    assert [c["key"] for c in result.captions] == [KEYS[0], KEYS[2], KEYS[3]]


def test_bad_encoding(tmp_path):
    latin1 = good(1, "Caf\u00e9 on the corner").encode("utf-8").replace("\u00e9".encode(), b"\xe9")
    record = assert_one(ingest(tmp_path, [good(0), latin1, good(2)]), "bad_encoding", 2)
    assert "0xe9" in record["detail"]


def test_lone_surrogate_is_bad_encoding(tmp_path):
    line = good(1).replace("Caption", "\\ud800Caption")
    assert_one(ingest(tmp_path, [good(0), line]), "bad_encoding", 2)


def test_missing_field(tmp_path):
    no_key = json.dumps({"response": json.loads(good(0))["response"]})
    no_response = json.dumps({"key": KEYS[1]})
    result = ingest(tmp_path, [no_key, no_response, good(2)])
    assert result.rejects() == [("missing_field", 1), ("missing_field", 2)]


# -- good input that looks odd ----------------------------------------------------------------------------------

def test_bom_and_crlf_are_good_input(tmp_path):
    result = ingest(tmp_path, [good(0), good(1), good(2)], newline=b"\r\n", prefix=b"\xef\xbb\xbf")
    assert result.quarantine == [] and len(result.captions) == 3
    assert all(not c["caption"].endswith("\r") for c in result.captions)


def test_blank_lines_are_skipped_and_line_numbers_stay_exact(tmp_path):
    result = ingest(tmp_path, [good(0), "", "   ", good(1), "\t", "{bad", good(2)])
    assert result.rejects() == [("malformed_json", 6)]
    assert result.stats.rows_read == 4 and len(result.captions) == 3


def test_parts_are_joined_and_thoughts_dropped(tmp_path):
    line = json.loads(response_line(KEYS[0], ["A red ", "boat."]))
    line["response"]["candidates"][0]["content"]["parts"].insert(0, {"text": "thinking...", "thought": True})
    result = ingest(tmp_path, [json.dumps(line)])
    assert result.captions[0]["caption"] == "A red boat."
    assert result.captions[0]["caption_chars"] == 11 and result.captions[0]["finish_reason"] == "STOP"


def test_good_rows_never_lost_among_bad_lines(tmp_path, monkeypatch):
    bad_lines = {
        7: '{"key": "000000007", "response": {"cand',  # truncated
        120: b'{"key": "\xff\xfe", "response": {}}',  # not UTF-8
        333: good(5) + good(6),  # two objects on one line
        334: "[1, 2, 3]",  # JSON, not an object
        500: '{"key": 5, "response": {}}',  # key of the wrong type
        777: '{"key": "000000777", "response": {"usageMetadata": {"promptTokenCount": 1.5}}}',  # float tokens
        901: "not json at all",
    }
    lines: list[str | bytes] = []
    for i in range(1000):
        while len(lines) + 1 in bad_lines:
            lines.append(bad_lines[len(lines) + 1])
        lines.append(good(i + 1000))
    slow_calls = []
    reference = caption_lines._slow_line
    monkeypatch.setattr(caption_lines, "_slow_line", lambda raw, fmt: slow_calls.append(1) or reference(raw, fmt))
    for options in ({}, {"parse_bytes": 4096, "chunk_bytes": 16384}):
        slow_calls.clear()
        result = ingest(tmp_path, lines, **options)
        assert len(slow_calls) <= len(bad_lines) + 16, "only lines near bad ones may take the slow path"
        assert len(result.captions) == 1000, options
        assert [c["key"] for c in result.captions] == KEYS[1000:2000]
        assert [line for _, line in result.rejects()] == sorted(bad_lines), options
        reasons = dict((line, reason) for reason, line in result.rejects())
        assert reasons[120] == "bad_encoding" and reasons[500] == "bad_key" and reasons[333] == "malformed_json"
        assert reasons[777] == "empty"  # no candidates; the float token count only sends it down the slow path


def test_fast_and_reference_paths_agree(tmp_path, monkeypatch):
    lines = [good(0), error_line(KEYS[1]), blocked_line(KEYS[2]), response_line(KEYS[3], ""), "",
             response_line(KEYS[4], "cut", finish_reason="MAX_TOKENS"), good(0), response_line("zz", "x"),
             response_line("../x", "y"), "{oops", response_line(KEYS[5], ["two ", "parts"]),
             response_line(KEYS[6], "other", finish_reason="OTHER"), vertex_line(KEYS[7], "from vertex"),
             vertex_line(KEYS[8], "", status="Internal error"), json.dumps({"key": KEYS[9]}), good(10)]
    fast = ingest(tmp_path, lines * 3, parse_bytes=2048)
    monkeypatch.setattr(caption_lines, "_read", lambda data, schema: (None, None))
    slow = ingest(tmp_path, lines * 3, parse_bytes=2048)
    assert fast.captions == slow.captions
    assert fast.quarantine == slow.quarantine
    assert set(fast.stats.quarantined) == {"error_row", "blocked", "empty", "max_tokens", "duplicate_key",
                                           "unknown_key", "bad_key", "malformed_json", "missing_field"}


def test_huge_line_is_quarantined_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as out:
        out.write(good(0).encode() + b"\n")
        out.write(b'{"key": "000000001", "response": {"candidates": [{"content": {"parts": [{"text": "')
        for _ in range(20):
            out.write(b"z" * (1 << 20))
        out.write(b'"}]}}]}}\n' + good(2).encode() + b"\n")
    tracemalloc.start()
    try:
        result = run(tmp_path, [str(path)], max_line_bytes=1 << 20, chunk_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rejects() == [("line_too_long", 2)]
    assert result.quarantine[0]["key"] == KEYS[1]
    assert len(result.captions) == 2
    assert peak < 8 << 20, f"peak traced memory {peak / 2**20:.1f} MiB for a 20 MiB line"


# -- other formats ------------------------------------------------------------------------------------------------

def test_vertex_batch_output(tmp_path):
    lines = [vertex_line(KEYS[0], "labels key"), vertex_line(KEYS[1], "top-level key", key_in="key"),
             vertex_line(KEYS[2], "custom id", key_in="custom_id"),
             vertex_line(KEYS[3], "", status="RESOURCE_EXHAUSTED"), vertex_line(None, "no key anywhere")]
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(str(path), IngestOptions()) == "vertex_batch"
    result = run(tmp_path, [str(path)])
    assert [(c["key"], c["caption"]) for c in result.captions] == [
        (KEYS[0], "labels key"), (KEYS[1], "top-level key"), (KEYS[2], "custom id")]
    assert result.rejects() == [("error_row", 4), ("missing_field", 5)]
    assert "RESOURCE_EXHAUSTED" in result.quarantine[0]["detail"]


def test_plain_jsonl_with_custom_fields(tmp_path):
    lines = [json.dumps({"id": KEYS[0], "text": "a cat"}), json.dumps({"id": KEYS[1], "text": ""}),
             json.dumps({"id": KEYS[2]}), json.dumps({"id": KEYS[3], "text": 7})]
    result = ingest(tmp_path, lines, key_field="id", caption_field="text")
    assert [(c["key"], c["caption"]) for c in result.captions] == [(KEYS[0], "a cat")]
    assert result.rejects() == [("empty", 2), ("missing_field", 3), ("missing_field", 4)]


def test_plain_csv(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes(b"key,caption\n" + f"{KEYS[0]},a dog\n{KEYS[1]},\n../x,bad\n".encode()
                     + f'{KEYS[2]},"quoted, with comma"\n{KEYS[3]},a,b\n'.encode()
                     + KEYS[4].encode() + b",caf\xe9\n" + f"{KEYS[5]},last\n".encode())
    result = run(tmp_path, [str(path)])
    assert [(c["key"], c["caption"]) for c in result.captions] == [
        (KEYS[0], "a dog"), (KEYS[2], "quoted, with comma"), (KEYS[5], "last")]
    assert sorted(result.rejects(), key=lambda r: r[1]) == [
        ("empty", 3), ("bad_key", 4), ("missing_field", 6), ("bad_encoding", 7)]


def test_plain_parquet_with_integer_keys(tmp_path):
    path = tmp_path / "captions.parquet.in.parquet"
    pq.write_table(pa.table({"key": pa.array([0, 1, 2, 2], pa.int64()),
                             "caption": ["zero", None, "two", "two again"]}), path)
    result = run(tmp_path, [str(path)], kept=["0", "1", "2"])
    assert [(c["key"], c["caption"]) for c in result.captions] == [("0", "zero"), ("2", "two")]
    assert result.rejects() == [("missing_field", 2), ("duplicate_key", 4)]


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("key,text\n1,a\n")
    with pytest.raises(ValueError, match="no column 'caption'.*caption_field"):
        run(tmp_path, [str(path)])


def test_gzip_and_many_files(tmp_path):
    (tmp_path / "parts").mkdir()
    with gzip.open(tmp_path / "parts" / "a.jsonl.gz", "wt") as handle:
        handle.write(good(0) + "\n" + good(1) + "\n")
    (tmp_path / "parts" / "b.jsonl").write_text(good(1) + "\n" + good(2) + "\n")
    sources = expand_sources(str(tmp_path / "parts" / "*"))
    assert [Path(s).name for s in sources] == ["a.jsonl.gz", "b.jsonl"]
    result = run(tmp_path, sources)
    assert [c["key"] for c in result.captions] == KEYS[:3]
    assert result.rejects() == [("duplicate_key", 1)] and result.quarantine[0]["source"].endswith("b.jsonl")


def test_sources_and_format_errors(tmp_path):
    with pytest.raises(ValueError, match="ingest_captions.source.*matches no file"):
        expand_sources(str(tmp_path / "nothing-*.jsonl"))
    array = tmp_path / "array.json"
    array.write_text(json.dumps([json.loads(good(0))]))
    with pytest.raises(ValueError, match="one JSON array, not JSON Lines"):
        detect_format(str(array), IngestOptions())
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(ValueError, match="cannot tell the format.*ingest_captions.format"):
        detect_format(str(other), IngestOptions())


def test_without_kept_keys_duplicates_still_caught(tmp_path):
    result = ingest(tmp_path, [response_line("a", "x"), response_line("b", "y"), response_line("a", "z")], kept=None)
    assert [c["key"] for c in result.captions] == ["a", "b"] and result.rejects() == [("duplicate_key", 3)]


def test_kept_keys_lookup_and_claim():
    kept = KeptKeys(pa.array(["b", "abc", "a", None, "abcd", "a"]))
    rows = kept.lookup(pa.array(["a", "abcd", "zz", "abcde", "ab", "b"]))
    assert rows.tolist() == [2, 4, -1, -1, -1, 0]
    assert kept.duplicate_kept_keys == 1
    assert kept.claim(rows[[0, 1, 0]]).tolist() == [False, False, True]
    assert kept.claim(rows[[1, 5]]).tolist() == [True, False]
    assert kept.captioned == 3


def test_vocabulary_is_fixed():
    assert QUARANTINE_REASONS == ("malformed_json", "bad_encoding", "line_too_long", "missing_field", "bad_key",
                                  "error_row", "blocked", "max_tokens", "empty", "unknown_key", "duplicate_key")
