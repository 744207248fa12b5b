"""Waiting for a replica to hold this process's writes before a worker acts on them."""

from __future__ import annotations

import time

from redis import Redis
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from csm_router.state.keys import key

# How long a worker waits for a replica to confirm a write it is about to act on, and how
# often it asks Redis whether there are replicas at all.
REPLICA_WAIT_MS = 2000
REPLICAS_RECHECK_SECONDS = 10.0


class ReplicaWait:
    """What this process knows of Redis's replicas, and the wait for them."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._replicas = 0
        self._replicas_checked = float("-inf")

    def caught_up(self) -> bool:
        """Whether a replica has every write this process has finished so far, or Redis
        has no replica to wait for (then True at once): what a worker checks before and
        after a send.

        Replication is asynchronous: a master that dies right after answering takes its
        last writes with it, and Sentinel promotes a replica without them. A worker that
        then sent on a lost decision, or whose record of a sent mail was lost, would make
        the mail go out twice. WAIT only counts the asking connection's own writes, so a
        small write goes first on the same connection; replication keeps order, so it
        covers every earlier write of every connection.
        """
        now = time.monotonic()
        if now >= self._replicas_checked + REPLICAS_RECHECK_SECONDS:
            self._count_replicas(now)
        if not self._replicas:
            return True
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key("replicated"), 1, px=60_000)
                pipe.wait(1, REPLICA_WAIT_MS)
                acked = int(pipe.execute()[-1])
        except (ConnectionError, TimeoutError, RedisError):
            return False
        if acked:
            return True
        # A failover may have left a master without replicas: then there is none to wait for.
        self._count_replicas(now)
        return not self._replicas

    def _count_replicas(self, now: float) -> None:
        try:
            info = self.redis.info("replication")
        except RedisError:
            return
        self._replicas = int(info.get("connected_slaves") or 0)
        self._replicas_checked = now
