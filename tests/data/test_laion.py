"""LAION metadata reading: column aliases and maps, the funnel's counts, bounded batches, clear errors, and the
exact URL de-duplication across files (first by file order, then row order), whatever the task split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.data import laion_prepare, url_dedup
from vlv.data.laion import CANONICAL_COLUMNS, Funnel, MetadataFilter
from vlv.data.laion_prepare import ParallelPlan, prepare_laion_metadata
from vlv.data.url_dedup import first_occurrence_mask, order_keys, sorted_contains
from vlv.testing.step_inputs import laion_row, write_parquet

PAPER = MetadataFilter(min_side=512, min_aspect=0.5, max_aspect=2.0, max_pwatermark=0.5)
IN_PROCESS = ParallelPlan(num_tasks=1, num_partitions=8)  # no Ray tasks: one filter group


def _prepare(tmp_path, input_uri, rule=PAPER, column_map=None, batch_rows=65536, plan=IN_PROCESS):
    out = tmp_path / "metadata.parquet"
    funnel = prepare_laion_metadata(input_uri, str(out), rule, column_map, batch_rows=batch_rows, plan=plan)
    return funnel, pq.read_table(out)


def test_funnel_counts_every_drop_reason(tmp_path):
    rows = [
        laion_row(url="http://ok.example/1.jpg"),
        laion_row(url="https://ok.example/2.jpg", width=1024, height=1024),
        laion_row(url=None),  # invalid_url
        laion_row(url="ftp://files.example/3.jpg"),  # invalid_url
        laion_row(url="data:image/png;base64,AAAA"),  # invalid_url
        laion_row(url="http://x.example/4.jpg", width=None),  # invalid_size
        laion_row(url="http://x.example/5.jpg", width=-800),  # invalid_size
        laion_row(url="http://x.example/6.jpg", height=0),  # invalid_size
        laion_row(url="http://x.example/7.jpg", width=600, height=512),  # too_small: shorter side must be > 512
        laion_row(url="http://x.example/8.jpg", width=2100, height=1000),  # bad_aspect (2.1)
        laion_row(url="http://x.example/9.jpg", width=600, height=1300),  # bad_aspect (0.46)
        laion_row(url="http://x.example/10.jpg", pwatermark=None),  # invalid_pwatermark
        laion_row(url="http://x.example/11.jpg", pwatermark=1.7),  # invalid_pwatermark (not a probability)
        laion_row(url="http://x.example/12.jpg", pwatermark=0.5),  # watermarked: keep only < 0.5
        laion_row(url="http://ok.example/1.jpg", text="the same URL again"),  # duplicate_url
        laion_row(url="http://ok.example/13.jpg", width=2000, height=1000),  # kept: aspect 2.0 is inside
    ]
    funnel, table = _prepare(tmp_path, write_parquet(tmp_path / "in.parquet", rows))
    assert funnel == Funnel(rows_read=16, invalid_url=3, invalid_size=3, too_small=1, bad_aspect=2,
                            invalid_pwatermark=2, watermarked=1, duplicate_url=1, rows_kept=3)
    assert table.column_names == list(CANONICAL_COLUMNS)
    assert table.column("URL").to_pylist() == ["http://ok.example/1.jpg", "https://ok.example/2.jpg",
                                               "http://ok.example/13.jpg"]
    assert table.column("TEXT").to_pylist()[0] == "a dog"  # the first of the duplicates wins
    assert funnel.rows()[0] == ("rows_read", 16) and funnel.rows()[-1] == ("rows_kept", 3)


def test_punsafe_filter_only_when_set(tmp_path):
    rows = [laion_row(url=f"http://a.example/{i}.jpg", punsafe=p) for i, p in enumerate([0.05, 0.95, None])]
    path = write_parquet(tmp_path / "in.parquet", rows)
    funnel, _ = _prepare(tmp_path, path)
    assert funnel.rows_kept == 3 and funnel.unsafe == 0
    strict = MetadataFilter(min_side=512, max_punsafe=0.5)
    funnel, table = _prepare(tmp_path, path, rule=strict)
    assert (funnel.rows_kept, funnel.unsafe, funnel.invalid_punsafe) == (1, 1, 1)
    assert table.column("punsafe").to_pylist() == [0.05]


def test_wrong_types_are_dropped_and_counted_not_fatal(tmp_path):
    schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.string()),
                        ("HEIGHT", pa.string()), ("pwatermark", pa.string())])
    rows = [
        {"URL": "http://a.example/1.jpg", "TEXT": "x", "WIDTH": "640", "HEIGHT": "600", "pwatermark": "0.1"},
        {"URL": "http://a.example/2.jpg", "TEXT": "x", "WIDTH": "wide", "HEIGHT": "600", "pwatermark": "0.1"},
        {"URL": "http://a.example/3.jpg", "TEXT": "x", "WIDTH": "700", "HEIGHT": "600", "pwatermark": "n/a"},
    ]
    funnel, table = _prepare(tmp_path, write_parquet(tmp_path / "in.parquet", rows, schema))
    assert (funnel.rows_kept, funnel.invalid_size, funnel.invalid_pwatermark) == (1, 1, 1)
    assert table.schema.field("WIDTH").type == pa.int64()
    assert table.column("WIDTH").to_pylist() == [640]
    assert table.column("similarity").null_count == 1  # absent optional columns become nulls


def test_release_aliases_are_recognised(tmp_path):
    rows = [{"url": "http://a.example/1.jpg", "caption": "a red car", "width": 900, "height": 700,
             "NSFW": "UNLIKELY", "prob_watermark": 0.2, "AESTHETIC_SCORE": 6.5, "hash": 9007199254740993},
            {"url": "http://a.example/2.jpg", "caption": "nsfw", "width": 900, "height": 700,
             "NSFW": "NSFW", "prob_watermark": 0.2, "AESTHETIC_SCORE": 5.0, "hash": 1}]
    funnel, table = _prepare(tmp_path, write_parquet(tmp_path / "in.parquet", rows),
                             rule=MetadataFilter(min_side=512, max_punsafe=0.5))
    assert funnel.rows_kept == 1 and funnel.unsafe == 1
    kept = table.to_pylist()[0]
    assert kept["URL"] == "http://a.example/1.jpg" and kept["TEXT"] == "a red car"
    assert (kept["WIDTH"], kept["HEIGHT"], kept["pwatermark"], kept["aesthetic"]) == (900, 700, 0.2, 6.5)
    assert kept["punsafe"] == 0.0  # the UNLIKELY label
    assert kept["hash"] == 9007199254740993  # int64 kept exactly (2**53 + 1 would round through float64)


def test_explicit_column_map_wins(tmp_path):
    rows = [{"image_link": "http://a.example/1.jpg", "alt_words": "a boat", "w": 1000, "h": 800, "wm": 0.1,
             "url": "http://decoy.example/ignored.jpg"}]
    column_map = {"URL": "image_link", "TEXT": "alt_words", "WIDTH": "w", "HEIGHT": "h", "pwatermark": "wm"}
    funnel, table = _prepare(tmp_path, write_parquet(tmp_path / "in.parquet", rows), column_map=column_map)
    assert funnel.rows_kept == 1
    assert table.column("URL").to_pylist() == ["http://a.example/1.jpg"]
    assert table.column("TEXT").to_pylist() == ["a boat"]


def test_missing_needed_column_names_it_the_columns_found_and_the_fix(tmp_path):
    rows = [{"URL": "http://a.example/1.jpg", "TEXT": "x", "WIDTH": 900, "HEIGHT": 700}]
    path = write_parquet(tmp_path / "in.parquet", rows)
    with pytest.raises(ValueError) as info:
        _prepare(tmp_path, path)
    message = str(info.value)
    assert "pwatermark" in message and "URL, TEXT, WIDTH, HEIGHT" in message
    assert "--set prepare_metadata.column_map=" in message and path in message
    # Without the watermark test the same file is fine.
    funnel, _ = _prepare(tmp_path, path, rule=MetadataFilter(min_side=512, max_pwatermark=None))
    assert funnel.rows_kept == 1


def test_column_map_to_absent_column_is_an_error(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", [laion_row()])
    with pytest.raises(ValueError, match="maps URL to 'link'.*columns are: URL, TEXT"):
        _prepare(tmp_path, path, column_map={"URL": "link"})


def test_empty_and_non_parquet_files_are_named(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty}.*is empty"):
        _prepare(tmp_path, str(empty))
    html = tmp_path / "page.parquet"
    html.write_text("<html>not parquet</html>")
    with pytest.raises(ValueError, match=f"{html}.*is not a parquet file"):
        _prepare(tmp_path, str(html))
    with pytest.raises(ValueError, match="does not exist"):
        _prepare(tmp_path, str(tmp_path / "nowhere.parquet"))


def test_nothing_kept_is_an_error_with_the_funnel(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", [laion_row(width=100, height=100)])
    with pytest.raises(ValueError, match="no row .* passed the filter.*too_small=1"):
        _prepare(tmp_path, path)


def test_folder_and_glob_stream_in_small_batches_with_dedup_across_files(tmp_path):
    folder = tmp_path / "laion"
    folder.mkdir()
    first = [laion_row(url=f"http://a.example/{i}.jpg", text=f"first {i}") for i in range(25)]
    second = [laion_row(url=f"http://a.example/{i}.jpg", text=f"second {i}") for i in range(20, 40)]
    write_parquet(folder / "part-00000.parquet", first)
    write_parquet(folder / "part-00001.parquet", second)
    (folder / "_SUCCESS").write_text("")
    (folder / "_stats.json").write_text("{}")
    for uri in (str(folder), str(folder / "part-*.parquet")):
        funnel, table = _prepare(tmp_path, uri, batch_rows=7)
        assert (funnel.rows_read, funnel.duplicate_url, funnel.rows_kept) == (45, 5, 40)
        texts = dict(zip(table.column("URL").to_pylist(), table.column("TEXT").to_pylist()))
        assert texts["http://a.example/22.jpg"] == "first 22" and texts["http://a.example/39.jpg"] == "second 39"
        assert table.num_rows == 40


def test_first_occurrence_mask_matches_a_python_set():
    rng = np.random.default_rng(0)
    urls = [f"http://h{int(v)}.example/x.jpg" for v in rng.integers(0, 3000, 5000)]
    seen: set[str] = set()
    expected = [not (url in seen or seen.add(url)) for url in urls]
    assert first_occurrence_mask(pa.array(urls)).tolist() == expected
    chunked = pa.chunked_array([urls[:1234], urls[1234:]])  # one dictionary over the chunks
    assert first_occurrence_mask(chunked).tolist() == expected
    assert sorted_contains(np.array([3, 8, 20]), np.array([1, 3, 9, 20, 25])).tolist() == [False, True, False,
                                                                                           True, False]


def _reference(files_rows, rule_passes):
    """(URL, TEXT) of the rows kept by a plain loop: files in order, rows in order, first passing URL wins."""
    kept, seen = [], set()
    for rows in files_rows:
        for row in rows:
            if rule_passes(row) and row["URL"] not in seen:
                seen.add(row["URL"])
                kept.append((row["URL"], row["TEXT"]))
    return kept


def _three_files_with_duplicates(folder):
    """Duplicates within a file and across files; one URL's first copy is too small, so a later copy wins."""
    rng = np.random.default_rng(1)
    files = []
    for f in range(3):
        rows = []
        for r in range(300):
            url = f"http://img.example/{int(rng.integers(0, 400))}.jpg"
            small = r % 17 == 0
            rows.append(laion_row(url=url, text=f"file {f} row {r}", width=300 if small else 800))
        files.append(rows)
        write_parquet(folder / f"part-{f:05d}.parquet", rows)
    return files


