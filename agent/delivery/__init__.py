"""Reliable delivery building blocks shared by exporters.

* :class:`DiskQueue`: durable FIFO of opaque payloads in append-only segment files with a
  checkpoint, an fsync policy and a disk quota that drops the oldest data.
* :class:`Backoff` and :func:`parse_retry_after`: the retry policy.
* :class:`DeadLetterFile`: where permanently rejected data goes.

An exporter appends encoded records in ``write`` (that append is the acknowledgement), and a
background thread reads batches, sends them, and commits only after the receiver confirmed.
"""

from wattspan.agent.delivery.deadletter import DeadLetterFile
from wattspan.agent.delivery.queue import (
    DiskQueue,
    FsyncPolicy,
    QueueBatch,
    QueueClosedError,
    QueueLockedError,
)
from wattspan.agent.delivery.retry import MAX_RETRY_AFTER, Backoff, parse_retry_after

__all__ = [
    "MAX_RETRY_AFTER",
    "Backoff",
    "DeadLetterFile",
    "DiskQueue",
    "FsyncPolicy",
    "QueueBatch",
    "QueueClosedError",
    "QueueLockedError",
    "parse_retry_after",
]
