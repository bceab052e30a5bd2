"""Signed, replay-protected envelopes for messages between cluster members.

The membership protocol (``swim.py``) trusts the ``sender`` it is given; this module is
what earns that trust. A message travels as::

    msgpack([1, sender, body, signature])
    body      = msgpack([sender, counter, timestamp, message])
    signature = Ed25519(sender's key, DOMAIN + body)

- the signature covers the exact body bytes (no re-encoding on the receiving side), and
  a domain prefix so that a node key's signature here is never valid in another protocol;
- ``counter`` is a per-sender number that only grows (``Signer`` starts it at the boot
  time in microseconds, so it grows across restarts too); the receiver keeps, per sender,
  the highest counter and a window of the ``window`` counters below it, so messages may
  arrive out of order (concurrent HTTP requests) but never twice;
- ``timestamp`` (seconds, the sender's clock) must be within ``max_skew`` of the
  receiver's, which bounds how long a captured message is worth anything, and lets a
  freshly restarted receiver (empty window) refuse everything older than itself
  (``ReplayState(not_before=...)``).

The body is parsed only after its signature checks out. Every refusal is an
``EnvelopeError`` subclass with a stable ``code`` and an HTTP ``status`` hint, converted
once at the transport's edge like every other ArtStore error.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from artstored.engine.errors import ArtStoreError

WIRE_VERSION = 1
DOMAIN = b"artstore/swim-envelope/v1\x00"
SIGNATURE_BYTES = 64
MAX_ENVELOPE_BYTES = 8 * 1024 * 1024   # a full-state sync of 100k members fits


# --- errors: the peer (or someone pretending) broke it ------------------------------------

class EnvelopeError(ArtStoreError):
    """An envelope was refused. Nothing from it may be used."""

    code = "envelope_refused"
    status = 400
    title = "Message refused"


class MalformedEnvelope(EnvelopeError):
    code = "envelope_malformed"
    status = 400
    title = "Malformed message envelope"


class UnknownSender(EnvelopeError):
    """The sender is not a member whose public key we hold."""

    code = "unknown_sender"
    status = 403
    title = "Sender is not a cluster member"


class BadSignature(EnvelopeError):
    """The signature does not verify with the sender's key (forged, tampered, wrong key)."""

    code = "bad_signature"
    status = 401
    title = "Bad message signature"


class ReplayedMessage(EnvelopeError):
    """This sender's counter was seen before."""

    code = "replayed_message"
    status = 409
    title = "Message already received"


class StaleMessage(EnvelopeError):
    """Too old (timestamp, or counter below the window) or too far in the future."""

    code = "stale_message"
    status = 400
    title = "Message too old or clock skewed"


class Envelope(NamedTuple):
    sender: str
    counter: int
    timestamp: float
    message: Any


# --- sending --------------------------------------------------------------------------------

def pack(message: Any, sender_id: str, signing_key: SigningKey, counter: int,
         timestamp: float) -> bytes:
    """Sign ``message`` (anything msgpack can encode) as ``sender_id``.

    The caller guarantees ``counter`` never repeats for this sender (use ``Signer``)."""
    if type(counter) is not int or counter < 0:
        raise ValueError("counter must be a non-negative int")
    body = msgpack.packb([sender_id, counter, float(timestamp), message], use_bin_type=True)
    signature = signing_key.sign(DOMAIN + body).signature
    return msgpack.packb([WIRE_VERSION, sender_id, body, signature], use_bin_type=True)


class Signer:
    """Packs messages as one node, with a counter that grows for the life of the key.

    The counter starts at ``max(start_counter, boot time in µs)`` and grows by one per
    message, so a restarted node's counters are above its previous life's as long as its
    clock did not go back by more than its previous life's message count in µs. Pass
    ``start_counter`` (saved at shutdown) to be safe even then. Not thread-safe.
    """

    def __init__(self, sender_id: str, signing_key: SigningKey, *, clock=time.time,
                 start_counter: int = 0):
        self.sender_id, self._key, self._clock = sender_id, signing_key, clock
        self.counter = max(start_counter, int(clock() * 1_000_000))

    def pack(self, message: Any) -> bytes:
        self.counter += 1
        return pack(message, self.sender_id, self._key, self.counter, self._clock())


# --- receiving ------------------------------------------------------------------------------