def test_duplicates_within_and_across_files_keep_the_first_by_file_then_row(tmp_path):
    folder = tmp_path / "laion"
    folder.mkdir()
    files = _three_files_with_duplicates(folder)
    expected = _reference(files, lambda row: row["WIDTH"] > 512)
    funnel, table = _prepare(tmp_path, str(folder), batch_rows=64)
    assert list(zip(table.column("URL").to_pylist(), table.column("TEXT").to_pylist())) == expected
    assert funnel.rows_kept == len(expected) and funnel.rows_read == 900
    assert funnel.duplicate_url == 900 - funnel.too_small - len(expected) > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".metadata-work-")]  # work folder removed


def test_a_hash_collision_never_drops_a_different_url(tmp_path, monkeypatch):
    """Every URL hashed alike (all in one partition): only equal strings are duplicates."""
    rows = [laion_row(url="http://a.example/1.jpg", text="a first"), laion_row(url="http://b.example/2.jpg"),
            laion_row(url="http://a.example/1.jpg", text="a again"), laion_row(url="http://c.example/3.jpg")]
    path = write_parquet(tmp_path / "in.parquet", rows)
    monkeypatch.setattr(url_dedup, "hash_urls", lambda urls: np.zeros(len(urls), dtype=np.uint64))
    funnel, table = _prepare(tmp_path, path)
    assert table.column("URL").to_pylist() == ["http://a.example/1.jpg", "http://b.example/2.jpg",
                                               "http://c.example/3.jpg"]
    assert table.column("TEXT").to_pylist()[0] == "a first" and funnel.duplicate_url == 1


