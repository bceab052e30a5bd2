"""Token checks on a node that is not the authority: everything comes from the cluster
document, so a token minted by the admin verifies here with no network call, and a
suspension or revocation the admin made is refused here as soon as the document arrives.

``DocumentKeys`` stands where an admin has its ``KeyRing`` (``TokenService`` asks it for
verifying keys); ``DocumentAccounts`` stands where an admin has its ``AccountStore`` (the
auth middleware asks it whether a verified token may still be used).
"""

from __future__ import annotations

from typing import Callable

from nacl.signing import VerifyKey

from ..replication.document import Document


class DocumentKeys:
    """The token-signing public keys of the document ``current()`` returns."""

    def __init__(self, current: Callable[[], Document | None]):
        self._current = current
        self._cache: tuple[int, dict[str, tuple[VerifyKey, float | None]]] | None = None

    def _keys(self) -> dict[str, tuple[VerifyKey, float | None]]:
        doc = self._current()
        if doc is None:
            return {}
        if self._cache is None or self._cache[0] != doc.version:
            self._cache = (doc.version, {kid: (VerifyKey(k["x"]), k["verify_until"])
                                         for kid, k in doc.token_keys.items()})
        return self._cache[1]

    def verifying_keys(self, now: float) -> dict[str, VerifyKey]:
        return {kid: vk for kid, (vk, until) in self._keys().items()
                if until is None or until > now}

    def accepts(self, kid: str, now: float) -> bool:
        entry = self._keys().get(kid)
        return entry is not None and (entry[1] is None or entry[1] > now)


class DocumentAccounts:
    """Whether a verified token may be used, by the document's account table."""

    def __init__(self, current: Callable[[], Document | None]):
        self._current = current

    def token_allowed(self, sub: str, generation: int, jti: str) -> bool:
        doc = self._current()
        if doc is None or jti in doc.revoked:
            return False
        account = doc.accounts.get(sub)
        return account is not None and account["status"] == "active" and \
            account["generation"] == generation


class CombinedKeys:
    """An admin node of an etcd-backed cluster: its own signing keys and every other
    admin's (from the document), so a token any admin minted verifies here."""

    def __init__(self, own, document: DocumentKeys):
        self.own, self.document = own, document

    # TokenService.issue signs with these: this node mints with its own keys.
    @property
    def active_key(self):
        return self.own.active_key

    @property
    def active_kid(self) -> str:
        return self.own.active_kid

    def verifying_keys(self, now: float) -> dict:
        return {**self.document.verifying_keys(now), **self.own.verifying_keys(now)}

    def accepts(self, kid: str, now: float) -> bool:
        return self.own.accepts(kid, now) or self.document.accepts(kid, now)


class CombinedAccounts:
    """Its own accounts for the tokens it minted; the document for the others'."""

    def __init__(self, own, document: DocumentAccounts):
        self.own, self.document = own, document

    def token_allowed(self, sub: str, generation: int, jti: str) -> bool:
        if self.own.find(sub) is not None:
            return self.own.token_allowed(sub, generation, jti)
        return self.document.token_allowed(sub, generation, jti)
