"""vlv.paths: a path built from data never leaves its root; what stays inside is accepted unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlv.data.caption_formats import key_problem
from vlv.engine.store import RunStore
from vlv.paths import check_relative, child_uri, path_problem, safe_child

ESCAPES = {
    "../x": "contains a '..' component",
    "a/../../x": "contains a '..' component",
    "..": "contains a '..' component",
    "a\\..\\x": "contains a '..' component",
    "/etc/passwd": "is absolute",
    "\\\\server\\share": "is absolute",
    "s3://bucket/x": "is a URL",
    "a\x00b": "contains a NUL byte",
    "": "is empty",
}


@pytest.mark.parametrize(("value", "problem"), ESCAPES.items())
def test_values_that_would_leave_the_root_are_refused(tmp_path, value, problem):
    assert problem in path_problem(value)
    with pytest.raises(ValueError) as info:
        safe_child(tmp_path, value, "COCO file_name")
    message = str(info.value)
    assert message.startswith(f"COCO file_name {value!r} ") and problem in message and str(tmp_path) in message


@pytest.mark.parametrize("value", ["a.jpg", "val2014/COCO_val2014_000000000042.jpg", "a..b.jpg", ".hidden", "./x"])
def test_relative_paths_inside_the_root_are_kept_as_given(tmp_path, value):
    assert path_problem(value) is None
    assert safe_child(tmp_path, value) == tmp_path / value
    assert child_uri("s3://bucket/shards/", value) == f"s3://bucket/shards/{value}"


@pytest.mark.parametrize("value", ["a/b", "a\\b", "/abs", ".", ".."])
def test_a_single_name_has_no_folders(tmp_path, value):
    assert path_problem(value, single=True) is not None
    with pytest.raises(ValueError, match="shard name"):
        child_uri(str(tmp_path), value, "shard name", single=True)


def test_non_strings_are_refused(tmp_path):
    assert path_problem(7) == "is a int, not a string"
    with pytest.raises(ValueError, match="step name None is a NoneType"):
        check_relative(None, tmp_path, "step name")


def test_the_check_is_lexical_so_links_set_up_by_the_operator_are_followed(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "photo.jpg").write_bytes(b"x")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "shared").symlink_to(tmp_path / "outside")
    assert safe_child(tmp_path / "images", "shared/photo.jpg").read_bytes() == b"x"


def test_store_refuses_step_names_and_keys_that_leave_it(tmp_path):
    store = RunStore(str(tmp_path / "store"))
    for step, key in (("download", ".."), ("..", "k"), ("download", "x/../../y"), ("a\\b", "k")):
        for call in (store.output_uri, store.scratch_uri, store.staging_dir, store.read_manifest, store.unpublish):
            with pytest.raises(ValueError, match="would leave"):
                call(step, key)
        with pytest.raises(ValueError, match="would leave"):
            with store.lock(step, key, owner="test"):
                pass
    with pytest.raises(ValueError, match="step name '../x'"):
        store.published_keys("../x")
    assert not (tmp_path / "store" / ".locks").exists() or not any((tmp_path / "store" / ".locks").iterdir())
    assert Path(store.output_uri("download", "abc123")) == tmp_path / "store" / "steps" / "download" / "abc123"


@pytest.mark.parametrize("key", ["../x", "a/b", "a\\b", ".", "..", "x..y", "a\x00b", "/abs"])
def test_caption_keys_use_the_shared_rules_and_stay_stricter(key):
    assert key_problem(key) is not None
    assert key_problem("000123456") is None and key_problem("img.0001") is None
