"""Rate limits: failed authentications per address, failed sign-ins per name, writes per
token and per signed-in user of the pages (429 rate_limited).

Every surface counts against the same counters (a token guessed through the Hugging Face
protocol or a password through the sign-in page spends the address's allowance as one sent
to the API does), so they live here, beside the surfaces, not in any one of them.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time

from flask import Flask, current_app, request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from hub.config import Settings
from hub.errors import RateLimited

log = logging.getLogger("hub.limits")
EXTENSION_KEY = "lorastack.limits"
WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})


class Limits:
    """One app's fixed-window counters, in memory or in a store shared by its processes."""

    def __init__(self, settings: Settings) -> None:
        self._limiter = FixedWindowRateLimiter(storage_from_string(settings.ratelimit_storage_url))
        self._auth_failures = _per_minute(settings.auth_failures_per_minute)
        self._writes = _per_minute(settings.writes_per_minute)
        self._sign_in_failures = _per_minute(settings.sign_in_failures_per_minute)

    def refuse_blocked_address(self, address: str) -> None:
        """429 when `address` has spent its failed authentications in this window."""
        if self._auth_failures and not self._allowed(self._limiter.test, self._auth_failures,
                                                     "auth", address):
            raise self._refusal(self._auth_failures, ("auth", address),
                                "Too many failed authentications from this address")

    def count_failed_authentication(self, address: str) -> None:
        """Count one bad token from `address` towards its limit."""
        if self._auth_failures:
            self._allowed(self._limiter.hit, self._auth_failures, "auth", address)

    def refuse_blocked_sign_in(self, name_key: str, address: str) -> None:
        """429 when `address` has spent its failed authentications, or the name whose key
        is `name_key` its failed sign-ins, in this window."""
        self.refuse_blocked_address(address)
        if self._sign_in_failures and not self._allowed(
                self._limiter.test, self._sign_in_failures, "sign-in", name_key):
            raise self._refusal(self._sign_in_failures, ("sign-in", name_key),
                                "Too many failed sign-ins for this name")

    def count_failed_sign_in(self, name_key: str, address: str) -> None:
        """Count one wrong name or password: against the name and against the address."""
        self.count_failed_authentication(address)
        if self._sign_in_failures:
            self._allowed(self._limiter.hit, self._sign_in_failures, "sign-in", name_key)

    def count_write(self, token: str) -> None:
        """Count one write by `token`; 429 once it is past its limit in this window."""
        # The key is a digest: the store (Redis) never holds a usable token.
        key = hashlib.sha256(token.encode()).hexdigest()
        if self._writes and not self._allowed(self._limiter.hit, self._writes, "write", key):
            raise self._refusal(self._writes, ("write", key), "Too many writes with this token")

    def count_user_write(self, user_id: int) -> None:
        """Count one write by the pages' signed-in user `user_id` (the pages send no token:
        their user is the caller); 429 once past the same limit as a token's."""
        key = f"user:{user_id}"
        if self._writes and not self._allowed(self._limiter.hit, self._writes, "write", key):
            raise self._refusal(self._writes, ("write", key),
                                "Too many changes from your account")

    @staticmethod
    def _allowed(call, *args) -> bool:
        """The counter's answer; True (let through, logged) when its store cannot be reached:
        a rate limit must not take the hub down with it."""
        try:
            return call(*args)
        except Exception as error:  # redis or another store's own connection errors
            log.warning("rate limits unavailable, request let through: %s", error)
            return True

    def _refusal(self, item: RateLimitItem, key: tuple[str, str], what: str) -> RateLimited:
        reset = self._limiter.get_window_stats(item, *key).reset_time
        retry_after = max(1, math.ceil(reset - time.time()))
        return RateLimited(f"{what} (at most {item.amount} a minute); retry in {retry_after} s.",
                           retry_after=retry_after)


def install_limits(app: Flask, settings: Settings) -> None:
    """Give `app` its own counters and check them before every request that carries a token,
    whichever surface it is for."""
    limits = app.extensions[EXTENSION_KEY] = Limits(settings)

    @app.before_request
    def _check_limits() -> None:
        from hub.caller import current_principal  # it counts failures here

        header = request.headers.get("Authorization")
        if not header:
            return  # anonymous callers have no token to guess, and cannot write
        limits.refuse_blocked_address(request.remote_addr or "-")
        if request.method in WRITE_METHODS:
            # A write is counted once its token is known good; a bad one counts as a failure.
            current_principal()
            limits.count_write(header.partition(" ")[2].strip())


def count_signed_in_write(user_id: int) -> None:
    """Count this request against the pages' signed-in user, if it is a write (called by the
    pages once they know the user and the request has passed its CSRF check)."""
    if request.method in WRITE_METHODS:
        current_limits().count_user_write(user_id)


def count_failed_authentication() -> None:
    """Count this request's bad token against its address (called where a token is refused)."""
    limits: Limits | None = current_app.extensions.get(EXTENSION_KEY)
    if limits is not None:
        limits.count_failed_authentication(request.remote_addr or "-")


def current_limits() -> Limits:
    """The counters of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]


def _per_minute(amount: int) -> RateLimitItem | None:
    return RateLimitItemPerMinute(amount) if amount > 0 else None
