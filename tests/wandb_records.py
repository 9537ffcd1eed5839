"""Read back what an offline W&B run wrote: the records of its run-<id>.wandb transaction log.

The file (as wandb-core writes it) is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
32 KiB blocks of chunks, each with a 7-byte header (CRC32, length uint16, type uint8: 1 full, 2 first, 3 middle,
4 last; a block's tail shorter than 7 bytes is padding), the chunks of one record joined in order. Each record is
a wandb_internal_pb2.Record protobuf.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert not data or data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, chunks, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunks.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def offline_run(root: Path, timeout: float = 60.0) -> dict:
    """The one offline run under root/wandb: {"run": RunRecord, "config": {key: value}, "history": [{key: value}]}.
    wandb-core writes the log in its own process, after run.finish() returns: wait for the run's exit record."""
    (log,) = sorted(Path(root, "wandb").glob("offline-run-*/run-*.wandb"))
    deadline = time.time() + timeout
    records = read_records(log)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.time() < deadline:
        time.sleep(0.5)
        records = read_records(log)
    out = {"run": None, "config": {}, "history": []}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":  # a media value (table, video) comes as one item per field: nested_key (name, field)
            row: dict = {}
            for item in record.history.item:
                name, *field = [item.key] if item.key else list(item.nested_key)
                value = json.loads(item.value_json)
                if field:
                    row.setdefault(name, {})["/".join(field)] = value
                else:
                    row[name] = value
            out["history"].append(row)
    return out
