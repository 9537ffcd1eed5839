"""Resumable stages of an experiment directory: finished stages are recorded and skipped on a rerun.

    exp = StageRunner(run_dir, config_dict)          # refuses a run_dir made by a different config
    pi0 = exp.run("pi0", lambda: train_pi0(...))      # runs once; a rerun returns the recorded result

A whole experiment is a graph of `Stage`s (what each waits for: finished stages, files another stage writes);
`run_graph` runs it in this process one stage at a time, or up to N stages at once in worker processes
(`ProcessLauncher`), or as Ray tasks with CPU/GPU needs (`RayLauncher`). Workers record their stages exactly as the
inline run does, so resuming works the same in all three modes; a failed stage keeps its log (<run_dir>/logs/)
and only the stages that depend on it are skipped. A graph stopped by Ctrl-C or SIGTERM stops the stages it
started (whose own cleanup runs: a training stage closes its env workers) before it exits.

Layout: <run_dir>/experiment.json holds the config that made the directory, written when its first stage starts
(a start that fails its checks claims nothing; while no stage has finished, a rerun may change the config; a list
named in `growable_keys`, e.g. a sweep's learning rates, may gain items on a rerun, which adds their stages);
<run_dir>/stages/<name>.json is written (atomically) when a stage finishes, with its wall time and its JSON
result; <run_dir>/timings.json sums them up.
A stage that was interrupted has no record and is run again; stage functions should themselves resume partial work
(training resumes from its last checkpoint) or overwrite their partial outputs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from rollouts.config import check_writable_dir

EXPERIMENT_FILE = "experiment.json"
STAGES_DIR = "stages"
TIMINGS_FILE = "timings.json"
LOGS_DIR = "logs"


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

    def __init__(self, run_dir: str | Path, config: dict, ignore_keys: tuple[str, ...] = (), log=print,
                 defaults: dict | None = None, growable_keys: tuple[str, ...] = ()):
        """`config` must be JSON-serialisable; keys in `ignore_keys` may differ on a rerun (e.g. progress bars).
        `defaults`: a key the saved config lacks (a setting added after the directory was made) counts as saved at
        its default, which is what the run used. `growable_keys`: lists that may gain items on a rerun (every saved
        item kept: what finished stays valid, the new items' stages run)."""
        self.dir = Path(run_dir)
        self.log = log
        check_writable_dir(self.dir)
        path = self.dir / EXPERIMENT_FILE
        now = self.config = _normal(config)
        self._claimed = False
        if path.exists() and (self.dir / STAGES_DIR).is_dir() and any((self.dir / STAGES_DIR).glob("*.json")):
            saved = {**_normal({k: v for k, v in (defaults or {}).items() if k in now}), **json.loads(path.read_text())}
            grown = {k: [x for x in now[k] if x not in saved[k]] for k in growable_keys
                     if isinstance(saved.get(k), list) and isinstance(now.get(k), list)
                     and all(x in now[k] for x in saved[k]) and len(now[k]) > len(saved[k])}
            diffs = [f"{k}: saved {saved.get(k, '<missing>')!r} != now {now.get(k, '<missing>')!r}"
                     for k in sorted(set(saved) | set(now)) if k not in ignore_keys and k not in grown
                     and saved.get(k, "<missing>") != now.get(k, "<missing>")]
            if diffs:
                shrunk = [k for k in growable_keys if isinstance(saved.get(k), list)
                          and any(x not in (now.get(k) or []) for x in saved[k])]
                raise ExperimentMismatch(
                    f"{self.dir} holds an experiment with a different config ({'; '.join(diffs)}). "
                    + (f"{', '.join(shrunk)} may only gain items (keep every saved one). " if shrunk else "")
                    + "Rerun with the same settings to resume it, or choose another --run-dir.")
            for k, added in grown.items():
                log(f"[stages] {k} grows by {added}: their stages are added to {self.dir}")
            self._claimed = saved == now  # else `claim` records the changed settings for stage processes
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
        self.claim()
        self.log(f"[stage] {name} ...")
        t0 = time.perf_counter()
        result = _normal(fn())
        seconds = time.perf_counter() - t0
        write_json_atomic(record, {"stage": name, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "result": result})
        self.log(f"[stage] {name}: {seconds:.1f}s")
        self._write_timings()
        return result

    def claim(self) -> None:
        """Write the directory's config (once a stage is about to start; stages in other processes read it)."""
        if not self._claimed:
            write_json_atomic(self.dir / EXPERIMENT_FILE, self.config)
            self._claimed = True

    def timings(self) -> dict[str, float]:
        """{stage: seconds} of the finished stages, in the order they finished."""
        recs = [json.loads(p.read_text()) for p in (self.dir / STAGES_DIR).glob("*.json")]
        recs.sort(key=lambda r: r["finished"])
        return {r["stage"]: r["seconds"] for r in recs}

    def _write_timings(self) -> None:
        write_json_atomic(self.dir / TIMINGS_FILE, self.timings())


# ------------------------------------------------------------------------------------------------- stage graph


class StageFailed(RuntimeError):
    """One or more stages of a graph failed (each with its log); the stages that did not depend on them finished."""


@dataclass
class Stage:
    """One node of a stage graph."""

    name: str
    """The stage's record name (<run_dir>/stages/<name>.json)."""
    fn: Callable[[], Any]
    """Runs the stage in this process (it records itself through StageRunner.run)."""
    after: tuple[str, ...] = ()
    """Stages that must have finished first."""
    needs: tuple[Path, ...] = ()
    """Files that must exist first: outputs another stage writes while it runs (a training run's checkpoint)."""
    producer: str | None = None
    """The stage that writes `needs`; if it ends without having written them, this stage fails."""
    cpus: float = 1.0
    """CPUs the stage asks for (Ray's num_cpus)."""
    gpus: float = 0.0
    """GPUs the stage asks for (Ray's num_gpus)."""


class Launcher(Protocol):
    """Starts a stage elsewhere and tells when it has ended."""

    def start(self, stage: Stage, log_path: Path) -> Any: ...

    def poll(self, handle: Any) -> bool | None:
        """None while running; True if it exited cleanly, False if it failed."""

    def stop(self, handle: Any) -> None: ...


@contextmanager
def exit_on_sigterm():
    """SIGTERM (`kill`, a scheduler's stop) exits through SystemExit(143) instead of ending the process on the spot,
    so that `finally` blocks run: the graph stops the stages it started, a stage closes its env workers."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_exit(fn: Callable, args: tuple, kwargs: dict) -> None:
    """A stage process's body: a failure exits with status 1; `fn` has already written its traceback to the log."""
    try:
        with exit_on_sigterm():
            fn(*args, **kwargs)
    except Exception:
        sys.exit(1)


class ProcessLauncher:
    """Each stage in its own process, forked from a server that imported the heavy modules once (`preload`), so a
    stage starts in a fraction of a second instead of re-importing torch; `task_fn(run_dir, stage, threads,
    log_path, **task_kwargs)` runs there with `threads` torch threads, its output going to the stage's log."""

    def __init__(self, task_fn: Callable, run_dir: Path, threads: int, task_kwargs: dict | None = None,
                 preload: tuple[str, ...] = ()):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(preload))
        self.task_fn, self.run_dir, self.threads, self.task_kwargs = task_fn, run_dir, threads, task_kwargs or {}

    def start(self, stage: Stage, log_path: Path):
        proc = self.ctx.Process(target=_quiet_exit, name=f"stage-{stage.name}", args=(
            self.task_fn, (str(self.run_dir), stage.name, self.threads, str(log_path)), self.task_kwargs))
        proc.start()
        return proc

    def poll(self, proc) -> bool | None:
        return None if proc.exitcode is None else proc.exitcode == 0

    def stop(self, proc) -> None:
        if proc.exitcode is None:
            proc.terminate()
            proc.join(30)
            if proc.exitcode is None:
                proc.kill()


