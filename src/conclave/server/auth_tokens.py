"""Auth tokens (``--auth-token``) and the brute-force limiter of Authenticate: member-local state.

Theory of operation
-------------------
Which user a request speaks for is decided from its token, and tokens are NOT replicated state:

* ``simple`` (etcd's default): ``Authenticate`` goes through Raft carrying a fresh random prefix of
  16 letters; when the entry applies, EVERY member registers the token ``"<prefix>.<raft index>"``
  for that user (``SimpleTokens.register``, called by the node for each applied
  ``AuthenticateResponse``), so a token obtained on one member works on all of them. A token lives
  ``--auth-token-ttl`` seconds (default 300) after its last use: each successful lookup slides its
  deadline (etcd's behaviour). Deadlines are read from the member's injected clock, so tests drive
  them on virtual time. Deleting a user or changing its password drops its tokens; disabling auth
  drops every token. The server logs once that simple tokens are not cryptographically signed.
* ``jwt,pub-key=F,priv-key=F,sign-method=RS256,ttl=5m``: the member that answered Authenticate
  signs a JWT with PyJWT whose claims are ``username``, ``revision`` (the auth store's revision)
  and ``exp`` (wall-clock, as JWT requires); every member holding the public key verifies it, so
  nothing needs registering. A member given only ``pub-key`` verifies tokens but cannot issue them.
  A JWT carries the auth revision it was issued at: the backend refuses one older than the store
  (``revision of auth store is old``) so the client re-authenticates.

A token that is unknown, expired, forged or malformed is answered ``InvalidAuthToken``.

Brute force (``AttemptLimiter``): failed password checks are counted per (user, source address).
The first ``free`` (5) failures cost nothing more than the bcrypt check itself; after that the key
is locked for ``base_s * 2 ** (failures - free)`` seconds (1 s, 2 s, 4 s, ... capped at ``cap_s``,
60 s). An attempt during the lock is answered with the same error as a wrong password
(``authentication failed, invalid user ID or password``) WITHOUT checking the password, so a
guesser learns nothing and costs the member no bcrypt work. A success clears the key; a key idle
for ``cap_s`` after its last failure and its lock's end is forgotten; the table holds at most ``max_keys`` keys (the
oldest are dropped first). Policy documented in docs/security.md.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.kv import errors as kverr

log = logging.getLogger("conclave.auth")

SIMPLE_PREFIX_LETTERS = 16
DEFAULT_TTL_S = 300
DEFAULT_JWT_TTL_S = 300  # etcd: server/auth/options.go, 5 minutes
JWT_METHODS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
               "HS256", "HS384", "HS512", "EdDSA")  # fmt: skip
_LETTERS = string.ascii_letters


class TokenConfigError(ValueError):
    """An ``--auth-token`` value that cannot be used; the message says why."""


def new_simple_prefix() -> str:
    """16 random letters (etcd's simple token prefix), from the OS's CSPRNG."""
    return "".join(secrets.choice(_LETTERS) for _ in range(SIMPLE_PREFIX_LETTERS))


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """Who a token speaks for; ``revision`` is None for simple tokens (they follow the store)."""

    user: str
    revision: int | None


class TokenProvider:
    """What the backend needs from a token scheme."""

    kind = "none"
    signed = False  # True: Authenticate's token is signed here after the apply (jwt), not registered
    can_sign = False  # a jwt member given only pub-key verifies but cannot issue tokens

    def info(self, token: str) -> TokenInfo:  # raises InvalidAuthToken
        raise kverr.InvalidAuthToken()

    def sign(self, user: str, revision: int) -> str:
        raise kverr.AuthFailed()

    def known(self, token: str) -> bool:
        """Whether ``token`` is in this member's table (simple tokens; others: always True)."""
        return True

    def register(self, token: str, user: str) -> None:
        """An applied Authenticate named ``token`` for ``user`` (simple tokens only)."""

    def invalidate_user(self, user: str) -> None:
        """The user was deleted or its password changed."""

    def invalidate_all(self) -> None:
        """Auth was disabled."""


class SimpleTokens(TokenProvider):
    """etcd's simple tokens: a member-local table with sliding deadlines on the member's clock."""

    kind = "simple"
    SWEEP_EVERY = 1024  # registrations between two sweeps of expired tokens

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, now_ms: Callable[[], int] | None = None) -> None:
        if ttl_s <= 0:
            raise TokenConfigError(f"--auth-token-ttl must be > 0 seconds, got {ttl_s}")
        self.ttl_ms = int(ttl_s * 1000)
        self._now = now_ms if now_ms is not None else (lambda: time.monotonic_ns() // 1_000_000)
        self._tokens: dict[str, list[Any]] = {}  # token -> [user, deadline_ms]
        self._by_user: dict[str, set[str]] = {}
        self._since_sweep = 0
        self._warned = False

    def __len__(self) -> int:
        return len(self._tokens)

    def known(self, token: str) -> bool:
        return token in self._tokens

    def register(self, token: str, user: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("simple token is not cryptographically signed")
        self._tokens[token] = [user, self._now() + self.ttl_ms]
        self._by_user.setdefault(user, set()).add(token)
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self.sweep()

    def _drop(self, token: str) -> None:
        entry = self._tokens.pop(token, None)
        if entry is not None:
            tokens = self._by_user.get(entry[0])
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._by_user[entry[0]]

    def sweep(self) -> None:
        """Forget every expired token."""
        self._since_sweep = 0
        now = self._now()
        for token in [t for t, (_, deadline) in self._tokens.items() if deadline <= now]:
            self._drop(token)

    def info(self, token: str) -> TokenInfo:
        entry = self._tokens.get(token)
        if entry is None:
            raise kverr.InvalidAuthToken()
        now = self._now()
        if entry[1] <= now:
            self._drop(token)
            raise kverr.InvalidAuthToken()
        entry[1] = now + self.ttl_ms  # sliding: each use restarts the TTL
        return TokenInfo(entry[0], None)

    def invalidate_user(self, user: str) -> None:
        for token in list(self._by_user.get(user, ())):
            self._drop(token)

    def invalidate_all(self) -> None:
        self._tokens.clear()
        self._by_user.clear()


class JwtTokens(TokenProvider):
    """Signed tokens (PyJWT): claims username, revision, exp."""

    kind = "jwt"
    signed = True

    def __init__(self, sign_method: str, pub_key: bytes, priv_key: bytes | None, ttl_s: float = DEFAULT_JWT_TTL_S,
                 wall_clock: Callable[[], float] = time.time) -> None:
        import jwt  # PyJWT

        if sign_method not in JWT_METHODS:
            raise TokenConfigError(f"--auth-token: unsupported sign-method {sign_method!r} "
                                   f"(one of {', '.join(JWT_METHODS)})")  # fmt: skip
        if ttl_s <= 0:
            raise TokenConfigError(f"--auth-token: jwt ttl must be > 0, got {ttl_s}")
        self._jwt = jwt
        self.method = sign_method
        self.ttl_s = ttl_s
        self._wall = wall_clock
        self._verify_key: Any
        self._sign_key: Any = None
        if sign_method.startswith("HS"):
            secret = priv_key if priv_key is not None else pub_key
            self._verify_key = self._sign_key = secret
            self.can_sign = True
            return
        from cryptography.hazmat.primitives import serialization

        try:
            self._verify_key = serialization.load_pem_public_key(pub_key)
        except ValueError as exc:
            raise TokenConfigError(f"--auth-token: pub-key is not a PEM public key: {exc}") from None
        if priv_key is not None:
            try:
                self._sign_key = serialization.load_pem_private_key(priv_key, password=None)
            except (ValueError, TypeError) as exc:
                raise TokenConfigError(f"--auth-token: priv-key is not an unencrypted PEM private key: {exc}") from None
        self.can_sign = self._sign_key is not None

    def sign(self, user: str, revision: int) -> str:
        if self._sign_key is None:
            # etcd: a member without the private key cannot issue tokens.
            raise kverr.AuthFailed("this member has no jwt priv-key")
        claims = {"username": user, "revision": revision, "exp": int(self._wall() + self.ttl_s)}
        return str(self._jwt.encode(claims, self._sign_key, algorithm=self.method))

    def info(self, token: str) -> TokenInfo:
        try:
            # exp is checked here against the injected wall clock (PyJWT would read time.time()).
            claims = self._jwt.decode(token, self._verify_key, algorithms=[self.method],
                                      options={"require": ["exp"], "verify_exp": False})  # fmt: skip
            if int(claims["exp"]) <= self._wall():
                raise kverr.InvalidAuthToken()
            user, revision = claims["username"], claims["revision"]
        except (self._jwt.PyJWTError, KeyError, TypeError, ValueError):
            raise kverr.InvalidAuthToken() from None
        if not isinstance(user, str) or not isinstance(revision, int):
            raise kverr.InvalidAuthToken()
        return TokenInfo(user, revision)


def _duration_s(text: str) -> float:
    """Go-style durations as etcd's jwt ttl takes them: 300s, 5m, 1h, 1h30m, 500ms; a bare number is seconds."""
    text = text.strip()
    if not text:
        raise TokenConfigError("--auth-token: empty jwt ttl")
    try:
        return float(text)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, num = 0.0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            num += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not num:
            raise TokenConfigError(f"--auth-token: cannot parse jwt ttl {text!r} (e.g. 5m, 300s)")
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    if num:
        raise TokenConfigError(f"--auth-token: jwt ttl {text!r} lacks a unit (e.g. 5m, 300s)")
    return total


def provider_from_flag(value: str, ttl_s: float = DEFAULT_TTL_S,
                       now_ms: Callable[[], int] | None = None,
                       wall_clock: Callable[[], float] = time.time) -> TokenProvider:
    """The provider ``--auth-token`` names: ``simple`` or ``jwt,pub-key=..,priv-key=..,sign-method=..,ttl=..``."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise TokenConfigError("--auth-token must not be empty (simple or jwt,...)")
    kind, opts = parts[0], parts[1:]
    if kind == "simple":
        if opts:
            raise TokenConfigError(f"--auth-token simple takes no options, got {','.join(opts)!r}")
        return SimpleTokens(ttl_s, now_ms)
    if kind != "jwt":
        raise TokenConfigError(f"--auth-token must be simple or jwt, got {kind!r}")
    options: dict[str, str] = {}
    for opt in opts:
        key, sep, val = opt.partition("=")
        if not sep or key not in ("pub-key", "priv-key", "sign-method", "ttl"):
            raise TokenConfigError(f"--auth-token: unknown jwt option {opt!r} "
                                   "(pub-key=, priv-key=, sign-method=, ttl=)")  # fmt: skip
        options[key] = val
    method = options.get("sign-method", "")
    if not method:
        raise TokenConfigError("--auth-token jwt needs sign-method= (e.g. RS256)")
    if method not in JWT_METHODS:
        raise TokenConfigError(f"--auth-token: unsupported sign-method {method!r} (one of {', '.join(JWT_METHODS)})")

    def read(flag: str) -> bytes | None:
        path = options.get(flag)
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise TokenConfigError(f"--auth-token: cannot read {flag} {path}: {exc.strerror}") from None

    pub, priv = read("pub-key"), read("priv-key")
    if pub is None and not (method.startswith("HS") and priv is not None):
        raise TokenConfigError("--auth-token jwt needs pub-key= (the key that verifies tokens)")
    jwt_ttl = _duration_s(options["ttl"]) if "ttl" in options else DEFAULT_JWT_TTL_S
    return JwtTokens(method, pub or b"", priv, jwt_ttl, wall_clock)


# ---------------------------------------------------------------------------- brute force


class AttemptLimiter:
    """Failed Authenticate attempts per (user, source): see the module docstring for the policy."""

    def __init__(self, now_ms: Callable[[], int], *, free: int = 5, base_s: float = 1.0, cap_s: float = 60.0,
                 max_keys: int = 10_000) -> None:
        self._now = now_ms
        self.free = free
        self.base_ms = int(base_s * 1000)
        self.cap_ms = int(cap_s * 1000)
        self.max_keys = max_keys
        # key -> [failures, locked_until_ms, last_failure_ms]
        self._keys: OrderedDict[tuple[str, str], list[int]] = OrderedDict()

    def locked(self, user: str, source: str) -> bool:
        """True while this (user, source) must not have its password checked."""
        entry = self._keys.get((user, source))
        if entry is None:
            return False
        now = self._now()
        if max(entry[1], entry[2]) + self.cap_ms <= now:  # idle long enough after its lock: forgotten
            del self._keys[(user, source)]
            return False
        return entry[1] > now

    def failed(self, user: str, source: str) -> int:
        """Count a failure; returns the lock it starts in ms (0: not locked yet)."""
        key = (user, source)
        now = self._now()
        entry = self._keys.pop(key, None)
        if entry is None or max(entry[1], entry[2]) + self.cap_ms <= now:
            entry = [0, 0, 0]
        entry[0] += 1
        entry[2] = now
        over = entry[0] - self.free
        delay = 0
        if over >= 0:
            delay = min(self.cap_ms, self.base_ms << min(over, 30))
            entry[1] = now + delay
        self._keys[key] = entry  # most recent last
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return delay

    def failures(self, user: str, source: str) -> int:
        entry = self._keys.get((user, source))
        return entry[0] if entry is not None else 0

    def succeeded(self, user: str, source: str) -> None:
        self._keys.pop((user, source), None)


__all__ = [
    "AttemptLimiter", "JwtTokens", "SimpleTokens", "TokenConfigError", "TokenInfo", "TokenProvider",
    "new_simple_prefix", "provider_from_flag",
]
