"""Property tests of the wire encoding: names, paths, and render → parse for all formats."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bulkdrive import protocol
from bulkdrive.protocol import Format, UploadReply, parse_body

# Any text a file name may hold on Linux or Windows, minus the separators Edge Drive uses.
name_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\\/\x00"),
    min_size=1,
    max_size=120,
).filter(lambda s: s not in (".", "..") and not (len(s) >= 2 and s[1] == ":" and s[0].isalpha()))

tricky_names = st.sampled_from(
    [
        "a b.txt",
        " leading and trailing ",
        "#hash#.bin",
        "100% sure.txt",
        ".hidden",
        "..double-dot-prefix",
        "Ünïcødé 文件 🎉.dat",
        "x" * 255,
        "é" * 127,  # 254 UTF-8 bytes
        "+/=?&",  # base64 and URL characters, without the separator
    ]
).filter(lambda s: "/" not in s)


@settings(max_examples=300)
@given(name=st.one_of(name_text, tricky_names))
def test_name_round_trips_through_base64(name: str) -> None:
    encoded = protocol.encode_name(name)
    assert encoded.isascii()
    assert protocol.decode_name(encoded) == name


@given(raw=st.binary(max_size=64))
def test_decode_name_refuses_what_is_not_base64_of_utf8(raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(ValueError):
            protocol.decode_name(base64.b64encode(raw).decode())
    else:
        assert protocol.decode_name(base64.b64encode(raw).decode()) == text


@settings(max_examples=300)
@given(parts=st.lists(st.one_of(name_text, tricky_names), max_size=6))
def test_remote_path_round_trips(parts: list[str]) -> None:
    assume(all(p != "." for p in parts))
    path = protocol.join_remote_path(parts)
    assert path.startswith("\\")
    assert "/" not in path
    assert protocol.split_remote_path(path) == tuple(parts)
    # The same path written with slashes, doubled or trailing separators means the same.
    sloppy = "/" + "//".join(parts) + "/"
    assert protocol.split_remote_path(sloppy) == tuple(parts)
    assert protocol.decode_name(protocol.encode_name(path)) == path


@pytest.mark.parametrize("bad", ["\\a\\..\\b", "a\x00b", "C:\\x", "\\d:"])
def test_invalid_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        protocol.split_remote_path(bad)


def test_mtime_is_whole_seconds() -> None:
    assert protocol.mtime_seconds(1_424_813_723_999_999_999) == 1_424_813_723
    assert protocol.mtime_seconds(1_424_813_723 * 10**9) <= protocol.MAX_MTIME_SECONDS


# --- render → parse ------------------------------------------------------------------------

identifier = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,11}", fullmatch=True)
# Attribute text XML can carry: no control characters, no lone surrogates.
value_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
scalar = st.one_of(value_text, st.integers(min_value=-(2**63), max_value=2**63), st.booleans())
fields_strategy = st.dictionaries(identifier.map(lambda k: "f" + k), scalar, max_size=5)
children_strategy = st.dictionaries(
    identifier.map(lambda k: "c" + k),
    st.lists(fields_strategy, min_size=1, max_size=3),
    max_size=3,
)


def _as_text(value: protocol.Scalar) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@settings(max_examples=300)
@given(
    fmt=st.sampled_from(list(Format)),
    root=identifier.map(lambda k: "R" + k),
    fields=fields_strategy,
    children=children_strategy,
)
def test_render_then_parse_gives_the_same_fields(
    fmt: Format,
    root: str,
    fields: dict[str, protocol.Scalar],
    children: dict[str, list[dict[str, protocol.Scalar]]],
) -> None:
    # A wrapped document with no field anywhere has nothing that marks the dialect.
    assume(fmt is not Format.WRAPPED or fields or any(any(i) for i in children.values()))
    node = protocol.parse_body(protocol.render(fmt, root, fields, children))
    assert dict(node.fields) == {k: _as_text(v) for k, v in fields.items()}
    assert set(node.children) == set(children)
    for tag, items in children.items():
        parsed = node.all(tag)
        assert [dict(p.fields) for p in parsed] == [
            {k: _as_text(v) for k, v in item.items()} for item in items
        ]
    if fmt is not Format.JSON:
        assert node.name == root


def test_wrapped_login_failure_keeps_the_server_message() -> None:
    body = protocol.render(
        Format.WRAPPED,
        protocol.LOGIN_RESP,
        {},
        children={"errList": [{"errorCode": 1116, "errLogMessage": "Invalid Username"}]},
    )
    reply = protocol.LoginReply.from_node(protocol.parse_body(body))
    assert reply.token is None
    assert reply.error_message == "Invalid Username"


@pytest.mark.parametrize("fmt", list(Format))
def test_upload_reply_reads_every_format(fmt: Format) -> None:
    body = protocol.render(
        fmt,
        protocol.UPLOAD_RESP,
        {
            "requestId": "1736204518",
            "chunkOffset": 4_194_304 * 1024,  # offsets beyond 4 GiB are normal
            "errorCode": 0,
            "fileGUID": "0" * 32,
            "fileIntegrityVerified": True,
        },
    )
    reply = protocol.UploadReply.from_node(protocol.parse_body(body))
    assert reply.request_id == "1736204518"
    assert reply.chunk_offset == 4_194_304 * 1024
    assert reply.error_code == 0
    assert reply.file_guid == "0" * 32
    assert reply.integrity_verified


def test_error_code_200_means_success() -> None:
    node = protocol.parse_body(b'<DM2ContentIndexing_UploadFileResp errorCode="200"/>')
    assert protocol.UploadReply.from_node(node).error_code == 0


# --- UploadReply.from_body: the direct reading matches the reading through a Node ------------

_REPLY_KEYS = (
    "requestId",
    "chunkOffset",
    "errorCode",
    "errorString",
    "fileGUID",
    "fileIntegrityVerified",
)
_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "0", "1", "200", "409", "true", "True", "abc", "4096"]),
    st.text(max_size=8),
)


@pytest.mark.parametrize(
    "body",
    [
        b'{"requestId": "R1", "chunkOffset": 4096, "errorCode": 0, "fileGUID": "G"}',
        b'{"requestId": "R1", "chunkOffset": 10, "errorCode": 200, "fileIntegrityVerified": 1}',
        b'{"requestId": "R1", "chunkOffset": 10, "fileIntegrityVerified": true}',
        b'{"requestId": "R1", "chunkOffset": 10, "fileIntegrityVerified": "true"}',
        b'{"requestId": "R1", "chunkOffset": 10.0}',
        b'{"requestId": "R1", "chunkOffset": "10"}',
        b'{"requestId": 7, "chunkOffset": 10}',
        b'{"@requestId": "R1", "@chunkOffset": "10"}',
        b'{"DM2ContentIndexing_UploadFileResp": {"@requestId": "R1", "@chunkOffset": "10"}}',
        b'{"errorCode": 409, "errorString": "busy", "requestId": "", "chunkOffset": 0}',
        b'<DM2ContentIndexing_UploadFileResp requestId="R1" chunkOffset="10" errorCode="0"/>',
        b"not a reply",
        b"",
        b"[1, 2]",
        b'{"requestId": "R1", "chunkOffset": 10, "fileGUID": {"nested": 1}}',
    ],
)
def test_upload_reply_from_body_reads_as_through_a_node(body: bytes) -> None:
    assert UploadReply.from_body(body) == UploadReply.from_node(parse_body(body))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_REPLY_KEYS), _JSON_VALUES))
def test_upload_reply_from_body_matches_for_any_flat_object(fields: dict[str, object]) -> None:
    body = json.dumps(fields).encode()
    assert UploadReply.from_body(body) == UploadReply.from_node(parse_body(body))
