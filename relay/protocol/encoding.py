"""MessagePack decoding with limits, and the base64url text form of binary ids.

Every decoder in the protocol goes through :func:`decode`, so that a size limit
is checked before parsing and every msgspec failure becomes a typed protocol
error (``frame_too_large``, ``malformed`` or ``bad_type``).  No I/O here.
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

import msgspec

from relay.protocol.errors import ErrorCode, RemoteProtocolError

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[object, msgspec.msgpack.Decoder[object]] = {}


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, type_: type[T], *, limit: int, what: str = "message") -> T:
    """Decode one MessagePack object of ``type_``, refusing anything over ``limit`` bytes."""
    if len(data) > limit:
        raise RemoteProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"{what} is {len(data)} bytes; the limit is {limit}"
        )
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.msgpack.Decoder(type_)
    try:
        return decoder.decode(data)  # type: ignore[return-value]
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{what} is not valid MessagePack: {exc}") from None
    except UnicodeDecodeError:
        # msgspec reports invalid UTF-8 in a string this way, not as a DecodeError.
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{what} holds a string that is not UTF-8") from None
    except RecursionError:
        # msgspec recurses per nesting level, even through fields it skips.
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{what} is nested too deeply") from None


def b64e(data: bytes) -> str:
    """Unpadded base64url, the text form of keys and ids in addresses and logs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Decode unpadded base64url, refusing anything else (and a wrong length if given)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"{what} is not base64url") from None
    if b64e(raw) != text:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"{what} is not canonical base64url")
    if length is not None and len(raw) != length:
        raise RemoteProtocolError(ErrorCode.BAD_TYPE, f"{what} must be {length} bytes")
    return raw
