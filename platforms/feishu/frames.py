"""Feishu/Lark long-connection frames: the protobuf message `pbbp2.Frame` the event WebSocket
carries, encoded and decoded here (a few fields, so no generated code and no protobuf runtime).

    Frame  { 1 SeqID uint64, 2 LogID uint64, 3 service int32, 4 method int32 (0 control, 1 data),
             5 headers repeated Header, 6 payload_encoding string, 7 payload_type string,
             8 payload bytes, 9 LogIDNew string }
    Header { 1 key string, 2 value string }

The tests check both directions against the official SDK's generated classes (lark-oapi).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONTROL, DATA = 0, 1


@dataclass
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload_encoding: str | None = None
    payload_type: str | None = None
    payload: bytes | None = None
    log_id_new: str | None = None

    def header(self, key: str) -> str:
        return next((v for k, v in self.headers if k == key), "")


class FrameError(ValueError):
    """Bytes that are not a Frame."""


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64 negatives: ten bytes, as protobuf does
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def encode(frame: Frame) -> bytes:
    out = bytearray()
    out += _key(1, 0) + _varint(frame.seq_id)
    out += _key(2, 0) + _varint(frame.log_id)
    out += _key(3, 0) + _varint(frame.service)
    out += _key(4, 0) + _varint(frame.method)
    for k, v in frame.headers:
        out += _bytes(5, _bytes(1, k.encode()) + _bytes(2, v.encode()))
    if frame.payload_encoding is not None:
        out += _bytes(6, frame.payload_encoding.encode())
    if frame.payload_type is not None:
        out += _bytes(7, frame.payload_type.encode())
    if frame.payload is not None:
        out += _bytes(8, frame.payload)
    if frame.log_id_new is not None:
        out += _bytes(9, frame.log_id_new.encode())
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise FrameError("truncated varint")
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
            out.append((number, value))
        elif wire == 2:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise FrameError("truncated field")
            out.append((number, data[at : at + size]))
            at += size
        elif wire in (1, 5):  # fixed 64 / 32 bits: not in a Frame, skipped
            at += 8 if wire == 1 else 4
        else:
            raise FrameError(f"unsupported wire type {wire}")
    return out


def _signed32(n: int) -> int:
    n &= (1 << 64) - 1
    return n - (1 << 64) if n >= 1 << 63 else n


def decode(data: bytes) -> Frame:
    frame = Frame()
    for number, value in _fields(data):
        if isinstance(value, int):
            if number == 1:
                frame.seq_id = value
            elif number == 2:
                frame.log_id = value
            elif number == 3:
                frame.service = _signed32(value)
            elif number == 4:
                frame.method = _signed32(value)
        elif number == 5:
            parts = dict(_fields(value))
            key, val = parts.get(1, b""), parts.get(2, b"")
            if isinstance(key, bytes) and isinstance(val, bytes):
                frame.headers.append((key.decode("utf-8", "replace"), val.decode("utf-8", "replace")))
        elif number == 6:
            frame.payload_encoding = value.decode("utf-8", "replace")
        elif number == 7:
            frame.payload_type = value.decode("utf-8", "replace")
        elif number == 8:
            frame.payload = value
        elif number == 9:
            frame.log_id_new = value.decode("utf-8", "replace")
    return frame
