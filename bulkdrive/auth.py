"""The login token of a run: Login, RenewLoginToken, Logout, and requests sent with it.

A 401 renews the token once for all concurrent requests: every request remembers the token
generation it was sent with, and only a request whose generation is still current renews
(RenewLoginToken with the Login's deviceId, or a fresh Login when renewal is refused). A 401
that comes after the token was idle teaches the server's idle limit; from then on a token
idle for half of it is renewed before it is used.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
from tenacity import RetryCallState, RetryError
from yarl import URL

from bulkdrive import errors, protocol
from bulkdrive.config import Credentials, Secret, TransferConfig
from bulkdrive.protocol import LoginReply, Node
from bulkdrive.retry import retrying
from bulkdrive.transport import Body, Response, Transport, reply_error

__all__ = ["Auth"]

#: The longest wait between two tries of the first login (the whole is bounded by the
#: connect timeout).
FIRST_LOGIN_MAX_WAIT = 2.0
#: Login replies of an Edge Drive server carry one of these (spec §2); a page without any is
#: some other web server.
_LOGIN_FIELDS = ("token", "errorCode", "errorMessage", "errorString", "userName")
#: A 401 after at least this many idle seconds teaches the client the server's idle limit;
#: shorter ones are other causes (a restarted server, a revoked token).
MIN_LEARNED_IDLE = 1.0
#: Renew before a request once the token has been idle this share of the limit learned.
IDLE_RENEWAL_SHARE = 0.5


class Auth:
    """The token of one client, and the requests that carry it."""

    def __init__(
        self, transport: Transport, credentials: Credentials, config: TransferConfig
    ) -> None:
        self._transport = transport
        self._credentials = credentials
        self._config = config
        device = credentials.device_id
        self._device_id = device.reveal() if device is not None else uuid.uuid4().hex
        self._token: Secret | None = credentials.token
        self._owns_token = False  # a token we got from Login/Renew, so ours to log out
        self._generation = 0
        self._lock = anyio.Lock()
        self._used_at = time.monotonic()
        self._idle_limit: float | None = None  # seconds of idleness a token was refused after
        self.logins = self.renewals = 0

    @property
    def user(self) -> str:
        return self._credentials.user or "this user"

    def handoff(self) -> Credentials:
        """This token and deviceId, for other processes of the run (`--cluster` workers):
        they use the token and can renew it, and never see the password."""
        if self._token is None:
            raise errors.LoginFailed("not logged in: no token to hand to the workers")
        return Credentials(
            user=self._credentials.user, token=self._token, device_id=Secret(self._device_id)
        )

    # --- requests with the token ----------------------------------------------------------

    async def send(
        self,
        method: str,
        path: str | URL,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Body | None = None,
        final: bool = False,
        paced: bool = False,
        upload: bool = False,
    ) -> Response:
        """One request with the token. A 401 renews the token before it is raised as
        TokenExpired."""
        if paced and self._transport.bandwidth is not None:
            await self._transport.pace(data)
        # The token is taken now, after the wait for bandwidth, not before: a token read
        # before a long wait arrives idle, or already replaced by another request's renewal.
        now = time.monotonic()
        idle = now - self._used_at
        if self._renewal_due(idle):
            await self._reauthenticate(self._generation)
            idle = 0.0
            now = time.monotonic()
        self._used_at = now
        generation = self._generation
        response = await self._transport.send(
            method,
            path,
            what=what,
            token=self._token.reveal() if self._token is not None else None,
            params=params,
            headers=headers,
            data=data,
            final=final,
            upload=upload,
        )
        if response.status == 401:
            self._transport.failed += 1
            if generation != self._generation:
                # Another request replaced the token while this one was out: not this
                # request's fault, and nothing to renew. Send again with the new token.
                raise errors.TokenExpired(
                    f"{what}: HTTP 401 for a token already replaced", replaced=True
                )
            if idle >= MIN_LEARNED_IDLE:
                # Refused after `idle` seconds without use: the server's idle limit is below.
                self._idle_limit = min(self._idle_limit or idle, idle)
            await self._reauthenticate(generation)
            raise reply_error(response, what=what)  # counted once, above
        return response

    def _renewal_due(self, idle: float) -> bool:
        """Whether to renew the token before using it: it has been idle about as long as a
        token was once refused for idleness (the server's limit is unknown until then)."""
        return self._idle_limit is not None and idle >= IDLE_RENEWAL_SHARE * self._idle_limit

    # --- login, renewal, logout -----------------------------------------------------------

    async def first_login(self) -> None:
        """Log in at the start of the run. A server that cannot be reached is retried like
        any passing fault, but for a bounded time (the connect timeout), then called
        unreachable in one line: a wrong URL should not cost minutes of backoff."""
        retry = self._config.retry
        policy = dataclasses.replace(retry, max_wait=min(FIRST_LOGIN_MAX_WAIT, retry.max_wait))
        window = self._config.timeouts.connect
        seen: list[BaseException | None] = [None]  # the last error, for the message

        def remember(state: RetryCallState) -> None:
            seen[0] = state.outcome.exception() if state.outcome is not None else None

        base = self._transport.base
        try:
            with anyio.fail_after(window):
                async for attempt in retrying(policy, before_sleep=remember):
                    with attempt:
                        await self._login()
        except TimeoutError:
            why = f": {seen[0]}" if seen[0] is not None else ": no answer"
            raise errors.ServerUnreachable(
                f"cannot log in at {base} within {window:g} seconds (--connect-timeout){why}"
            ) from None
        except RetryError as failure:
            last = failure.last_attempt.exception()
            raise errors.ServerUnreachable(f"cannot log in at {base}: {last}") from None

    async def _login(self) -> None:
        password = self._credentials.password
        if password is None:
            raise errors.LoginFailed("the token was refused and there is no password to log in")
        body = {
            "username": self._credentials.user,
            "password": base64.b64encode(password.reveal().encode("utf-8")).decode("ascii"),
            "deviceId": self._device_id,
        }
        response = await self._post("Login", "login", body)
        self.logins += 1
        reply = LoginReply.from_node(response.node)
        if response.status != 200 or reply.token is None:
            if response.status in protocol.TRANSIENT_STATUSES:
                raise self._transport.error(response, what="login")  # counted there
            self._transport.failed += 1
            base = self._transport.base
            if not _speaks_edge_drive(response):
                raise errors.NotEdgeDrive(
                    f"{base} is not an Edge Drive web-service root: its Login answered "
                    f"HTTP {response.status}: {protocol.short_text(_server_says(response.node))}",
                    status=response.status,
                )
            said = reply.error_message or _server_says(response.node) or "no token in the reply"
            raise errors.LoginFailed(
                f"login as {self._credentials.user!r} refused: {protocol.short_text(said)}",
                status=response.status,
            )
        self._took(reply.token)

    async def _renew(self) -> bool:
        """RenewLoginToken with the Login's deviceId; False when the server refuses it."""
        if self._token is None:
            return False
        body = {"sessionId": self._token.reveal(), "deviceId": self._device_id}
        response = await self._post("RenewLoginToken", "renew token", body)
        token = response.node.get("token")
        if response.status != 200 or not token:
            return False
        self._took(token)
        self.renewals += 1
        return True

    def _took(self, token: str) -> None:
        self._token = Secret(token)
        self._owns_token = True
        self._used_at = time.monotonic()

    async def _post(self, path: str, what: str, body: Mapping[str, Any]) -> Response:
        return await self._transport.send("POST", path, what=what, json_body=body)

    async def _reauthenticate(self, seen_generation: int) -> None:
        """Replace a token the server refused, once for all requests that saw it refused."""
        async with self._lock:
            if self._generation != seen_generation:
                return  # another request renewed it already
            if not await self._renew():
                await self._login()
            self._generation += 1

    async def logout(self) -> None:
        if not self._owns_token or self._token is None:
            return  # a ready token belongs to the user: logging it out would break their use
        with anyio.move_on_after(self._config.timeouts.connect):
            # The token expires by itself; the run's outcome does not depend on the logout.
            with contextlib.suppress(errors.BulkdriveError):
                await self.send("POST", "Logout", what="logout")
        self._token = None


def _speaks_edge_drive(response: Response) -> bool:
    """Whether a Login reply comes from the Edge Drive API: a structured body with its fields.
    A 404, 405 or 501 means no Login endpoint at this URL, whatever the body."""
    if response.status in (404, 405, 501):
        return False
    node = response.node
    return node.first("errList") is not None or any(node.get(k) is not None for k in _LOGIN_FIELDS)


def _server_says(node: Node) -> str:
    """The server's own words in a reply."""
    return node.get("errorString") or node.get("errorMessage") or node.text.strip()
