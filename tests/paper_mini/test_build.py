"""The paper_mini asset builder: once per folder, atomic, safe under concurrency, deterministic."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from vlv.paper_mini import build
from vlv.paper_mini.layout import BUILDER_VERSION, PaperMiniAssets


def _fake_build(calls: list[float], seconds: float = 0.0):
    """A stand-in for build_assets: one data file and a manifest, as the real one leaves them."""

    def fake(assets: PaperMiniAssets, *, seed: int) -> dict:
        calls.append(time.monotonic())
        time.sleep(seconds)
        (assets.root / "data").mkdir()
        (assets.root / "data" / "file.bin").write_bytes(b"x" * 10)
        manifest = {"builder_version": BUILDER_VERSION, "seed": seed, "total_bytes": 10,
                    "files": {"data/file.bin": {"bytes": 10, "sha256": "0" * 64}}}
        assets.manifest.write_text(json.dumps(manifest))
        return manifest

    return fake


def test_second_call_finds_the_folder_and_builds_nothing(monkeypatch, tmp_path, caplog):
    calls: list[float] = []
    monkeypatch.setattr(build, "build_assets", _fake_build(calls))
    first = build.ensure_paper_mini_assets(tmp_path / "assets")
    with caplog.at_level(logging.INFO, logger="vlv.paper_mini"):
        second = build.ensure_paper_mini_assets(tmp_path / "assets")
    assert first == second and len(calls) == 1
    assert "using the miniature models and data in" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".assets.lock", "assets"]  # no staging folder left


def test_a_failed_build_leaves_no_folder_and_the_next_call_builds(monkeypatch, tmp_path):
    def broken(assets: PaperMiniAssets, *, seed: int) -> dict:
        (assets.root / "half_written.bin").write_bytes(b"...")
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "build_assets", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build.ensure_paper_mini_assets(tmp_path / "assets")
    assert [p.name for p in tmp_path.iterdir()] == [".assets.lock"]
    calls: list[float] = []
    monkeypatch.setattr(build, "build_assets", _fake_build(calls))
    assert build.is_complete(build.ensure_paper_mini_assets(tmp_path / "assets")) and len(calls) == 1


def test_a_damaged_or_foreign_folder_is_never_replaced(monkeypatch, tmp_path):
    calls: list[float] = []
    monkeypatch.setattr(build, "build_assets", _fake_build(calls))
    assets = build.ensure_paper_mini_assets(tmp_path / "assets")
    (assets.root / "data" / "file.bin").write_bytes(b"x" * 3)  # truncated
    assert not build.is_complete(assets)
    with pytest.raises(ValueError, match="exists but is not a complete paper_mini asset folder"):
        build.ensure_paper_mini_assets(assets.root)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="VLV_PAPER_MINI_DIR"):
        build.ensure_paper_mini_assets(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(calls) == 1


def test_concurrent_callers_wait_for_one_build(monkeypatch, tmp_path):
    calls: list[float] = []
    monkeypatch.setattr(build, "build_assets", _fake_build(calls, seconds=0.5))
    results: list[PaperMiniAssets] = []
    threads = [threading.Thread(target=lambda: results.append(build.ensure_paper_mini_assets(tmp_path / "a")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 3 and all(build.is_complete(r) for r in results)


@pytest.mark.slow
def test_a_second_build_writes_the_same_bytes(paper_mini_assets, tmp_path):
    """Deterministic: a fresh build equals this machine's (same builder version) file for file."""
    started = time.monotonic()
    fresh = build.ensure_paper_mini_assets(tmp_path / "fresh")
    seconds = time.monotonic() - started
    ours, theirs = (json.loads(a.manifest.read_text())["files"] for a in (fresh, paper_mini_assets))
    assert ours == theirs, [name for name in ours if ours[name] != theirs.get(name)]
    print(f"builder: {seconds:.1f}s")