class RayLauncher:
    """Each stage as a Ray task with the stage's CPU/GPU needs. `task_fn(run_dir, stage, threads, log_path,
    **task_kwargs)` runs on a Ray worker: on a cluster, the run directory must be on storage every node sees."""

    def __init__(self, task_fn: Callable, run_dir: Path, address: str | None = None, task_kwargs: dict | None = None):
        try:
            import ray
        except ImportError as e:
            raise ImportError("--ray needs Ray: pip install 'razor[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            if address in (None, "", "local"):  # a local instance on this machine's cores
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        self.task = ray.remote(task_fn)
        self.run_dir, self.task_kwargs = run_dir, task_kwargs or {}

    def start(self, stage: Stage, log_path: Path):
        threads = max(1, int(stage.cpus))
        return self.task.options(num_cpus=stage.cpus, num_gpus=stage.gpus, max_retries=0).remote(
            str(self.run_dir), stage.name, threads, str(log_path), **self.task_kwargs)

    def poll(self, handle) -> bool | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            self.ray.get(handle)
            return True
        except Exception:  # the task's own traceback is in its log
            return False

    def stop(self, handle) -> None:
        self.ray.cancel(handle, force=True)


def _log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a stage's log (tqdm's carriage returns read as line breaks)."""
    if not path.exists():
        return "(no log)"
    text = path.read_bytes()[-8000:].decode(errors="replace").replace("\r", "\n")
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


def _progress_line(path: Path) -> str:
    """The last line a running stage printed (a tqdm bar's latest state, or its last log line)."""
    return _log_tail(path, lines=1)[:160] if path.exists() else ""


def run_graph(stages: list[Stage], runner: StageRunner, launcher: Launcher | None = None, workers: int = 1,
              log: Callable[[str], None] = print, poll_s: float = 0.5, progress_every_s: float = 30.0) -> None:
    """Run every stage of `stages` not yet recorded in `runner`'s directory.

    Without a launcher the stages run here, in list order (which must respect `after`/`needs`), and the first
    failure raises. With one, up to `workers` stages run at once, started in list order as soon as what they wait
    for is there; a failed stage is reported with the end of its log, the stages depending on it are skipped, the
    others go on, and StageFailed is raised at the end. Every `progress_every_s` the running stages' latest
    progress lines are printed.
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError("stage names must be unique")
    unknown = {d for s in stages for d in (*s.after, *([s.producer] if s.producer else [])) if d not in names}
    if unknown:
        raise ValueError(f"stages wait for unknown stages {sorted(unknown)}")
    if launcher is None:
        for stage in stages:
            stage.fn()
        return
    runner.claim()
    logs = runner.dir / LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    done = {s.name for s in stages if runner.done(s.name)}
    failed: dict[str, str] = {}
    running: dict[str, tuple[Any, float]] = {}
    pending = [s for s in stages if s.name not in done]
    log(f"[graph] {len(stages)} stages, {len(done)} done before, {len(pending)} to run, up to {workers} at once")
    t_start = last_progress = time.perf_counter()

    def blocked_by(stage: Stage) -> str | None:
        for dep in (*stage.after, *([stage.producer] if stage.producer else [])):
            if dep in failed:
                return dep
        return None

    with exit_on_sigterm():  # a killed run stops its stages (the finally below)
        try:
            while pending or running:
                for name, (handle, t0) in list(running.items()):
                    ok = launcher.poll(handle)
                    if ok is None:
                        continue
                    del running[name]
                    if ok and runner.done(name):
                        done.add(name)
                        log(f"[graph] {name}: done in {time.perf_counter() - t0:.0f}s ({len(done)}/{len(stages)})")
                    else:
                        path = logs / f"{name}.log"
                        failed[name] = "failed" if ok is False else "ended without recording its result"
                        log(f"[graph] {name}: {failed[name]}; log {path}, its end:\n{_log_tail(path)}")
                for stage in list(pending):
                    dep = blocked_by(stage)
                    producer_ended = stage.producer in done or stage.producer in failed
                    if dep is None and stage.needs and producer_ended and not all(p.exists() for p in stage.needs):
                        dep = stage.producer
                        failed[stage.name] = f"{stage.producer} ended without writing {[str(p) for p in stage.needs]}"
                        log(f"[graph] {stage.name}: {failed[stage.name]}")
                        pending.remove(stage)
                        continue
                    if dep is not None:
                        failed.setdefault(stage.name, f"skipped: {dep} failed")
                        log(f"[graph] {stage.name}: skipped ({dep} failed)")
                        pending.remove(stage)
                        continue
                    if len(running) >= workers:
                        break
                    if all(d in done for d in stage.after) and all(p.exists() for p in stage.needs):
                        path = logs / f"{stage.name}.log"
                        log(f"[graph] {stage.name}: started (log {path})")
                        running[stage.name] = (launcher.start(stage, path), time.perf_counter())
                        pending.remove(stage)
                if pending and not running:
                    raise RuntimeError(f"stage graph cannot proceed: {[s.name for s in pending]} wait for stages or "
                                       "files that never come")
                now = time.perf_counter()
                if running and now - last_progress >= progress_every_s:
                    last_progress = now
                    log(f"[graph] {len(done)}/{len(stages)} done, {len(running)} running, "
                        f"{len(pending)} waiting, {(now - t_start) / 60:.1f} min")
                    for name in running:
                        log(f"  {name}: {_progress_line(logs / f'{name}.log')}")
                time.sleep(poll_s)
        finally:
            if running:
                log(f"[graph] stopping {', '.join(running)}")
            for handle, _ in running.values():
                launcher.stop(handle)
            runner._write_timings()
    if failed:
        lines = "\n".join(f"  {n}: {why}" + ("" if why.startswith("skipped") else f" (log {logs / (n + '.log')})")
                          for n, why in failed.items())
        raise StageFailed(f"{len(failed)} stage(s) did not finish:\n{lines}\nFix the cause and rerun the same "
                          "command: finished stages are kept.")