class ReplayState:
    """What a receiver remembers to refuse replays: per sender, the highest counter seen and
    a bitmap of the ``window`` counters below it. Memory: O(senders); only senders with a
    valid signature ever get an entry.

    ``max_skew``: seconds a timestamp may differ from the receiver's clock, either way.
    ``not_before``: refuse timestamps older than this (pass the receiver's start time: its
    window is empty after a restart, and this keeps old captures out).
    """

    def __init__(self, *, window: int = 1024, max_skew: float = 30.0,
                 not_before: float | None = None, max_senders: int | None = None):
        if window < 1 or max_skew <= 0:
            raise ValueError("window >= 1 and max_skew > 0")
        self.window, self.max_skew, self.not_before = window, max_skew, not_before
        # For senders that need no membership (join requests): past this many, the one
        # first heard of is forgotten (its old messages are stale by timestamp anyway).
        self.max_senders = max_senders
        self._senders: dict[str, list[int]] = {}     # sender → [highest, bitmap]

    def check_and_record(self, sender: str, counter: int) -> None:
        """Raise ReplayedMessage / StaleMessage, or record ``counter`` as seen."""
        entry = self._senders.get(sender)
        if entry is None:
            if self.max_senders is not None and len(self._senders) >= self.max_senders:
                del self._senders[next(iter(self._senders))]
            self._senders[sender] = [counter, 1]
            return
        high, bits = entry
        if counter > high:
            shift = counter - high
            bits = ((bits << shift) | 1) if shift < self.window else 1
            entry[0], entry[1] = counter, bits & ((1 << self.window) - 1)
            return
        offset = high - counter
        if offset >= self.window:
            raise StaleMessage(f"counter {counter} from {sender} is below the replay window")
        if bits >> offset & 1:
            raise ReplayedMessage(f"counter {counter} from {sender} was already received")
        entry[1] = bits | (1 << offset)

    def statistics(self) -> dict[str, int]:
        return {"senders": len(self._senders)}


def _verify_key(key) -> VerifyKey:
    return key if isinstance(key, VerifyKey) else VerifyKey(bytes(key))


def unpack(data: bytes, public_keys: Mapping[str, VerifyKey | bytes],
           replay_state: ReplayState, *, now: float | None = None) -> Envelope:
    """Check and open an envelope; raise an ``EnvelopeError`` subclass if anything is off.

    Order of checks: size and shape → sender known (``UnknownSender``) → signature
    (``BadSignature``) → timestamp (``StaleMessage``) → counter (``ReplayedMessage`` /
    ``StaleMessage``). The counter is recorded only when every check passed, so a refused
    envelope never spends a counter. ``now`` defaults to ``time.time()``.
    """
    if now is None:
        now = time.time()
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedEnvelope("not bytes, or too large")
    try:
        outer = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:      # msgpack raises several unrelated types on garbage
        raise MalformedEnvelope(f"not msgpack: {type(exc).__name__}") from None
    if (not isinstance(outer, list) or len(outer) != 4 or outer[0] != WIRE_VERSION
            or not isinstance(outer[1], str) or not isinstance(outer[2], bytes)
            or not isinstance(outer[3], bytes) or len(outer[3]) != SIGNATURE_BYTES):
        raise MalformedEnvelope("not a version-1 envelope")
    _, sender, body, signature = outer
    key = public_keys.get(sender)
    if key is None:
        raise UnknownSender(f"no key for sender {sender!r}")
    try:
        _verify_key(key).verify(DOMAIN + body, signature)
    except BadSignatureError:
        raise BadSignature(f"signature does not verify as {sender!r}") from None
    try:
        inner = msgpack.unpackb(body, raw=False, use_list=True)
    except Exception as exc:
        raise MalformedEnvelope(f"signed body is not msgpack: {type(exc).__name__}") from None
    if (not isinstance(inner, list) or len(inner) != 4 or inner[0] != sender
            or type(inner[1]) is not int or inner[1] < 0
            or not isinstance(inner[2], (int, float))):
        # A member signing a body in another member's name is malformed, not a replay.
        raise MalformedEnvelope("signed body does not match its envelope")
    _, counter, timestamp, message = inner
    if abs(timestamp - now) > replay_state.max_skew:
        raise StaleMessage(f"timestamp {timestamp:.3f} is {timestamp - now:+.1f} s from ours")
    if replay_state.not_before is not None and timestamp < replay_state.not_before:
        raise StaleMessage("timestamp is older than this receiver's start")
    replay_state.check_and_record(sender, counter)
    return Envelope(sender, counter, float(timestamp), message)


def unpack_self_signed(data: bytes, replay_state: ReplayState, node_id_of, *,
                       key_field: str = "key", now: float | None = None) -> Envelope:
    """Open an envelope from a node that is not a member yet (a join request): its message
    is a map carrying its own public key under ``key_field``, and its sender id must be
    ``node_id_of(key)``. Proves the sender holds the key of the id it claims, nothing more.
    Raises the same errors as ``unpack``."""
    try:
        outer = msgpack.unpackb(data, raw=False, use_list=True)
        inner = msgpack.unpackb(outer[2], raw=False, use_list=True)
        key = inner[3][key_field]
        if not isinstance(key, bytes) or len(key) != 32 or node_id_of(key) != outer[1]:
            raise ValueError
    except Exception:
        raise MalformedEnvelope("not a self-signed request whose sender is its key's id") \
            from None
    return unpack(data, {outer[1]: key}, replay_state, now=now)

