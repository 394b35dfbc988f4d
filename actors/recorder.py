"""RolloutRecorder: appends every scored batch to RUN_DIR/rollouts/*.parquet, on the driver's node, off the
hot path."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray


@ray.remote(num_cpus=0)
class RolloutRecorder:
    def __init__(self, run_dir: str):
        self.dir = Path(run_dir) / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, part: int, batch: pa.RecordBatch) -> int:
        pq.write_table(pa.Table.from_batches([batch]), self.dir / f"step_{step:06d}_{part:03d}.parquet")
        return batch.num_rows

    def rollback(self, step: int) -> int:
        """In-run learner recovery: drop the files of steps after `step` (they are re-trained and written
        again), so no sample appears twice. Returns how many files went."""
        gone = [p for p in self.dir.glob("step_*.parquet") if int(p.name.split("_")[1]) > step]
        for path in gone:
            path.unlink()
        return len(gone)

    def flush(self) -> bool:
        """Returns once every write queued before it has finished (actor calls run in order)."""
        return True
