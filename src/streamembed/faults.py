"""Named crash points for the kill tests: the exactly-once table proven with SIGKILL.

Each step that writes an output calls :func:`crash_point` with its name. Normally that is one
environment lookup and nothing else. With ``STREAMEMBED_KILL_AT=name:n`` (and
``STREAMEMBED_KILL_COUNT`` naming a counter file shared by every process of the run) the
n-th time any process (driver, worker or actor) reaches ``name``, the whole process group is
killed with SIGKILL, as a pre-empted node or an OOM-killed pod would be: no handler, no
flush, no cleanup (``STREAMEMBED_KILL_SCOPE=process``: only the process that got there, e.g.
one worker). tests/test_kill.py restarts the run and compares its outputs with an
uninterrupted one. The names are listed in :data:`POINTS` and in docs/operations.md.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "STREAMEMBED_KILL_AT"
KILL_COUNT = "STREAMEMBED_KILL_COUNT"
KILL_SCOPE = "STREAMEMBED_KILL_SCOPE"  # "group" (default): the whole run; "process": one worker

POINTS = (
    "read",  # a worker has started reading a block
    "encode",  # a block is encoded, not yet written to the store
    "store.write_block",  # a block's embeddings are written, its other variables not
    "store.reserved",  # a time step is reserved (pending), the arrays not yet grown
    "store.commit",  # the time is written, the id (the commit point) not
    "pipeline.committed",  # the store holds the acquisition, the ledger does not
    "pipeline.embedded",  # the ledger says embedded, the apply is not yet sent
    "sink.written",  # the anomaly file's temporary is written, not yet renamed
    "actor.sunk",  # the anomaly file is in place, the state not checkpointed
    "state.written",  # the checkpoint's temporary is written, not yet renamed
    "actor.checkpointed",  # the state is checkpointed, the ledger does not say applied
    "store.compaction_copied",  # a tile's out-of-place rows are copied to scratch rows
    "store.compaction_placed",  # they are in place, the time and id chunks not yet written
    "store.compaction_cut",  # the tail is cut, the plan not yet cleared
    "actor.rewound",  # a late look and the looks after it are replayed, the ledger not told
)


def crash_point(name: str) -> None:
    """SIGKILL the process group if the environment asks for it here and now."""
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    counter = os.environ.get(KILL_COUNT)
    if counter is None:
        raise RuntimeError(f"{KILL_AT} is set but {KILL_COUNT} (the shared counter file) is not")
    # One byte per arrival, appended atomically: the offset after this process's byte is its
    # arrival number over every process of the run.
    fd = os.open(counter, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b".")
        arrivals = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    if arrivals == int(nth or 1):
        if os.environ.get(KILL_SCOPE) == "process":
            os.kill(os.getpid(), signal.SIGKILL)
        os.killpg(os.getpgid(0), signal.SIGKILL)