def test_order_keys_sort_by_file_then_row():
    keys = np.concatenate([order_keys(2, np.array([0, 5])), order_keys(0, np.array([7, 2**39]))])
    assert np.argsort(keys).tolist() == [2, 3, 0, 1]
    assert (keys >> url_dedup.ROW_BITS).tolist() == [2, 2, 0, 0]
    with pytest.raises(ValueError, match="at most 8388608 files"):
        order_keys(2**23, np.array([0]))


def test_the_split_into_ray_tasks_changes_nothing_in_the_output(tmp_path, ray_session, monkeypatch):
    folder = tmp_path / "laion"
    folder.mkdir()
    files = _three_files_with_duplicates(folder)
    calls = []
    real = laion_prepare.map_chunks_with_tasks

    def recording(fn, chunks, **options):
        calls.append((fn.__name__, len(chunks), options["num_cpus"]))
        return real(fn, chunks, **options)

    monkeypatch.setattr(laion_prepare, "map_chunks_with_tasks", recording)
    outputs = {}
    for plan in (ParallelPlan(num_tasks=1, num_partitions=1), ParallelPlan(num_tasks=3, cpus_per_task=0.5,
                                                                            num_partitions=5)):
        out = tmp_path / f"out-{plan.num_tasks}.parquet"
        funnel = prepare_laion_metadata(str(folder), str(out), PAPER, batch_rows=50, plan=plan,
                                        work_uri=str(tmp_path / f"work-{plan.num_tasks}"))
        outputs[plan.num_tasks] = (funnel, out.read_bytes())
        assert not (tmp_path / f"work-{plan.num_tasks}").exists()
    assert calls == [("filter_file_group", 3, 0.5), ("dedup_partitions", 3, 0.5)]  # one group per file
    assert outputs[1] == outputs[3]
    table = pq.read_table(tmp_path / "out-3.parquet")
    expected = _reference(files, lambda row: row["WIDTH"] > 512)
    assert list(zip(table.column("URL").to_pylist(), table.column("TEXT").to_pylist())) == expected
    assert pq.ParquetFile(tmp_path / "out-3.parquet").metadata.num_row_groups > 1


