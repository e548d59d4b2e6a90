"""The emulator's upload sessions (spec §4-§6, §8): initiate, chunks, whole small files and
completion, with the faults injected around them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiohttp import web

from bulkdrive import protocol
from bulkdrive.emulator import faults as fault_kinds
from bulkdrive.emulator.records import Completed, Session, StoreTarget
from bulkdrive.emulator.refusals import BUSY_SESSION, BodyIncomplete, StoreError, Why
from bulkdrive.emulator.wire import (
    Ctx,
    Refusal,
    Routes,
    UploadRecord,
    completed_json,
    drop_connection,
    header,
    query_params,
)

#: Whole files up to this size that arrive in one request are stored in one step.
ONE_STEP_FILE_BYTES = 1024 * 1024


class UploadRoutes(Routes):
    """The three upload routes (a share, the user's drive, a public share)."""

    async def _public_upload(self, request: web.BaseRequest, ctx: Ctx) -> web.StreamResponse:
        return await self._upload(request, ctx, public=True)

    async def _upload(
        self, request: web.BaseRequest, ctx: Ctx, public: bool = False
    ) -> web.StreamResponse:
        """An upload to a share or the user's drive (the route's handler itself: one await
        less per request), or to a public share (`public`)."""
        fmt = ctx.fmt
        root = protocol.UPLOAD_RESP
        queries = query_params(request)
        upload_type = (queries.get("uploadtype") or "").lower()
        request_id = queries.get("requestid") if upload_type == "chunkedfile" else None
        kind = "fullFile" if upload_type == "fullfile" else "chunk" if request_id else "initiate"
        share = ctx.share_id or ""
        eof = protocol.is_true(header(request, protocol.FILE_EOF))
        fault = self.faults.draw()
        if fault is not None:
            self._counters.faults[fault] += 1
        if fault in (fault_kinds.FAULT_500, fault_kinds.FAULT_503):
            status = int(fault or 500)
            self._record(kind, share, "", request_id or "", 0, 0, status, eof, fault)
            response = self._error(fmt, root, status, "injected server fault")
            if status == 503:
                response.headers["Retry-After"] = "0"
            return response
        if fault == fault_kinds.FAULT_RESET:
            self._record(kind, share, "", request_id or "", 0, 0, 0, eof, fault)
            return drop_connection(request, reset=True)
        if fault == fault_kinds.FAULT_DELAY:
            await self.fault_delay()
        try:
            if public:
                found = self.shares.get(share)
                if found is None or not found.public:
                    raise Refusal(404, f"public share {share} does not exist")
                target = self._resolve_share(share, upload=True)
            else:
                resolved = self._authorized_target(request, ctx, upload=True)
                # Not isinstance(..., web.Response): a MutableMapping, checked through its ABC.
                if not isinstance(resolved, StoreTarget):
                    self._record(kind, share, "", request_id or "", 0, 0, 401, eof, fault)
                    return resolved
                target = resolved
            if upload_type not in ("chunkedfile", "fullfile"):
                raise Refusal(400, "uploadType must be chunkedFile or fullFile")
            length = request.content_length
            if length is not None and length > self.config.max_chunk_bytes:
                raise Refusal(
                    413,
                    f"the body is larger than the largest accepted request "
                    f"({self.config.max_chunk_bytes} bytes)",
                )
            if request_id:
                response = await self._chunk(request, fmt, target, request_id, eof, length, fault)
            else:
                response = await self._initiate(
                    request,
                    fmt,
                    target,
                    queries,
                    full_file=upload_type == "fullfile",
                    eof=eof,
                    length=length,
                    fault=fault,
                )
        except Refusal as exc:
            self._record(kind, share, "", request_id or "", 0, 0, exc.status, eof, fault)
            return self._error(fmt, root, exc.status, exc.message)
        if fault == fault_kinds.FAULT_LOST_RESPONSE:
            return drop_connection(request, reset=False)
        return response

    def _completed(
        self, fmt: protocol.Format, request_id: str, completed: Completed
    ) -> web.Response:
        """The 200 of the request that completed a file."""
        if fmt is protocol.Format.JSON:
            body = completed_json(
                request_id, completed.size, completed.guid, completed.integrity_verified
            )
            return web.Response(body=body, content_type="application/json", charset="utf-8")
        fields: dict[str, str | int] = {
            "requestId": request_id,
            "chunkOffset": completed.size,
            "errorCode": 0,
            "fileGUID": completed.guid,
        }
        if completed.integrity_verified:
            fields["fileIntegrityVerified"] = 1
        return self._reply(fmt, protocol.UPLOAD_RESP, fields)

    def _record(
        self,
        kind: str,
        share: str,
        path: str,
        request_id: str,
        offset_before: int,
        body_bytes: int,
        status: int,
        eof: bool,
        fault: str | None,
    ) -> None:
        self.upload_log.append(
            UploadRecord(
                kind, share, path, request_id, offset_before, body_bytes, status, eof, fault
            )
        )

    async def _initiate(
        self,
        request: web.BaseRequest,
        fmt: protocol.Format,
        target: StoreTarget,
        queries: Mapping[str, str],
        *,
        full_file: bool,
        eof: bool,
        length: int | None,
        fault: str | None,
    ) -> web.Response:
        """`eof`: the request's FileEOF (a full-file upload is always the last request);
        `length`: its Content-Length."""
        root = protocol.UPLOAD_RESP
        kind = "fullFile" if full_file else "initiate"
        if full_file:
            self._counters.full_files += 1
        else:
            self._counters.initiates += 1
        name, parent, size, mtime, guid = self._file_headers(request)
        path = protocol.join_remote_path((*parent, name))
        eof = eof or full_file
        force = protocol.is_true(queries.get("forcerestart"))
        verify = protocol.is_true(queries.get("verifyblocklevelfileintegrity"))

        def done(status: int, applied: int = 0, request_id: str = "") -> None:
            self._record(kind, target.key, path, request_id, 0, applied, status, eof, fault)

        if length is not None and length > size:
            raise Refusal(400, "the body is longer than FileSize")
        if full_file and length is not None and length != size:
            raise Refusal(400, "a full-file upload's body must be exactly FileSize bytes")
        if eof and length is not None and length != size:
            raise Refusal(400, "FileEOF is 1 but the body has fewer bytes than FileSize")
        block_hash, full_hash = self._hash_headers(request)
        if eof and verify and block_hash is None:
            raise Refusal(400, "BlockLevelHash is required on the last chunk")

        existing = None
        if self.store.holds(target.key, parent, name):
            existing = await self._settled(target.key, parent, name)
        if existing is not None:
            if existing.busy:
                # Still receiving after the wait: its offset is not known yet (§5's "busy").
                self._counters.conflicts += 1
                raise Refusal(409, BUSY_SESSION)
            if not force:
                self._counters.conflicts += 1
                done(409, request_id=existing.request_id)
                return self._error(
                    fmt,
                    root,
                    409,
                    "an unfinished upload session exists for this file; resume it from "
                    "chunkOffset or use forceRestart=true",
                    requestId=existing.request_id,
                    chunkOffset=existing.offset,
                )
            await self.store.discard(existing)
        if eof and length is not None and length <= ONE_STEP_FILE_BYTES:
            return await self._small_file(
                request,
                fmt,
                target,
                parent,
                name,
                path,
                kind=kind,
                length=length,
                mtime=mtime,
                guid=guid,
                verify=verify,
                block_hash=block_hash,
                full_hash=full_hash,
                fault=fault,
            )
        try:
            session = await self.store.begin(
                target,
                parent,
                name,
                size=size,
                mtime=mtime,
                verify_block=verify,
                guid=guid,
                strict_parents=self.config.strict_parents,
                register=not full_file,
            )
        except StoreError as exc:
            if exc.status == 409 and exc.request_id:
                self._counters.conflicts += 1
                done(409, request_id=exc.request_id)
                return self._error(
                    fmt,
                    root,
                    409,
                    exc.message,
                    requestId=exc.request_id,
                    chunkOffset=exc.chunk_offset or 0,
                )
            done(exc.status)
            return self._error(fmt, root, exc.status, exc.message)
        return await self._receive(
            request,
            fmt,
            session,
            kind=kind,
            limit=size,
            eof=eof,
            block_hash=block_hash,
            full_hash=full_hash,
            registered=not full_file,
            new_session=True,
            fault=fault,
        )

    async def _small_file(
        self,
        request: web.BaseRequest,
        fmt: protocol.Format,
        target: StoreTarget,
        parent: tuple[str, ...],
        name: str,
        path: str,
        *,
        kind: str,
        length: int,
        mtime: int,
        guid: str | None,
        verify: bool,
        block_hash: str | None,
        full_hash: str | None,
        fault: str | None,
    ) -> web.Response:
        """A whole small file in one request: read it (one buffer at most), store it at once."""
        root = protocol.UPLOAD_RESP
        try:
            # An empty body has an empty stream, on which readexactly(0) would fail.
            body = await request.content.readexactly(length) if length else b""
        except Exception:
            self._record(kind, target.key, path, "", 0, 0, 400, True, fault)
            return self._error(fmt, root, 400, "body cut short")
        try:
            request_id, completed = await self.store.store_small(
                target,
                parent,
                name,
                body,
                mtime=mtime,
                guid=guid,
                verify_block=verify,
                block_hash=block_hash,
                full_hash=full_hash,
                strict_parents=self.config.strict_parents,
            )
        except StoreError as exc:
            if exc.why is Why.INTEGRITY:
                self._counters.integrity_failures += 1
            self._record(kind, target.key, path, "", 0, 0, exc.status, True, fault)
            return self._error(fmt, root, exc.status, exc.message)
        self._counters.bytes_received += length
        self._counters.completed_files += 1
        self._record(kind, target.key, path, request_id, 0, length, 200, True, fault)
        return self._completed(fmt, request_id, completed)

    async def _settled(self, target: str, parent: tuple[str, ...], name: str) -> Session | None:
        """The unfinished session of a file, after any chunk in flight on it has ended."""
        session = await self.store.find_for(target, parent, name)
        if session is not None and session.busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.idle.wait(), self.config.busy_wait_seconds)
            session = await self.store.find_for(target, parent, name)
        return session

    async def _chunk(
        self,
        request: web.BaseRequest,
        fmt: protocol.Format,
        target: StoreTarget,
        request_id: str,
        eof: bool,
        length: int | None,
        fault: str | None,
    ) -> web.Response:
        root = protocol.UPLOAD_RESP
        self._counters.chunks += 1
        session = await self.store.find(request_id)
        if session is None or session.target != target.key:
            self._record("chunk", target.key, "", request_id, 0, 0, 404, eof, fault)
            return self._error(
                fmt,
                root,
                404,
                f"upload session {request_id} not found (unknown, completed, expired or restarted)",
            )
        before = session.offset

        def done(status: int, applied: int = 0) -> None:
            self._record(
                "chunk", target.key, session.path, request_id, before, applied, status, eof, fault
            )

        if session.busy:
            self._counters.conflicts += 1
            done(409)
            return self._error(
                fmt,
                root,
                409,
                "another chunk of this session is still being received",
                requestId=request_id,
                chunkOffset=session.offset,
            )
        remaining = session.size - session.offset
        block_hash, full_hash = self._hash_headers(request)
        refusal: str | None = None
        if length is not None and length > remaining:
            refusal = "the body would take the file past its FileSize"
        elif eof and length is not None and length != remaining:
            refusal = "FileEOF is 1 but the total differs from FileSize"
        elif eof and session.verify_block and block_hash is None:
            refusal = "BlockLevelHash is required on the last chunk"
        if refusal is not None:
            done(400)
            return self._error(fmt, root, 400, refusal)
        return await self._receive(
            request,
            fmt,
            session,
            kind="chunk",
            limit=remaining,
            eof=eof,
            block_hash=block_hash,
            full_hash=full_hash,
            registered=True,
            new_session=False,
            fault=fault,
        )

    async def _receive(
        self,
        request: web.BaseRequest,
        fmt: protocol.Format,
        session: Session,
        *,
        kind: str,
        limit: int,
        eof: bool,
        block_hash: str | None,
        full_hash: str | None,
        registered: bool,
        new_session: bool,
        fault: str | None,
    ) -> web.Response:
        """The body of an initiate or a chunk, appended at the session's offset; then the
        file completed (`eof`) or the new offset answered. A body that fails ends an initiate's
        `new_session` (nothing of it stays) and leaves a chunk's session at its offset."""
        root = protocol.UPLOAD_RESP
        before = session.offset

        def done(status: int, applied: int = 0) -> None:
            self._record(
                kind,
                session.target,
                session.path,
                session.request_id,
                before,
                applied,
                status,
                eof,
                fault,
            )

        with session.receiving():
            try:
                applied, digest = await self.store.write_body(
                    session,
                    request.content.readany,
                    limit=limit,
                    max_bytes=self.config.max_chunk_bytes,
                    want_digest=session.verify_block,
                )
                if eof and applied != limit:
                    if not new_session:
                        await self.store.rollback(session)
                    raise StoreError(Why.EOF_SIZE_DIFFERS)
                await self.store.commit(session, applied, digest, persist=not eof)
            except (StoreError, BodyIncomplete) as exc:
                if new_session:
                    await self.store.discard(session, registered=registered)
                status = exc.status if isinstance(exc, StoreError) else 400
                message = exc.message if isinstance(exc, StoreError) else "body cut short"
                done(status)
                return self._error(fmt, root, status, message)
            self._counters.bytes_received += applied
            if not eof:
                done(200, applied)
                return self._reply(
                    fmt,
                    root,
                    {
                        "requestId": session.request_id,
                        "chunkOffset": session.offset,
                        "errorCode": 0,
                    },
                )
            return await self._complete(
                fmt,
                session,
                kind=kind,
                offset_before=before,
                applied=applied,
                block_hash=block_hash,
                full_hash=full_hash,
                registered=registered,
                fault=fault,
            )

    async def _complete(
        self,
        fmt: protocol.Format,
        session: Session,
        *,
        kind: str,
        offset_before: int,
        applied: int,
        block_hash: str | None,
        full_hash: str | None,
        registered: bool,
        fault: str | None,
    ) -> web.Response:
        root = protocol.UPLOAD_RESP

        def done(status: int) -> None:
            self._record(
                kind,
                session.target,
                session.path,
                session.request_id,
                offset_before,
                applied,
                status,
                True,
                fault,
            )

        try:
            completed = await self.store.complete(
                session,
                full_hash=full_hash,
                block_hash=block_hash,
                strict_parents=self.config.strict_parents,
                registered=registered,
            )
        except StoreError as exc:
            if exc.why is Why.INTEGRITY:
                self._counters.integrity_failures += 1
            done(exc.status)
            return self._error(fmt, root, exc.status, exc.message)
        self._counters.completed_files += 1
        done(200)
        return self._completed(fmt, session.request_id, completed)
