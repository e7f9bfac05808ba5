"""Huey's serializer, replaced: messages are msgspec JSON, so a crafted message cannot run code."""

from __future__ import annotations

from typing import Any

import msgspec
from huey.registry import Message
from huey.serializer import Serializer

from runtime.core.messages import WireMessage


class WireValue(msgspec.Struct, array_like=True, tag="v"):
    """Anything else Huey stores through its serializer (counters, flags), as plain JSON."""

    value: Any


_decoder = msgspec.json.Decoder(WireMessage | WireValue)


class MsgspecSerializer(Serializer):  # type: ignore[misc]  # Huey is untyped
    """Huey serializer over msgspec JSON; refuses what it cannot encode instead of pickling it."""

    def _serialize(self, data: Any) -> bytes:
        if isinstance(data, Message):
            if data.on_complete or data.on_error or data.chord_config:
                raise TypeError("b3-jobs messages do not carry Huey pipelines or chords")
            return msgspec.json.encode(
                WireMessage(data.id, data.name, data.eta, data.priority, tuple(data.args or ()), data.expires_resolved)
            )
        return msgspec.json.encode(WireValue(data))

    def _deserialize(self, data: bytes) -> Any:
        decoded = _decoder.decode(data)
        if isinstance(decoded, WireMessage):
            return Message(
                id=decoded.id,
                name=decoded.name,
                eta=decoded.eta,
                retries=0,
                retry_delay=0,
                priority=decoded.priority,
                args=decoded.args,
                kwargs={},
                expires_resolved=decoded.expires_resolved,
            )
        return decoded.value
