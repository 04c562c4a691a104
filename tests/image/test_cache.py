"""The step cache shared by concurrent builds (two test processes, a demo beside a build)."""

from __future__ import annotations

from pathlib import Path

from obelisk.image.cache import StepCache, inputs_digest


def test_a_build_finishing_second_keeps_the_entry_the_first_one_wrote(tmp_path):
    cache = StepCache(tmp_path / "cache")
    inputs = {"a": 1}
    final = tmp_path / "cache" / "step" / inputs_digest("step", inputs)

    def produce(out: Path) -> None:
        (out / "artifact").write_text("mine")
        # meanwhile another process finished the same step and is reading its entry
        final.mkdir(parents=True)
        (final / "artifact").write_text("theirs")
        (final / ".inputs.json").write_text("{}")

    out, cached = cache.run("step", inputs, produce)
    assert out == final and not cached
    assert (final / "artifact").read_text() == "theirs"  # never removed from under its reader
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary left


def test_a_forced_rebuild_replaces_the_entry(tmp_path):
    inputs = {"a": 1}
    StepCache(tmp_path).run("step", inputs, lambda out: (out / "artifact").write_text("old"))
    out, cached = StepCache(tmp_path, enabled=False).run("step", inputs,
                                                         lambda out: (out / "artifact").write_text("new"))
    assert not cached and (out / "artifact").read_text() == "new"
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    again, cached = StepCache(tmp_path).run("step", inputs, lambda out: None)
    assert cached and again == out
