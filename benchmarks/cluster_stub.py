"""The stub workers of `benchmarks/cluster.py coordinator`: a Dask task that uploads nothing.

Its own module, importable by the worker processes (they find it on the path the script's
process hands them): Dask pickles a task whose function lives in `__main__` with cloudpickle,
task and batch together, which a real run (`bulkdrive.cluster_worker.upload_batch`) never
pays."""

from __future__ import annotations

import time
from typing import Any


def stub_batch(run_id: str, batch_id: int, batch: Any) -> Any:
    """Every file "uploaded" at once, each with its own report (as real workers send)."""
    from distributed import get_worker

    from bulkdrive.cluster_wire import BatchReport, FileReport

    now = time.time()
    return BatchReport(
        worker=get_worker().address,
        files=tuple(
            FileReport(ok=True, file_guid=f"{batch_id:016x}{index:016x}")
            for index in range(len(batch.files))
        ),
        started=now,
        ended=now,
        accepted=sum(f.size for f in batch.files),
        rerun=False,
    )
