"""Server-side WebSocket frame encoding for bulk writes.

picows copies every message it sends and issues one ``send()`` system call per
frame. At hundreds of thousands of trades per second that dominates the cost,
so the emulator builds unmasked server frames itself, joins a whole batch into
one ``bytes`` object and hands it to the transport in a single write.

PERF: headers for the common payload sizes are precomputed, so encoding a frame
is one list lookup plus two list appends.
"""

from __future__ import annotations

__all__ = [
    "HEADER_CACHE_SIZE",
    "TEXT_HEADERS",
    "encode_text",
    "encode_texts",
    "text_header",
]

_FIN_TEXT = 0x81

HEADER_CACHE_SIZE = 8192
"""Payload sizes below this have a precomputed header in `TEXT_HEADERS`."""


def text_header(size: int) -> bytes:
    """Return the header of an unmasked, final TEXT frame.

    Args:
        size: Payload size in bytes.

    Returns:
        The 2, 4 or 10 byte frame header.
    """
    if size < 126:
        return bytes((_FIN_TEXT, size))
    if size < 65536:
        return bytes((_FIN_TEXT, 126)) + size.to_bytes(2, "big")
    return bytes((_FIN_TEXT, 127)) + size.to_bytes(8, "big")


TEXT_HEADERS: list[bytes] = [text_header(n) for n in range(HEADER_CACHE_SIZE)]
"""``TEXT_HEADERS[n]`` is the frame header for an ``n``-byte payload."""


def encode_text(payload: bytes) -> bytes:
    """Encode one payload as a complete TEXT frame.

    Args:
        payload: UTF-8 encoded message.

    Returns:
        Header and payload, ready for the socket.
    """
    size = len(payload)
    header = TEXT_HEADERS[size] if size < HEADER_CACHE_SIZE else text_header(size)
    return header + payload


def encode_texts(payloads: list[bytes]) -> bytes:
    """Encode several payloads as consecutive TEXT frames in one buffer.

    Args:
        payloads: UTF-8 encoded messages, in sending order.

    Returns:
        The concatenated frames.
    """
    parts: list[bytes] = []
    append = parts.append
    headers = TEXT_HEADERS
    for payload in payloads:
        size = len(payload)
        append(headers[size] if size < HEADER_CACHE_SIZE else text_header(size))
        append(payload)
    return b"".join(parts)
