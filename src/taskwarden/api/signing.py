"""Signed credentials that hold no secret: the dashboard's session cookie, stream tickets.

Both are stateless: a value carries its expiry and an HMAC-SHA256, keyed by a key derived
from the token it was made from (PBKDF2, so a leaked value does not make guessing the
token cheap). Any server with the same tokens accepts it, across restarts and replicas;
removing the token from the settings revokes every value made from it. A value never
contains the token.

- A session cookie: ``s1.<expires>.<mac>``, the MAC over ``session|<expires>``. Its role is
  the token's role now, not when it was signed.
- A stream ticket: ``t1.<expires>.<id>.<role>.<mac>``, the MAC over
  ``ticket|<expires>|<id>|<role>``. It is accepted once: :class:`TicketBook` keeps the ids
  spent in this process until they expire (replicas do not share that set).

With ``authenticate=`` instead of tokens there is no token to key by, so tickets are keyed
by a random secret of this process (a ticket works only on the server that made it), and
there are no session cookies.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["SESSION_COOKIE", "Signer", "TicketBook"]

Role = Literal["viewer", "operator"]

SESSION_COOKIE = "taskwarden_session"
"""The session cookie's name (HttpOnly, SameSite=Strict, Path = the app's root path)."""

_KDF_SALT = b"taskwarden.api.signing.v1"
_KDF_ROUNDS = 100_000


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _as_role(value: str) -> Role | None:
    if value == "operator":
        return "operator"
    if value == "viewer":
        return "viewer"
    return None


@dataclass
class Signer:
    """Signs and checks session values and tickets with keys derived from ``tokens``.

    ``tokens`` maps each token to its role; None means there are no tokens (then only
    tickets can be signed, with a random key of this process, see the module docstring).
    ``clock`` gives the time in seconds (``time.time``; tests pass a fake one).
    """

    tokens: Mapping[str, Role] | None
    clock: Callable[[], float] = time.time
    _keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    _process_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def _key(self, token: str) -> bytes:
        # Derived once per token and kept: PBKDF2 is slow on purpose.
        key = self._keys.get(token)
        if key is None:
            key = hashlib.pbkdf2_hmac("sha256", token.encode(), _KDF_SALT, _KDF_ROUNDS)
            self._keys[token] = key
        return key

    def _candidates(self) -> list[tuple[bytes, Role | None, str | None]]:
        """Every key a value may be signed with, the role it stands for now, its token."""
        if self.tokens is None:
            return [(self._process_key, None, None)]
        return [(self._key(token), role, token) for token, role in self.tokens.items()]

    def role_of_token(self, presented: str) -> Role | None:
        """The role of ``presented`` if it is one of the tokens, compared in constant time."""
        found: Role | None = None
        for token, role in (self.tokens or {}).items():
            # Every token is compared, so timing does not reveal which (or a prefix) matched.
            if hmac.compare_digest(token.encode(), presented.encode()) and found is None:
                found = role
        return found

    # ------------------------------------------------------------------ sessions
    def session(self, token: str, max_age: float) -> str:
        """A session value for ``token`` (one of the tokens), valid ``max_age`` seconds."""
        expires = int(self.clock() + max_age)
        return f"s1.{expires}.{self._mac(self._key(token), f'session|{expires}')}"

    def check_session(self, value: str, max_age: float) -> tuple[Role, str] | None:
        """The role a session value gives now and the token that signed it, or None:
        malformed, tampered with, expired, longer-lived than ``max_age`` allows, or made
        from a token no longer configured."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != "s1" or self.tokens is None:
            return None
        expires = self._expiry(parts[1], max_age)
        if expires is None:
            return None
        found: tuple[Role, str] | None = None
        for key, current, token in self._candidates():
            mac = self._mac(key, f"session|{expires}")
            if self._same(mac, parts[2]) and found is None and current and token:
                found = (current, token)
        return found

    # ------------------------------------------------------------------ tickets
    def ticket(self, role: Role, lifetime: float, token: str | None) -> str:
        """A ticket for ``role``, valid ``lifetime`` seconds, signed with ``token``'s key
        (or this process's key when there are no tokens)."""
        expires = int(self.clock() + lifetime)
        ticket_id = _b64(secrets.token_bytes(12))
        key = self._process_key if token is None else self._key(token)
        mac = self._mac(key, f"ticket|{expires}|{ticket_id}|{role}")
        return f"t1.{expires}.{ticket_id}.{role}.{mac}"

    def check_ticket(self, value: str, lifetime: float) -> tuple[str, int, Role] | None:
        """``(id, expires, role)`` of a well-signed, unexpired ticket, else None. Whether it
        was used before is :class:`TicketBook`'s business."""
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != "t1":
            return None
        _, stamp, ticket_id, role_text, mac = parts
        expires = self._expiry(stamp, lifetime)
        role = _as_role(role_text)
        if expires is None or role is None:
            return None
        message = f"ticket|{expires}|{ticket_id}|{role}"
        valid = False
        for key, current, _ in self._candidates():
            # A token's ticket stands for that token's role, which may have changed since.
            if self._same(self._mac(key, message), mac) and current in (None, role):
                valid = True
        return (ticket_id, expires, role) if valid else None

    # ------------------------------------------------------------------ helpers
    def _expiry(self, stamp: str, longest: float) -> int | None:
        if not stamp.isdigit() or len(stamp) > 12:
            return None
        expires = int(stamp)
        now = self.clock()
        # A value that outlives the configured lifetime was signed under a longer one:
        # shortening the setting shortens the values already out there too.
        if not now < expires <= now + longest + 1:
            return None
        return expires

    @staticmethod
    def _mac(key: bytes, message: str) -> str:
        return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())

    @staticmethod
    def _same(expected: str, presented: str) -> bool:
        return hmac.compare_digest(expected.encode(), presented.encode())


@dataclass
class TicketBook:
    """The tickets spent in this process, each kept until it expires."""

    clock: Callable[[], float] = time.time
    _spent: dict[str, int] = field(default_factory=dict, repr=False)
    _order: collections.deque[tuple[int, str]] = field(
        default_factory=collections.deque, repr=False
    )

    def spend(self, ticket_id: str, expires: int) -> bool:
        """Mark the ticket used; False when it was used before."""
        now = self.clock()
        while self._order and self._order[0][0] < now:
            _, gone = self._order.popleft()
            self._spent.pop(gone, None)
        if ticket_id in self._spent:
            return False
        self._spent[ticket_id] = expires
        # Tickets share one lifetime, so they expire in the order they are spent, nearly:
        # an entry kept a second too long is harmless.
        self._order.append((expires, ticket_id))
        return True

    def __len__(self) -> int:
        return len(self._spent)
