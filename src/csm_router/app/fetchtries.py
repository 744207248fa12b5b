"""Failed fetches per message, kept in Redis: a message whose body the server cannot hand
over (the connection drops or times out, or it says NO, each time) is quarantined at its
third failure instead of holding every later message back, across restarts too."""

from __future__ import annotations

import redis

from csm_router.state.keys import key, text_hash

TTL = 86400  # a day after a folder's last failed fetch, its counts are forgotten


class FetchTries:
    """One hash per folder and UIDVALIDITY: `<uid>` -> failures, `<uid>:why` -> the last."""

    def __init__(self, client: redis.Redis, mailbox: str) -> None:
        self.redis = client
        self.mailbox = mailbox

    def _key(self, validity: int) -> str:
        return key("fetchtries", self.mailbox, validity)

    def failing(self, validity: int) -> dict[int, tuple[int, str]]:
        """UID -> (failures, the last one's error), for the messages failing now."""
        found = text_hash(self.redis.hgetall(self._key(validity)))
        return {int(uid): (int(n), found.get(f"{uid}:why", ""))
                for uid, n in found.items() if uid.isdigit()}

    def failed(self, validity: int, uid: int, why: str) -> int:
        """Count one more failure of `uid`; answers how many there were."""
        with self.redis.pipeline() as pipe:  # one transaction: never a count without TTL
            pipe.hincrby(self._key(validity), str(uid), 1)
            pipe.hset(self._key(validity), f"{uid}:why", why[:500])
            pipe.expire(self._key(validity), TTL)
            tries, _, _ = pipe.execute()
        return int(tries)

    def forget(self, validity: int, uid: int) -> None:
        self.redis.hdel(self._key(validity), str(uid), f"{uid}:why")
