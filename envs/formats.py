"""Demonstrations in the field's formats: read LeRobot datasets (v3) and ManiSkill3 trajectory files as episodes
of this project's demo schema (envs/demos.py), and export this project's demos to LeRobot's format.

Every reader has DemoDataset's reading interface (`root`, `len()`, `meta["episodes"][i]["length"]`,
`episode(i, keys)` -> {"images" uint8 [T, H, W, 3], "actions" float32 [T, A], "instruction" str, "states"}), so
SFT (rollouts/sft.py) trains on any of them; `open_demos(path)` picks the reader from what the path holds.

LeRobotDataset v3.0 (facts from huggingface/lerobot's docs and source, no code of theirs):
    meta/info.json                 codebase_version "v3.0", fps, features {name: {dtype, shape, names, info}},
                                   data_path / video_path templates with {chunk_index}, {file_index}, {video_key}
    meta/tasks.parquet             the task strings (pandas index) and their task_index
    meta/episodes/chunk-*/file-*.parquet  one row per episode: episode_index, tasks, length, dataset_from_index,
                                   dataset_to_index, data/chunk_index, data/file_index, and per video key
                                   videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}
    data/chunk-*/file-*.parquet    one row per frame: the action/state features, timestamp, frame_index,
                                   episode_index, index, task_index (several episodes per file)
    videos/<key>/chunk-*/file-*.mp4  the frames of several episodes back to back; an episode is the span
                                   [from_timestamp, to_timestamp) of its file. An "image" feature is a PNG per row.
ManiSkill3 trajectories (as RecordEpisode and the motion-planning tools write them; haosulab/ManiSkill docs):
    <name>.h5                      group traj_<episode_id> per episode: actions [T, A], terminated/truncated/success
                                   [T], obs/ (T + 1 entries: the first observation and one after each action), e.g.
                                   obs/sensor_data/<camera>/rgb uint8 [T + 1, H, W, 3] with obs_mode rgb
    <name>.json                    env_info {env_id, env_kwargs {obs_mode, control_mode, ...}, max_episode_steps},
                                   episodes [{episode_id, episode_seed / reset_kwargs, control_mode, elapsed_steps,
                                   success}]
    Controller actions become Razor's actions through envs/maniskill.py's conversion (pd_ee_delta_pose for Panda,
    Bridge's control mode for WidowX); trajectories recorded without images (obs_mode none, the motion planner's
    default) must be replayed with images first (the error says how).
"""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from envs.demos import META_FILE, DemoDataset

LEROBOT_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
DEFAULT_IMAGE_KEY = "observation.images.image"
DEFAULT_ACTION_KEY = "action"
STATE_KEY = "observation.state"


class DemoFormatError(ValueError):
    """A dataset in a foreign format that cannot be read as demonstrations (the message says what to change)."""


def open_demos(path: str | os.PathLike, *, image_key: str | None = None, action_key: str | None = None,
               instruction: str | None = None):  # fmt: skip
    """The demonstrations at `path`: an envs/demos.py directory, a LeRobot v3 dataset directory (meta/info.json)
    or a ManiSkill3 trajectory file (.h5 with its .json). `image_key`/`action_key` choose the LeRobot features (or
    the ManiSkill camera); `instruction` replaces the datasets' task strings (needed where they have none)."""
    path = Path(path)
    if path.suffix == ".h5":
        return ManiSkillTrajectories(path, camera=image_key, instruction=instruction)
    if (path / "meta" / "info.json").is_file():
        return LeRobotDemos(path, image_key=image_key, action_key=action_key, instruction=instruction)
    if (path / META_FILE).is_file():
        return DemoDataset(path)
    raise DemoFormatError(f"{path} is not a demo dataset: expected an envs/demos.py directory ({META_FILE}), a "
                          "LeRobot v3 dataset directory (meta/info.json) or a ManiSkill3 trajectory file (.h5)")


