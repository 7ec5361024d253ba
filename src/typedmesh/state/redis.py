"""The Redis state store: versioned values in Redis, one Lua script per write.

Layout, every name under ``prefix`` (default ``typedmesh:``):

- ``k:<key>``: a hash, the key's head: ``v`` its last version (a delete's
  included), ``t`` the live JSON text (absent after a delete), and
  ``w:<write_id>`` the version each write id made;
- ``h:<key>``: a list, every version's record (JSON), oldest first, so version
  ``n`` is element ``n - 1``;
- ``seq``: the global write counter; ``log``: a sorted set of every write
  (score: its place in the counter, member: ``[key, version]``), and
  ``r:<run_id>`` the same for one run's writes (what ``writes`` reads).

A write is one Lua script, so Redis runs it alone: the write id looked up, the
live version compared, then the head, history and indexes changed, or nothing.
The checks come before any change, so a refused write leaves nothing behind.
``keys`` scans ``k:`` names with ``SCAN``.

A refused connection or a server gone mid-command is a ``StateUnavailable``
naming ``host:port`` (never the password) and why. A write is never retried by
the client library (a lost reply does not make the write run twice); the next
call connects again, so the store recovers by itself once the server is back.

redis-py is imported here only: ``pip install 'typedmesh[redis]'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from ..errors import (
    ConfigurationError,
    MissingExtraError,
    StaleVersion,
    StateError,
    StateUnavailable,
)
from .base import StateRecord, StateStore, Writer

__all__ = ["RedisStateStore"]

CONNECT_TIMEOUT_S = 10.0
SOCKET_TIMEOUT_S = 60.0
SCAN_COUNT = 1000

# KEYS: 1 head hash, 2 history list, 3 seq counter, 4 log zset, 5 run zset (optional)
# ARGV: 1 key as JSON, 2 "1" to write ARGV[3] / "0" to delete, 3 JSON text,
#       4 expected live version ("0": no value), 5 write id ("" for none),
#       6 the record's fields after the version, as JSON object text without braces
_WRITE = """
local head, hist = KEYS[1], KEYS[2]
if ARGV[5] ~= '' then
    local done = redis.call('HGET', head, 'w:' .. ARGV[5])
    if done then return {1, tonumber(done)} end
end
local last = tonumber(redis.call('HGET', head, 'v') or '0')
local text = redis.call('HGET', head, 't')
local live = 0
if text then live = last end
if live ~= tonumber(ARGV[4]) then
    return {2, live, text}
end
local version = last + 1
local v = string.format('%d', version)
local record
if ARGV[2] == '1' then
    redis.call('HSET', head, 'v', v, 't', ARGV[3])
    record = '{"version":' .. v .. ',' .. ARGV[6] .. ',"value":' .. ARGV[3] .. '}'
else
    redis.call('HSET', head, 'v', v)
    redis.call('HDEL', head, 't')
    record = '{"version":' .. v .. ',' .. ARGV[6] .. ',"value":null}'
