"""Resumable stages of an experiment directory: finished stages are recorded and skipped on a rerun.

    exp = StageRunner(run_dir, config_dict)          # refuses a run_dir made by a different config
    pi0 = exp.run("pi0", lambda: train_pi0(...))      # runs once; a rerun returns the recorded result

Layout: <run_dir>/experiment.json holds the config that made the directory, written when its first stage starts
(a start that fails its checks claims nothing; while no stage has finished, a rerun may change the config);
<run_dir>/stages/<name>.json is written (atomically) when a stage finishes, with its wall time and its JSON
result; <run_dir>/timings.json sums them up.
A stage that was interrupted has no record and is run again; stage functions should themselves resume partial work
(training resumes from its last checkpoint) or overwrite their partial outputs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from rollouts.config import check_writable_dir

EXPERIMENT_FILE = "experiment.json"
STAGES_DIR = "stages"
TIMINGS_FILE = "timings.json"


class ExperimentMismatch(RuntimeError):
    """The run directory was made by another experiment config."""


def _normal(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class StageRunner:
    """Runs named stages once per run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, config: dict, ignore_keys: tuple[str, ...] = (), log=print):
        """`config` must be JSON-serialisable; keys in `ignore_keys` may differ on a rerun (e.g. progress bars)."""
        self.dir = Path(run_dir)
        self.log = log
        check_writable_dir(self.dir)
        path = self.dir / EXPERIMENT_FILE
        now = self.config = _normal(config)
        self._claimed = False
        if path.exists() and (self.dir / STAGES_DIR).is_dir() and any((self.dir / STAGES_DIR).glob("*.json")):
            saved = json.loads(path.read_text())
            diffs = [f"{k}: saved {saved.get(k, '<missing>')!r} != now {now.get(k, '<missing>')!r}"
                     for k in sorted(set(saved) | set(now))
                     if k not in ignore_keys and saved.get(k, "<missing>") != now.get(k, "<missing>")]
            if diffs:
                raise ExperimentMismatch(
                    f"{self.dir} holds an experiment with a different config ({'; '.join(diffs)}). "
                    "Rerun with the same settings to resume it, or choose another --run-dir.")
            self._claimed = True
        elif not path.exists() and self.dir.is_dir() and any(self.dir.iterdir()):
            raise ExperimentMismatch(f"{self.dir} is not empty and has no {EXPERIMENT_FILE}: not an experiment "
                                     "directory of this tool; choose another --run-dir")

    def done(self, name: str) -> bool:
        return (self.dir / STAGES_DIR / f"{name}.json").exists()

    def result(self, name: str) -> Any:
        return json.loads((self.dir / STAGES_DIR / f"{name}.json").read_text())["result"]

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` unless stage `name` already finished; returns its (recorded) JSON result."""
        if "/" in name or not name:
            raise ValueError(f"bad stage name {name!r}")
        record = self.dir / STAGES_DIR / f"{name}.json"
        if record.exists():
            self.log(f"[stage] {name}: done before, skipped")
            return self.result(name)
        if not self._claimed:
            write_json_atomic(self.dir / EXPERIMENT_FILE, self.config)
            self._claimed = True
        self.log(f"[stage] {name} ...")
        t0 = time.perf_counter()
        result = _normal(fn())
        seconds = time.perf_counter() - t0
        write_json_atomic(record, {"stage": name, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "result": result})
        self.log(f"[stage] {name}: {seconds:.1f}s")
        self._write_timings()
        return result

    def timings(self) -> dict[str, float]:
        """{stage: seconds} of the finished stages, in the order they finished."""
        recs = [json.loads(p.read_text()) for p in (self.dir / STAGES_DIR).glob("*.json")]
        recs.sort(key=lambda r: r["finished"])
        return {r["stage"]: r["seconds"] for r in recs}

    def _write_timings(self) -> None:
        write_json_atomic(self.dir / TIMINGS_FILE, self.timings())