# ---- LeRobot v3 ---------------------------------------------------------------------------------------------------
class LeRobotDemos:
    """A local LeRobot v3 dataset read as demonstrations (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, image_key: str | None = None, action_key: str | None = None,
                 instruction: str | None = None):  # fmt: skip
        import pyarrow.parquet as pq

        self.root = Path(root)
        self.info = json.loads((self.root / "meta" / "info.json").read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DemoFormatError(f"{self.root} is a LeRobot {version or '(unversioned)'} dataset; this reader takes "
                                  "v3.0: convert it with lerobot's convert_dataset_v21_to_v30 script")
        features = self.info["features"]
        images = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
        default = DEFAULT_IMAGE_KEY if DEFAULT_IMAGE_KEY in images or not images else images[0]
        self.image_key = image_key or default
        self.action_key = action_key or DEFAULT_ACTION_KEY
        for role, key, allowed in (("image", self.image_key, images), ("action", self.action_key, list(features))):
            if key not in allowed:
                raise DemoFormatError(f"{self.root} has no {role} feature {key!r}; its features: {sorted(features)} "
                                      f"(choose one with the {role} key option)")
        self.fps = float(self.info["fps"])
        rows = []
        for path in sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
            rows += pq.read_table(path).to_pylist()
        self._episodes = sorted(rows, key=lambda row: row["episode_index"])
        tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pydict()
        text_column = "task" if "task" in tasks else next(k for k in tasks if k != "task_index")
        self.tasks = dict(zip(tasks["task_index"], tasks[text_column]))
        self.instruction = instruction
        self.meta = {"episodes": [{"length": int(row["length"])} for row in self._episodes]}
        self._tables: dict[Path, Any] = {}

    def __len__(self) -> int:
        return len(self._episodes)

    @property
    def num_steps(self) -> int:
        return sum(e["length"] for e in self.meta["episodes"])

    def _file(self, template: str, row: dict, prefix: str, **keys: str) -> Path:
        return self.root / template.format(chunk_index=row[f"{prefix}/chunk_index"],
                                           file_index=row[f"{prefix}/file_index"], **keys)  # fmt: skip

    def _frames(self, index: int) -> dict[str, list]:
        """The data rows of episode `index` (columns as lists)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        row = self._episodes[index]
        path = self._file(self.info.get("data_path", DATA_PATH), row, "data")
        if path not in self._tables:
            self._tables = {path: pq.read_table(path)}  # one file in memory at a time
        table = self._tables[path]
        rows = table.filter(pc.equal(table["episode_index"], row["episode_index"]))
        return rows.sort_by("frame_index").to_pydict()

    def episode(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Episode `index` in the demo schema's names: images, actions, instruction, states (when present)."""
        keys = keys or ("images", "actions", "instruction", "states")
        frames = self._frames(index)
        out: dict[str, Any] = {}
        if "actions" in keys:
            out["actions"] = np.asarray(frames[self.action_key], dtype=np.float32).reshape(len(frames["index"]), -1)
        if "states" in keys and STATE_KEY in frames:
            out["states"] = np.asarray(frames[STATE_KEY], dtype=np.float32)
        if "instruction" in keys:
            out["instruction"] = np.array(self.instruction or self.tasks[frames["task_index"][0]])
        if "images" in keys:
            out["images"] = self._images(index, frames)
        return out

    def _images(self, index: int, frames: dict[str, list]) -> np.ndarray:
        feature = self.info["features"][self.image_key]
        if feature["dtype"] == "image":  # PNG/JPEG bytes per row
            import io

            from PIL import Image

            return np.stack([np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
                             for cell in frames[self.image_key]])  # fmt: skip
        row = self._episodes[index]
        path = self._file(self.info.get("video_path", VIDEO_PATH), row, f"videos/{self.image_key}",
                          video_key=self.image_key)  # fmt: skip
        start = float(row[f"videos/{self.image_key}/from_timestamp"])
        wanted = [start + t for t in frames["timestamp"]]
        return _decode_at(path, wanted, tolerance=0.5 / self.fps)


def _decode_at(path: Path, times: list[float], tolerance: float) -> np.ndarray:
    """The frames of video `path` shown at `times` (seconds, ascending), uint8 [len(times), H, W, 3]."""
    import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(max(0, int((times[0] - tolerance) / stream.time_base)), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None or frame.time < times[len(out)] - tolerance:
                continue
            while len(out) < len(times) and abs(frame.time - times[len(out)]) <= tolerance:
                out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == len(times) or frame.time > times[len(out)] + tolerance:
                break
    if len(out) != len(times):
        raise DemoFormatError(f"{path} lacks frames at {times[len(out)]:.3f}s (found {len(out)}/{len(times)})")
    return np.stack(out)


def export_lerobot(dataset: DemoDataset, out_dir: str | os.PathLike, *, fps: int = 10,
                   image_key: str = DEFAULT_IMAGE_KEY, codec: str = "libx264", crf: int = 18,
                   robot_type: str | None = None) -> Path:  # fmt: skip
    """Write an envs/demos.py dataset as a LeRobot v3.0 dataset: one data file, one video file (h264, yuv420p,
    `crf` quality; 0 is lossless), the episodes' and tasks' metadata and global statistics. Written into a
    temporary folder and renamed, so an interrupted export leaves nothing half-written."""
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory for the LeRobot dataset")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("meta/episodes/chunk-000", "data/chunk-000", f"videos/{image_key}/chunk-000"):
        (tmp / sub).mkdir(parents=True)
    tasks: dict[str, int] = {}
    columns: dict[str, list] = {k: [] for k in (DEFAULT_ACTION_KEY, STATE_KEY, "next.reward", "next.success",
                                                "timestamp", "frame_index", "episode_index", "index", "task_index")}
    episodes: list[dict[str, Any]] = []
    video_path = tmp / VIDEO_PATH.format(video_key=image_key, chunk_index=0, file_index=0)
    shape = None
    with av.open(str(video_path), "w") as container:
        stream = None
        for index in range(len(dataset)):
            ep = dataset.episode(index)
            length, instruction = len(ep["actions"]), str(ep["instruction"])
            task_index = tasks.setdefault(instruction, len(tasks))
            start = len(columns["index"])
            if stream is None:
                shape = ep["images"].shape[1:]
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = shape[0], shape[1]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "g": "2"}  # short GOPs: cheap seeks to an episode's start
            for image in ep["images"]:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                    container.mux(packet)
            columns[DEFAULT_ACTION_KEY] += ep["actions"].astype(np.float32).tolist()
            columns[STATE_KEY] += ep["states"].astype(np.float32).tolist()
            columns["next.reward"] += ep["rewards"].astype(np.float32).tolist()
            columns["next.success"] += ep["successes"].astype(bool).tolist()
            columns["timestamp"] += (np.arange(length, dtype=np.float32) / fps).tolist()
            columns["frame_index"] += list(range(length))
            columns["episode_index"] += [index] * length
            columns["index"] += list(range(start, start + length))
            columns["task_index"] += [task_index] * length
            episodes.append({
                "episode_index": index, "tasks": [instruction], "length": length,
                "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
                "dataset_to_index": start + length, f"videos/{image_key}/chunk_index": 0,
                f"videos/{image_key}/file_index": 0, f"videos/{image_key}/from_timestamp": start / fps,
                f"videos/{image_key}/to_timestamp": (start + length) / fps,
                "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
            })  # fmt: skip
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    action_dim, state_dim = len(columns[DEFAULT_ACTION_KEY][0]), len(columns[STATE_KEY][0])
    vector = lambda n: pa.list_(pa.float32(), n)  # noqa: E731  (fixed-size lists, as LeRobot's Array features)
    data = pa.table({
        DEFAULT_ACTION_KEY: pa.array(columns[DEFAULT_ACTION_KEY], vector(action_dim)),
        STATE_KEY: pa.array(columns[STATE_KEY], vector(state_dim)),
        "next.reward": pa.array(columns["next.reward"], pa.float32()),
        "next.success": pa.array(columns["next.success"], pa.bool_()),
        "timestamp": pa.array(columns["timestamp"], pa.float32()),
        **{k: pa.array(columns[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
    })  # fmt: skip
    pq.write_table(data, tmp / DATA_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(pa.Table.from_pylist(episodes), tmp / EPISODES_PATH)
    _write_tasks(tasks, tmp / "meta" / "tasks.parquet")
    height, width = (int(shape[0]), int(shape[1])) if shape is not None else (0, 0)
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": LEROBOT_VERSION, "robot_type": robot_type or dataset.meta.get("robot"),
        "total_episodes": len(episodes), "total_frames": len(columns["index"]), "total_tasks": len(tasks),
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
        "features": {
            image_key: {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                        "info": {"video.height": height, "video.width": width, "video.codec": "h264",
                                 "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                 "video.channels": 3, "has_audio": False}},
            DEFAULT_ACTION_KEY: {"dtype": "float32", "shape": [action_dim],
                                 "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"][:action_dim]},
            STATE_KEY: {"dtype": "float32", "shape": [state_dim], "names": None},
            "next.reward": {"dtype": "float32", **scalar}, "next.success": {"dtype": "bool", **scalar},
            "timestamp": {"dtype": "float32", **scalar},
            **{k: {"dtype": "int64", **scalar} for k in ("frame_index", "episode_index", "index", "task_index")},
        },
        "razor": {"source": str(dataset.root), "task_id": dataset.meta.get("task_id")},
    }  # fmt: skip
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    stats = {k: _stats(np.asarray(columns[k], np.float64)) for k in (DEFAULT_ACTION_KEY, STATE_KEY, "next.reward")}
    (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    os.replace(tmp, out)
    return out


def _write_tasks(tasks: dict[str, int], path: Path) -> None:
    """meta/tasks.parquet as LeRobot writes it with pandas: the task string is the (named) index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": list(tasks)})
    columns = [{"name": name, "field_name": name, "pandas_type": kind, "numpy_type": numpy_type, "metadata": None}
               for name, kind, numpy_type in (("task_index", "int64", "int64"), ("task", "unicode", "object"))]
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": columns,
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), path)


def _stats(values: np.ndarray) -> dict[str, Any]:
    values = values.reshape(len(values), -1)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist(), "count": [len(values)]}  # fmt: skip


# ---- ManiSkill3 trajectories ------------------------------------------------------------------------------------
class ManiSkillTrajectories:
    """A ManiSkill3 trajectory file (.h5 + .json) read as demonstrations (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, camera: str | None = None, instruction: str | None = None):
        import h5py

        self.root = Path(path)
        json_path = self.root.with_suffix(".json")
        if not self.root.is_file() or not json_path.is_file():
            raise DemoFormatError(f"a ManiSkill trajectory needs {self.root} and {json_path} (RecordEpisode writes "
                                  "both)")
        self.info = json.loads(json_path.read_text())
        env_info = self.info["env_info"]
        self.env_id = env_info["env_id"]
        self.control_mode = env_info.get("env_kwargs", {}).get("control_mode")
        self._h5 = h5py.File(self.root, "r")
        self._episodes = self.info["episodes"]
        first = self._group(0)
        cameras = sorted(first["obs/sensor_data"]) if "obs/sensor_data" in first else []
        cameras = [c for c in cameras if "rgb" in first[f"obs/sensor_data/{c}"]]
        if not cameras:
            obs_mode = env_info.get("env_kwargs", {}).get("obs_mode", "none")
            raise DemoFormatError(
                f"{self.root} has no camera images (recorded with obs_mode {obs_mode!r}): replay it with images, e.g. "
                f"python -m mani_skill.trajectory.replay_trajectory --traj-path {self.root} --obs-mode rgb "
                "--target-control-mode pd_ee_delta_pose --save-traj"
            )
        self.camera = camera or cameras[0]
        if self.camera not in cameras:
            raise DemoFormatError(f"{self.root} has no rgb images of camera {self.camera!r}; cameras: {cameras}")
        self.instruction = instruction or _registered_instruction(self.env_id)
        if self.instruction is None:
            raise DemoFormatError(f"{self.env_id} trajectories carry no language: give the task's instruction")
        self.meta = {"episodes": [{"length": int(self._group(i)["actions"].shape[0])} for i in range(len(self))]}

    def _group(self, index: int):
        return self._h5[f"traj_{self._episodes[index]['episode_id']}"]

    def __len__(self) -> int:
        return len(self._episodes)

    @property
    def num_steps(self) -> int:
        return sum(e["length"] for e in self.meta["episodes"])

    def episode(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Episode `index` in the demo schema's names; the observation after the last action is dropped."""
        from envs.maniskill import controller_to_action

        keys = keys or ("images", "actions", "instruction", "successes")
        group = self._group(index)
        length = group["actions"].shape[0]
        mode = self._episodes[index].get("control_mode", self.control_mode)
        out: dict[str, Any] = {}
        if "actions" in keys:
            try:
                out["actions"] = controller_to_action(group["actions"][:], mode)
            except ValueError as error:
                raise DemoFormatError(f"{self.root}: {error}") from None
        if "images" in keys:
            out["images"] = np.asarray(group[f"obs/sensor_data/{self.camera}/rgb"][:length], dtype=np.uint8)
        if "instruction" in keys:
            out["instruction"] = np.array(self.instruction)
        if "successes" in keys and "success" in group:
            out["successes"] = np.asarray(group["success"][:], dtype=bool)
        return out


def _registered_instruction(env_id: str) -> str | None:
    from envs.registry import list_tasks

    return next((spec.instruction for spec in list_tasks() if spec.backend_env_id == env_id), None)
