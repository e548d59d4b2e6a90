"""The Edge Drive wire contract (spec §1–§7), without any I/O.

Shared by the uploader and the emulator: header names, how names and paths are encoded,
how responses are rendered (XML, flat JSON, wrapped JSON) and read back into small
dataclasses, and which error class a status code stands for.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import functools
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

# --- headers and fixed values -------------------------------------------------------------

AUTHTOKEN = "Authtoken"
FILE_NAME = "FileName"
FILE_SIZE = "FileSize"
FILE_MTIME = "FileModifiedtime"
PARENT_FOLDER = "ParentFolderPath"
FILE_EOF = "FileEOF"
EXTERNAL_GUID = "ExternalFileGUID"
FULL_FILE_HASH = "FullFileHash"
BLOCK_LEVEL_HASH = "BlockLevelHash"
BLOCK_LEVEL_HASH_ALIAS = "BlockLevelFileHash"

#: Block size of the block-level integrity hash, and so the chunk size when it is used.
BLOCK_SIZE = 4 * 1024 * 1024

#: FileModifiedtime values after this (year 3000) are milliseconds, not seconds.
MAX_MTIME_SECONDS = 32_503_680_000

UPLOAD_RESP = "DM2ContentIndexing_UploadFileResp"
LOGIN_RESP = "DM2ContentIndexing_CheckCredentialResp"
FILE_RESOURCE_RESP = "App_FileResourceResponse"
FILE_RESOURCE_INFO = "App_FileResourceInfo"
SHARES_RESP = "App_GetSharedFoldersResp"
GENERIC_RESP = "App_GenericResp"

#: Status codes after which the request may be retried (with §8 recovery for uploads).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def last_value(raw: str | None) -> str | None:
    """The effective value of a header that may hold a comma-joined list: the last wins."""
    if raw is None:
        return None
    return raw.rsplit(",", 1)[-1].strip()


def is_true(raw: str | None) -> bool:
    """Query flags such as forceRestart: `true` or `1`, ignoring case; anything else is false."""
    return raw is not None and raw.strip().lower() in ("true", "1")


# --- names and paths ----------------------------------------------------------------------


def encode_name(text: str) -> str:
    """UTF-8, then standard base64 with padding: `Tulip.jpg` → `VHVsaXAuanBn`."""
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def decode_name(value: str) -> str:
    """The inverse of `encode_name`; ValueError when not base64 or not UTF-8."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"not base64 of UTF-8 text: {value!r}") from exc


