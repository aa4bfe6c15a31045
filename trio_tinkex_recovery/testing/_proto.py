"""The little of Protocol Buffers the simulator needs, without protobuf.

The official SDK sends ``forward_backward`` requests as a protobuf
``ForwardBackwardRequest`` (``Content-Type: application/x-protobuf``) and
asks for its result (``ForwardBackwardOutput``) in protobuf too.  The
simulator reads the request's top-level fields (`decode_fields`) and writes
a result with no per-example tensors (`encode_forward_backward_output`).

Field numbers, from the SDK's ``tinker_public.proto``:
``ForwardBackwardRequest``: 1 ``model_id``, 2 ``seq_id``, 3 ``data``
(repeated), 4 ``loss_fn``, 6 ``forward_only``;
``ForwardBackwardOutput``: 1 ``loss_fn_output_type``, 2 ``loss_fn_outputs``
(``ArrayRecord``: 3 ``num_datums``), 3 ``metrics`` (map: 1 key, 2 value).
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["PROTOBUF", "decode_fields", "encode_forward_backward_output"]

#: The media type of protobuf bodies.
PROTOBUF = "application/x-protobuf"

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_fields(data: bytes) -> dict[int, list[int | bytes]]:
    """A message's top-level fields: number -> values (ints, or bytes).

    Raises:
        ValueError: ``data`` is not a protobuf message.
    """
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            value, pos = data[pos : pos + size], pos + size
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data) or number == 0:
            raise ValueError("truncated message")
        fields.setdefault(number, []).append(value)
    return fields


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def encode_forward_backward_output(result: dict[str, Any]) -> bytes:
    """A ``ForwardBackwardOutput`` as JSON (the simulator's form), in protobuf."""
    out = _len_field(1, result["loss_fn_output_type"].encode())
    record = _varint(3 << 3 | _VARINT) + _varint(len(result["loss_fn_outputs"]))
    out += _len_field(2, record)
    for key, value in result["metrics"].items():
        entry = _len_field(1, key.encode())
        entry += _varint(2 << 3 | _I64) + struct.pack("<d", value)
        out += _len_field(3, entry)
    return out