def test_the_work_folder_is_removed_when_the_job_fails(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", [laion_row(width=100, height=100)])
    with pytest.raises(ValueError, match="no row .* passed the filter"):
        prepare_laion_metadata(path, str(tmp_path / "out.parquet"), PAPER, plan=IN_PROCESS,
                               work_uri=str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_synthetic_laion_is_deterministic_with_duplicates_across_files(tmp_path):
    from vlv.testing.laion_rows import write_synthetic_laion

    first = write_synthetic_laion(tmp_path / "a", 30_000, 3, seed=4)
    again = write_synthetic_laion(tmp_path / "b", 30_000, 3, seed=4)
    assert [f.read_bytes() for f in first.files] == [f.read_bytes() for f in again.files]
    urls = [set(pq.read_table(f, columns=["URL"]).column("URL").drop_null().to_pylist()) for f in first.files]
    assert len(urls[0] & urls[2]) > 100  # the same popular images in different files
    funnel, table = _prepare(tmp_path, str(first.folder))
    assert 0.1 < funnel.rows_kept / funnel.rows_read < 0.3 and funnel.duplicate_url > 0
    assert funnel.invalid_url > 0 and funnel.watermarked > 0 and funnel.too_small > funnel.rows_kept


def test_input_and_work_folder_on_an_object_store(tmp_path, s3_bucket):
    """s3:// input files and an s3:// work folder (the step's attempt folder on an object store)."""
    from vlv.engine.storage import filesystem

    folder = tmp_path / "laion"
    folder.mkdir()
    files = _three_files_with_duplicates(folder)
    fs, root = filesystem(f"s3://{s3_bucket}")
    for path in sorted(folder.iterdir()):
        fs.put_file(str(path), f"{root}/laion/{path.name}")
    out = tmp_path / "metadata.parquet"
    work = f"s3://{s3_bucket}/attempt/_work"
    funnel = prepare_laion_metadata(f"s3://{s3_bucket}/laion", str(out), PAPER, batch_rows=100, plan=IN_PROCESS,
                                    work_uri=work)
    table = pq.read_table(out)
    expected = _reference(files, lambda row: row["WIDTH"] > 512)
    assert list(zip(table.column("URL").to_pylist(), table.column("TEXT").to_pylist())) == expected
    assert funnel.rows_kept == len(expected)
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/attempt/_work")
