"""eval/stages.py: finished stages are skipped on a rerun; another config's directory is refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_a_growable_list_may_gain_items_only(tmp_path):
    StageRunner(tmp_path / "exp", {"lrs": [1, 2], "n": [1]}, log=lambda *_: None).run("one", lambda: 1)
    logs = []
    r = StageRunner(tmp_path / "exp", {"lrs": [3, 1, 2], "n": [1]}, growable_keys=("lrs",), log=logs.append)
    assert r.done("one") and logs == [f"[stages] lrs grows by [3]: their stages are added to {tmp_path / 'exp'}"]
    r.run("two", lambda: 2)
    assert json.loads((tmp_path / "exp" / "experiment.json").read_text())["lrs"] == [3, 1, 2]
    with pytest.raises(ExperimentMismatch, match="lrs may only gain items"):  # an item dropped
        StageRunner(tmp_path / "exp", {"lrs": [3, 1], "n": [1]}, growable_keys=("lrs",), log=lambda *_: None)
    with pytest.raises(ExperimentMismatch, match=r"n: saved \[1\] != now \[1, 2\]"):  # not growable
        StageRunner(tmp_path / "exp", {"lrs": [3, 1, 2], "n": [1, 2]}, growable_keys=("lrs",), log=lambda *_: None)
    with pytest.raises(ExperimentMismatch) as grown_and_changed:  # lrs grew (fine); n changed: only n is named
        StageRunner(tmp_path / "exp", {"lrs": [3, 1, 2, 4], "n": [2]}, growable_keys=("lrs",), log=lambda *_: None)
    assert "n: saved" in str(grown_and_changed.value) and "may only gain" not in str(grown_and_changed.value)


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


def sleeping_stage(run_dir: str, stage: str, threads: int, log_path: str, pid_file: str) -> None:
    """A stage process that starts a child (as a stage starts env workers), stops it in `finally`, and waits."""
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "120"])
    try:
        Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
        time.sleep(120)
    finally:
        child.kill()


GRAPH_SCRIPT = """
import sys
from pathlib import Path
from eval.stages import ProcessLauncher, Stage, StageRunner, run_graph
from tests.test_eval_stages import sleeping_stage
run_dir, pid_file = Path(sys.argv[1]), sys.argv[2]
runner = StageRunner(run_dir, {})
launcher = ProcessLauncher(sleeping_stage, run_dir, threads=1, task_kwargs={"pid_file": pid_file})
run_graph([Stage("sleep", lambda: None)], runner, launcher, poll_s=0.1)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_a_killed_graph_stops_its_stages_and_their_children(tmp_path):
    """`kill <pid>` of a running experiment (SIGTERM) stops the stage processes it started, and each stage's
    `finally` runs (its children stopped): nothing is left running."""
    pid_file = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", GRAPH_SCRIPT, str(tmp_path / "exp"), str(pid_file)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 120
    while not pid_file.exists() or len(pid_file.read_text().split()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    stage_pid, child_pid = map(int, pid_file.read_text().split())
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)  # the stage holds the pipe: this waits for it as well
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert "[graph] stopping sleep" in out
        deadline = time.monotonic() + 30
        while (_alive(stage_pid) or _alive(child_pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(stage_pid) and not _alive(child_pid)
    finally:  # a failure here leaves nothing behind either
        for pid in (proc.pid, stage_pid, child_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "exp" / "stages" / "sleep.json").exists()