end
if ARGV[5] ~= '' then redis.call('HSET', head, 'w:' .. ARGV[5], v) end
redis.call('RPUSH', hist, record)
local seq = redis.call('INCR', KEYS[3])
local member = '[' .. ARGV[1] .. ',' .. v .. ']'
redis.call('ZADD', KEYS[4], seq, member)
if KEYS[5] then redis.call('ZADD', KEYS[5], seq, member) end
return {0, version}
"""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingExtraError("redis", "RedisStateStore") from None
    return redis


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStateStore(StateStore):
    """State in Redis (redis-py, sync; thread-safe through its connection pool).

    ``url``: ``redis://[:password@]host:port/db``, ``rediss://...`` or
    ``unix:///path.sock``. ``prefix`` starts every Redis key the store uses, so
    stores with different prefixes share a database without seeing each other.
    ``max_value_bytes`` caps one value's JSON.
    """

    def __init__(
        self, url: str, *, prefix: str = "typedmesh:", max_value_bytes: int | None = None
    ) -> None:
        redis = _import_redis()
        self._errors = redis.exceptions
        self._password = ""
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                decode_responses=False,
            )
        except ValueError as exc:
            raise ConfigurationError(f"not a Redis URL: {exc}") from None
        kwargs = self._client.connection_pool.connection_kwargs
        self._password = str(kwargs.get("password") or "")
        if "path" in kwargs:
            self.address = str(kwargs["path"])
            self.url = f"unix://{self.address}"
        else:
            host = str(kwargs.get("host", "localhost"))
            port = kwargs.get("port", 6379)
            self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            """``host:port`` of the server (or a socket path), as errors name it."""
            scheme = "rediss" if url.startswith("rediss:") else "redis"
            self.url = f"{scheme}://{self.address}/{kwargs.get('db', 0)}"
        if max_value_bytes is not None:
            if max_value_bytes < 1:
                raise ConfigurationError(f"max_value_bytes must be >= 1, got {max_value_bytes}")
            self.max_value_bytes = max_value_bytes
        self.prefix = prefix
        self._script = self._client.register_script(_WRITE)
        self._b = prefix.encode()
        with self._call():
            self._client.ping()

    # -- names ---------------------------------------------------------------------

    def _name(self, kind: str, key: str) -> bytes:
        return self._b + kind.encode() + key.encode()

    # -- errors --------------------------------------------------------------------

    @contextmanager
    def _call(self, key: str | None = None) -> Iterator[None]:
        errors = self._errors
        try:
            yield
        except (errors.ConnectionError, errors.TimeoutError) as exc:
            self._unavailable(exc, key)
        except errors.RedisError as exc:
            raise StateError(
                f"Redis state store at {self.address} refused the operation: {self._reason(exc)}",
                store=self.url,
                key=key,
            ) from exc

    def _reason(self, exc: BaseException) -> str:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason

    def _unavailable(self, exc: BaseException, key: str | None) -> NoReturn:
        raise StateUnavailable(
            f"Redis state store at {self.address} is unavailable: {self._reason(exc)}",
            store=self.url,
            key=key,
        ) from None

    def close(self) -> None:
        self._client.close()

    # -- primitives ------------------------------------------------------------------

    def _read(self, key: str) -> tuple[int, str] | None:
        with self._call(key):
            version, text = self._client.hmget(self._name("k:", key), ["v", "t"])
        if text is None:
            return None
        return int(version), text.decode()

    def _write(
        self, key: str, text: str | None, expected: int | None, writer: Writer, now: float
    ) -> tuple[int, bool]:
        fields = json.dumps(
            {"deleted": text is None, "written_at": now, "writer": writer.to_dict()},
            ensure_ascii=False,
            separators=(",", ":"),
        )[1:-1]
        names = [
            self._name("k:", key),
            self._name("h:", key),
            self._b + b"seq",
            self._b + b"log",
        ]
        if writer.run_id is not None:
            names.append(self._name("r:", writer.run_id))
        args = [
            json.dumps(key, ensure_ascii=False),
            "0" if text is None else "1",
            text or "",
            str(expected or 0),
            writer.write_id or "",
            fields,
        ]
        with self._call(key):
            reply = self._script(keys=names, args=args)
        status = int(reply[0])
        if status == 2:
            live = int(reply[1])
            found = reply[2] if len(reply) > 2 else None
            current = None if found is None else json.loads(found)
            raise StaleVersion(key, expected=expected, actual=live, current=current)
        return int(reply[1]), status == 1

    def _history(self, key: str) -> list[StateRecord]:
        with self._call(key):
            rows = self._client.lrange(self._name("h:", key), 0, -1)
        return [_record(key, row) for row in rows]

    def _writes(self, run_ids: Sequence[str] | None, prefix: str) -> list[StateRecord]:
        indexes = (
            [self._b + b"log"]
            if run_ids is None
            else [self._name("r:", run) for run in dict.fromkeys(run_ids)]
        )
        with self._call():
            pipe = self._client.pipeline(transaction=False)
            for index in indexes:
                pipe.zrange(index, 0, -1, withscores=True)
            listed = pipe.execute()
        refs: list[tuple[float, str, int]] = []
        for members in listed:
            for member, score in members:
                key, version = json.loads(member)
                if key.startswith(prefix):
                    refs.append((score, key, int(version)))
        refs.sort()
        if not refs:
            return []
        with self._call():
            pipe = self._client.pipeline(transaction=False)
            for _, key, version in refs:
                pipe.lindex(self._name("h:", key), version - 1)
            rows = pipe.execute()
        return [_record(key, row) for (_, key, _), row in zip(refs, rows, strict=True) if row]

    def _keys(self, prefix: str) -> list[str]:
        head = self._name("k:", "")
        pattern = _glob_escape(self.prefix + "k:" + prefix).encode() + b"*"
        with self._call():
            names = list(dict.fromkeys(self._client.scan_iter(match=pattern, count=SCAN_COUNT)))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hexists(name, "t")
            live = pipe.execute()
        cut = len(head)
        return sorted(name[cut:].decode() for name, alive in zip(names, live, strict=True) if alive)


def _record(key: str, row: bytes) -> StateRecord:
    data = json.loads(row)
    data["key"] = key
    return StateRecord.from_dict(data)
