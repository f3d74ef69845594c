"""Signed records from a grading child to the grader, one JSON object per line.

The grader gives every child a fresh random key on its standard input; the child's plugin reads it before
any student code runs. A record travels as the line `GRADER <mac> <json>` with
mac = HMAC-SHA256(key, json). The grader drops every line whose mac does not match, so student code that
writes into the channel (or prints lines that look like records) cannot add or change a result without
first digging the key out of the plugin's memory.
"""
import hashlib
import hmac
import json
import secrets

PREFIX = b"GRADER "
MAX_LINE = 64 * 1024  # a longer line is not a record (the plugin caps what it sends well below this)


def new_key() -> bytes:
    return secrets.token_hex(32).encode()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).hexdigest().encode()


def encode(key: bytes, record: dict) -> bytes:
    """One record as bytes, with a newline before it so stray bytes in the pipe cannot glue onto it."""
    payload = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return b"\n" + PREFIX + _mac(key, payload) + b" " + payload + b"\n"


def decode(key: bytes, line: bytes) -> dict | None:
    """The record in `line`, or None when the line is not a record signed with `key`."""
    if not line.startswith(PREFIX):
        return None
    mac, _, payload = line[len(PREFIX):].partition(b" ")
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class LineReader:
    """Splits a byte stream into lines; drops lines longer than MAX_LINE instead of buffering them."""

    def __init__(self):
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if self._skipping:
                self._skipping = False
            else:
                lines.append(line)
        if len(self._buffer) > MAX_LINE:
            self._buffer, self._skipping = b"", True
        return lines