@functools.lru_cache(maxsize=4096)  # files arrive folder by folder: the same few paths recur
def split_remote_path(path: str) -> tuple[str, ...]:
    """The components of an Edge Drive path, `\\` or `/` separated, relative to the root.

    Repeated and trailing separators are dropped; `.` components too. Raises ValueError for
    `..`, NUL characters and drive letters, which the server answers with 400.
    """
    if "\x00" in path:
        raise ValueError("path contains a NUL character")
    parts = [p for p in path.replace("/", "\\").split("\\") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise ValueError("path contains a '..' component")
        if len(part) >= 2 and part[1] == ":" and part[0].isalpha():
            raise ValueError("path contains a drive letter")
    return tuple(parts)


def join_remote_path(parts: Iterable[str]) -> str:
    """`("a", "b")` → `\\a\\b`; `()` → `\\` (the root)."""
    return "\\" + "\\".join(parts)


def remote_child(folder: str, *names: str) -> str:
    return join_remote_path((*split_remote_path(folder), *names))


def mtime_seconds(st_mtime_ns: int) -> int:
    """FileModifiedtime: whole UNIX seconds, never milliseconds."""
    return st_mtime_ns // 1_000_000_000


# --- response formats ---------------------------------------------------------------------


class Format(enum.Enum):
    XML = "xml"
    JSON = "json"  # flat: current servers
    WRAPPED = "wrapped"  # older servers: root name wraps "@"-named string fields


def negotiate(accept: str | None, json_dialect: Format = Format.JSON) -> Format:
    """XML unless Accept asks for JSON; a missing or `*/*` Accept gets XML (chosen)."""
    if accept and "json" in accept.lower():
        return json_dialect
    return Format.XML


CONTENT_TYPES = {
    Format.XML: "application/xml; charset=utf-8",
    Format.JSON: "application/json; charset=utf-8",
    Format.WRAPPED: "application/json; charset=utf-8",
}

Scalar = str | int | bool
Fields = Mapping[str, Scalar]


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def render(
    fmt: Format,
    root: str,
    fields: Fields,
    children: Mapping[str, Sequence[Fields]] | None = None,
) -> bytes:
    """One response document: a root element with attribute fields and child elements."""
    children = children or {}
    if fmt is Format.XML:
        # XML is imported by the first XML body (~2 ms of every start otherwise): the
        # uploader asks for JSON, and only the emulator's XML clients need it.
        import xml.etree.ElementTree as ET

        elem = ET.Element(root, {k: _text(v) for k, v in fields.items()})
        for tag, items in children.items():
            for item in items:
                ET.SubElement(elem, tag, {k: _text(v) for k, v in item.items()})
        xml: bytes = ET.tostring(elem, encoding="utf-8", xml_declaration=False)
        return xml
    if fmt is Format.JSON:
        flat: dict[str, object] = dict(fields)
        for tag, items in children.items():
            flat[tag] = [dict(item) for item in items]
        return json.dumps(flat, ensure_ascii=False).encode("utf-8")
    inner: dict[str, object] = {f"@{k}": _text(v) for k, v in fields.items()}
    for tag, items in children.items():
        inner[tag] = [{f"@{k}": _text(v) for k, v in item.items()} for item in items]
    return json.dumps({root: inner}, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Node:
    """A parsed response element, whatever the format: string fields and child elements."""

    name: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    children: Mapping[str, tuple[Node, ...]] = field(default_factory=dict)
    text: str = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)

    def int(self, key: str, default: int = 0) -> int:
        value = self.fields.get(key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def all(self, tag: str) -> tuple[Node, ...]:
        return self.children.get(tag, ())

    def first(self, tag: str) -> Node | None:
        items = self.children.get(tag, ())
        return items[0] if items else None


#: JSON values that become a field as `str(value)` (bool is not among them: it is "1"/"0").
_PLAIN_SCALARS = frozenset({str, int, float})


def _node_from_json(name: str, value: object) -> Node:
    if isinstance(value, dict) and all(type(v) in _PLAIN_SCALARS for v in value.values()):
        # Every upload reply is one flat object: a single pass, no per-item type dispatch.
        return Node(name, {str(k).removeprefix("@"): str(v) for k, v in value.items()})
    fields: dict[str, str] = {}
    children: dict[str, list[Node]] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            key = str(key)
            if isinstance(item, Mapping):
                children.setdefault(key, []).append(_node_from_json(key, item))
            elif isinstance(item, list):
                for sub in item:
                    if isinstance(sub, Mapping):
                        children.setdefault(key, []).append(_node_from_json(key, sub))
            elif item is not None:
                text = ("1" if item else "0") if isinstance(item, bool) else str(item)
                fields[key.removeprefix("@")] = text
    return Node(name, fields, {k: tuple(v) for k, v in children.items()})


def _node_from_xml(elem: ET.Element) -> Node:
    children: dict[str, list[Node]] = {}
    for sub in elem:
        children.setdefault(sub.tag, []).append(_node_from_xml(sub))
    return Node(
        elem.tag, dict(elem.attrib), {k: tuple(v) for k, v in children.items()}, elem.text or ""
    )


def _has_at_names(value: object) -> bool:
    """Whether a JSON value holds an "@"-named field anywhere: the wrapped dialect's mark."""
    if isinstance(value, Mapping):
        return any(str(k).startswith("@") or _has_at_names(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_at_names(item) for item in value)
    return False


#: Reads the JSON text of `_json_object`: `json.loads` of bytes first guesses their encoding
#: and matches whitespace around the value with regular expressions, a third of a reply's
#: reading (one per request of a run).
_JSON = json.JSONDecoder()
#: What JSON allows around a value (RFC 8259): `str.strip()` alone would take more.
_JSON_SPACE = " \t\n\r"


def _json_object(body: bytes) -> dict[str, object] | None:
    """The body as a JSON object, when it is one, in UTF-8, and starts with its brace; else
    None (other bodies, UTF-16 JSON among them, are read by `parse_body`)."""
    if body[:1] != b"{":
        return None
    try:
        text = body.decode()
        data, end = _JSON.raw_decode(text)
    except ValueError:
        return None
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        return None  # more than whitespace after the object: not one JSON text
    return data if type(data) is dict else None


def parse_body(body: bytes) -> Node:
    """Read any response body: XML, flat JSON or wrapped JSON; anything else as text."""
    stripped = body.strip()
    if stripped.startswith(b"<"):
        import xml.etree.ElementTree as ET  # see `render`

        try:
            return _node_from_xml(ET.fromstring(stripped))
        except ET.ParseError:
            return Node(text=body.decode("utf-8", "replace"))
    if stripped.startswith(b"{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            return Node(text=body.decode("utf-8", "replace"))
        if isinstance(data, dict) and len(data) == 1:
            ((key, value),) = data.items()
            # Wrapped dialect: {"Root": {"@field": "…", …}}, or a root with only child
            # elements, whose fields carry the "@" ({"Root": {"errList": [{"@errorCode": …}]}}).
            if isinstance(value, dict) and _has_at_names(value):
                return _node_from_json(str(key), value)
        return _node_from_json("", data)
    return Node(text=body.decode("utf-8", "replace"))


# --- typed replies ------------------------------------------------------------------------


def _error_code(node: Node) -> int:
    # Some older servers send 200 for success; both mean success.
    code = node.int("errorCode", 0)
    return 0 if code == 200 else code


class UploadReply(NamedTuple):
    """An upload request's reply. A named tuple, not a frozen dataclass: one per request of
    a run, and the frozen dataclass cost ~1.5 µs more to build (benchmarks/README.md)."""

    request_id: str
    chunk_offset: int
    error_code: int = 0
    error_string: str = ""
    file_guid: str | None = None
    integrity_verified: bool = False

    @classmethod
    def from_node(cls, node: Node) -> UploadReply:
        return cls(
            request_id=node.get("requestId", "") or "",
            chunk_offset=node.int("chunkOffset", 0),
            error_code=_error_code(node),
            error_string=node.get("errorString", "") or "",
            file_guid=node.get("fileGUID") or None,
            integrity_verified=node.get("fileIntegrityVerified") in ("1", "true", "True"),
        )

    @classmethod
    def from_body(cls, body: bytes) -> UploadReply:
        """The reply in a response body. The flat JSON object a server sends to `Accept:
        application/json` is read straight from the decoded object, without a Node: one per
        request of a run, where the Node cost half of the reading (benchmarks/README.md).
        Anything else (XML, wrapped JSON, fields of other types) goes through `parse_body`,
        whose reading the direct one matches field by field."""
        data = _json_object(body)
        if data is not None:
            request_id = data.get("requestId")
            offset = data.get("chunkOffset")
            code = data.get("errorCode", 0)
            error = data.get("errorString", "")
            guid = data.get("fileGUID")
            if (
                type(request_id) is str
                and type(offset) is int
                and type(code) is int
                and type(error) is str
                and (guid is None or type(guid) is str)
            ):
                verified = data.get("fileIntegrityVerified")
                return cls(
                    request_id=request_id,
                    chunk_offset=offset,
                    error_code=0 if code == 200 else code,
                    error_string=error,
                    file_guid=guid or None,
                    integrity_verified=(
                        verified is True
                        or (type(verified) is int and verified == 1)
                        or verified in ("1", "true", "True")
                    ),
                )
        return cls.from_node(parse_body(body))


@dataclass(frozen=True)
class LoginReply:
    token: str | None
    user_name: str = ""
    user_guid: str = ""
    error_code: int = 0
    error_message: str = ""

    @classmethod
    def from_node(cls, node: Node) -> LoginReply:
        err = node.first("errList")
        return cls(
            token=node.get("token") or None,
            user_name=node.get("userName", "") or "",
            user_guid=node.get("userGUID", "") or "",
            error_code=err.int("errorCode", 0) if err else _error_code(node),
            error_message=(
                (err.get("errLogMessage", "") or "") if err else (node.get("errorString", "") or "")
            ),
        )


@dataclass(frozen=True)
class FileResource:
    name: str
    path: str
    is_directory: bool
    size: int = 0
    modified_time: int = 0
    guid: str = ""
    parent_path: str = ""

    @classmethod
    def from_node(cls, node: Node) -> FileResource:
        return cls(
            name=node.get("name", "") or "",
            path=node.get("path", "") or "",
            is_directory=node.get("directory") in ("1", "true", "True"),
            size=node.int("sizeinBytes", 0),
            modified_time=node.int("modifiedTime", 0),
            guid=node.get("GUID", "") or "",
            parent_path=node.get("parentPath", "") or "",
        )


@dataclass(frozen=True)
class ShareInfo:
    share_id: str
    name: str
    permission: str = ""  # as the server words it
    owner: str = ""
    public: bool = False

    @classmethod
    def from_node(cls, node: Node) -> ShareInfo:
        owner = node.get("owner") or node.get("ownerName") or ""
        if not owner:
            # Some servers nest the owner as an element: <owner userName="…"/>.
            nested = node.first("owner")
            owner = (nested.get("userName") or nested.get("name") or "") if nested else ""
        return cls(
            share_id=node.get("syncWebFolderId", "") or "",
            name=node.get("syncWebFolderName", "") or "",
            permission=node.get("permission", "") or "",
            owner=owner,
            public=node.get("public") in ("1", "true", "True"),
        )

    @property
    def writable(self) -> bool | None:
        """Whether uploads are allowed; None when the server says nothing about it."""
        word = self.permission.strip().lower()
        if not word:
            return None
        return not any(view in word for view in ("view", "read"))


# --- status codes → errors ----------------------------------------------------------------


def retry_after_seconds(raw: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date."""
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: How servers say that a name is refused (the emulator's --windows-names says "not allowed").


#: The longest piece of a response body that goes into a message (an HTML error page would
#: otherwise fill the screen).
SHORT_TEXT = 120


_TAG = re.compile(r"<[^>]*>")


def short_text(text: str) -> str:
    """One short line of a server's words: markup dropped (an HTML error page keeps its
    words), whitespace folded, cut at SHORT_TEXT characters."""
    if "<" in text:
        text = _TAG.sub(" ", text)
    line = " ".join(text.split())
    return line if len(line) <= SHORT_TEXT else line[: SHORT_TEXT - 1] + "…"
