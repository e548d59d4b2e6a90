"""The emulator's authentication: Login, RenewLoginToken and Logout, tokens kept hashed."""

from __future__ import annotations

import secrets
import time
import uuid

from aiohttp import web

from bulkdrive import protocol
from bulkdrive.emulator.config import DEFAULT_TOKEN_IDLE_SECONDS
from bulkdrive.emulator.database import StoredToken
from bulkdrive.emulator.wire import Ctx, Refusal, Routes, Token, header, token_digest


class AuthRoutes(Routes):
    """Login, RenewLoginToken and Logout."""

    async def _login(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        root = protocol.LOGIN_RESP
        try:
            fields = await self._request_fields(request)
            username = fields.get("username")
            encoded = fields.get("password")
            if not username or encoded is None:
                raise Refusal(400, "username and password are required")
            try:
                password = protocol.decode_name(encoded)
            except ValueError:
                raise Refusal(400, "the password must be base64 of UTF-8 text") from None
            idle = self.config.token_idle_seconds
            if fields.get("timeout"):
                try:
                    minutes = float(fields["timeout"])
                except ValueError:
                    raise Refusal(400, "timeout must be a number of minutes") from None
                if minutes <= 0:
                    raise Refusal(400, "timeout must be positive")
                # Login's timeout wins, but never beyond a shortened --token-idle-seconds.
                if idle < DEFAULT_TOKEN_IDLE_SECONDS:
                    idle = min(idle, minutes * 60)
                else:
                    idle = minutes * 60
        except Refusal as exc:
            return self._error(ctx.fmt, root, exc.status, exc.message)
        user = self.users.get(username)
        if user is None or not secrets.compare_digest(
            user.password.encode("utf-8", "surrogateescape"),
            password.encode("utf-8", "surrogateescape"),
        ):
            self._counters.failed_logins += 1
            return self._reply(
                ctx.fmt,
                root,
                {},
                children={
                    "errList": [
                        {"errorCode": 1116, "errLogMessage": "Invalid Username or Password"}
                    ]
                },
            )
        token = await self._new_token(username, fields.get("deviceId", ""), idle)
        self._counters.logins += 1
        return self._reply(
            ctx.fmt,
            root,
            {
                "token": token,
                "userName": username,
                "userGUID": uuid.uuid5(uuid.NAMESPACE_OID, f"bulkdrive:{username}").hex,
                "aliasName": "1",
            },
        )

    async def _new_token(self, user: str, device_id: str, idle: float) -> str:
        token = "QSDK " + secrets.token_hex(96)
        digest = token_digest(token)
        self._tokens[digest] = Token(user, device_id, idle, time.time())
        await self.store.save_token(StoredToken(digest, user, device_id, idle))
        return token

    async def _renew(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        try:
            fields = await self._request_fields(request)
        except Refusal as exc:
            return self._error(ctx.fmt, protocol.LOGIN_RESP, exc.status, exc.message)
        old = fields.get("sessionId") or ""
        entry = self._tokens.get(token_digest(old)) if old else None
        # An expired but known token may be renewed; the deviceId must match Login's.
        if entry is None or fields.get("deviceId", "") != entry.device_id:
            return self._denied(ctx.fmt)
        token = await self._new_token(entry.user, entry.device_id, entry.idle_seconds)
        self._counters.renewals += 1
        return self._reply(ctx.fmt, protocol.LOGIN_RESP, {"token": token, "userName": entry.user})

    async def _logout(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        if self._user_of(request) is None:
            return self._denied(ctx.fmt)
        token = header(request, protocol.AUTHTOKEN) or ""
        digest = token_digest(token)
        self._tokens.pop(digest, None)
        await self.store.delete_token(digest)
        return web.Response(text="User logged out", content_type="text/plain")
