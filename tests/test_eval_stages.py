"""eval/stages.py: finished stages are skipped on a rerun; another config's directory is refused."""

import json

import pytest

from eval.stages import ExperimentMismatch, StageRunner
from rollouts.config import ConfigError


def test_resume_skips_finished_stages(tmp_path):
    calls = []
    r = StageRunner(tmp_path / "exp", {"a": 1, "progress": True}, log=lambda *_: None)
    assert r.run("one", lambda: calls.append(1) or {"x": 1}) == {"x": 1}

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        r.run("two", interrupted)
    assert not r.done("two")
    r2 = StageRunner(tmp_path / "exp", {"a": 1, "progress": False}, ignore_keys=("progress",), log=lambda *_: None)
    assert r2.run("one", lambda: calls.append(2) or {"x": 2}) == {"x": 1}  # skipped: recorded result
    assert r2.run("two", lambda: calls.append(3) or [3]) == [3]
    assert calls == [1, 3]
    assert set(json.loads((tmp_path / "exp" / "timings.json").read_text())) == {"one", "two"}


def test_other_config_or_foreign_dir_refused(tmp_path):
    StageRunner(tmp_path / "exp", {"a": 1}, log=lambda *_: None).run("one", lambda: 1)
    with pytest.raises(ExperimentMismatch, match="a: saved 1 != now 2"):
        StageRunner(tmp_path / "exp", {"a": 2}, log=lambda *_: None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(ExperimentMismatch, match="not an experiment directory"):
        StageRunner(tmp_path / "other", {"a": 1}, log=lambda *_: None)


def test_a_setting_added_later_resumes_at_its_default_only(tmp_path):
    StageRunner(tmp_path / "exp", {"a": 1}, log=lambda *_: None).run("one", lambda: 1)  # made before "b" existed
    defaults = {"a": 0, "b": False}
    assert StageRunner(tmp_path / "exp", {"a": 1, "b": False}, defaults=defaults, log=lambda *_: None).done("one")
    with pytest.raises(ExperimentMismatch, match="b: saved False != now True"):
        StageRunner(tmp_path / "exp", {"a": 1, "b": True}, defaults=defaults, log=lambda *_: None)


def test_a_start_that_finished_no_stage_claims_nothing(tmp_path):
    StageRunner(tmp_path / "exp", {"a": 1}, log=lambda *_: None)  # e.g. the driver's checks failed after this
    assert not (tmp_path / "exp" / "experiment.json").exists()

    def fails():
        raise RuntimeError("missing assets")

    with pytest.raises(RuntimeError):
        StageRunner(tmp_path / "exp", {"a": 1}, log=lambda *_: None).run("one", fails)
    r = StageRunner(tmp_path / "exp", {"a": 2}, log=lambda *_: None)  # corrected config: accepted
    assert r.run("one", lambda: 2) == 2
    assert json.loads((tmp_path / "exp" / "experiment.json").read_text()) == {"a": 2}


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file/exp lies under .*file, which is a file"):
        StageRunner(tmp_path / "file" / "exp", {"a": 1}, log=lambda *_: None)
