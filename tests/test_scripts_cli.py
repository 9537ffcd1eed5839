"""scripts/cli.py: a user's mistake prints its message alone with exit status 2 from every entry point; a bug keeps
its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import razor, run_eval, train_ppo, train_sft
from scripts.cli import entry_point

ROOT = Path(__file__).resolve().parents[1]


def test_users_errors_print_the_message_alone_with_status_2(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"update": 1}\n')  # a run that really started
    cases = [
        (train_ppo.main, ["tiny", "--run-dir", str(tmp_path / "run")], f"{tmp_path / 'run'} already holds a run"),
        (train_sft.main, ["tiny", "--dataset", str(tmp_path / "none"), "--generate-demos", "0"], "dataset '"),
        (run_eval.main, run_eval.Args(model=str(tmp_path / "none"), out=str(tmp_path / "eval")), "'/"),
        (razor.main, ["quick", "--new-task", "toy/reach-sid", "--run-dir", str(tmp_path / "exp")], "unknown task id"),
    ]  # fmt: skip
    for main, args, start in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {start}"), args
    assert not (tmp_path / "exp").exists()


def test_the_console_command_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "scripts.razor", "openvla-7b", "--run-dir", str(tmp_path / "exp")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: model 'openvla-7b': give a vla preset") and "Traceback" not in result.stderr
    assert not (tmp_path / "exp").exists()  # and nothing was claimed


def test_a_bug_keeps_its_traceback():
    @entry_point
    def main():
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        main()
