"""Property tests of the pure pieces: names, merge patch, ranges, multipart, config, modes."""

import asyncio
import json
import unicodedata
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artstored import config as C
from artstored.api.download import content_disposition, parse_range
from artstored.api.multipart import MultipartStream
from artstored.engine import attrs as A
from artstored.engine import layout as L
from artstored.engine import modes as M
from artstored.engine.errors import (BadRequest, ConfirmationRequired, ModeNotAllowed,
                                     RangeNotSatisfiable, TransitionNotAllowed, ValidationError)

FILE_ID = "01a20691-6899-722d-be62-aaef65c3d7f4"
WHEN = datetime(2024, 2, 29, 23, 59, 58, tzinfo=timezone.utc)


@given(st.text(min_size=1, max_size=400), st.text(max_size=100))
def test_storage_filename_is_always_safe(name, user):
    out = L.storage_filename(name, user, WHEN, FILE_ID)
    assert len(out.encode("utf-8")) <= L.MAX_STORAGE_NAME_BYTES
    assert "/" not in out and "\\" not in out and "\x00" not in out
    assert not out.startswith((".", "-", " "))
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in out)
    assert f"_20240229T235958_{FILE_ID}" in out
    out.encode("utf-8")  # never a broken character


def test_storage_filename_examples():
    assert L.storage_filename("report.pdf", "bob", WHEN, FILE_ID) == \
        f"report_bob_20240229T235958_{FILE_ID}.pdf"
    assert L.storage_filename("../../etc/passwd", "bob", WHEN, FILE_ID).startswith("etc_passwd_")
    assert L.storage_filename("backup.tar.gz", "bob", WHEN, FILE_ID).endswith(".tar.gz")
    assert L.storage_filename("...", "bob", WHEN, FILE_ID).startswith("file_bob_")
    assert L.object_relpath(WHEN, "n") == "2024/02/29/23/n"


@given(st.text(max_size=300), st.integers(min_value=0, max_value=400))
def test_cut_utf8(text, limit):
    cut = L.cut_utf8(text, limit)
    assert text.startswith(cut)
    assert len(cut.encode("utf-8")) <= limit


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3), max_leaves=10)


@given(json_values, json_values)
def test_merge_patch_rfc7396_properties(target, patch):
    result = A.apply_merge_patch(target, patch)
    if not isinstance(patch, dict):
        assert result == patch
        return
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    if isinstance(target, dict):
        for key in set(target) - set(patch):
            assert result[key] == target[key]
    # Applying the same patch twice changes nothing more (idempotence).
    assert A.apply_merge_patch(result, patch) == result


def test_merge_patch_rfc7396_examples():
    # From RFC 7396 Appendix A.
    assert A.apply_merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert A.apply_merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert A.apply_merge_patch({"a": "b"}, {"a": None}) == {}
    assert A.apply_merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == \
        {"a": {"b": "d"}}
    assert A.apply_merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert A.apply_merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert A.apply_merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=20_000),
       st.integers(min_value=0, max_value=20_000))
def test_parse_range_within_bounds(size, a, b):
    for header in (f"bytes={a}-{b}", f"bytes={a}-", f"bytes=-{a}"):
        try:
            span = parse_range(header, size)
        except RangeNotSatisfiable:
            continue
        if span is not None:
            start, end = span
            assert 0 <= start <= end < size


def test_parse_range_cases():
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=0-1,2-3", 10) is None
    assert parse_range(None, 10) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=10-", 10)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-5", 0)


def test_content_disposition():
    header = content_disposition('a"b\\c%д.txt')
    assert header.startswith('attachment; filename="c__.txt"; ')  # fallback: last part
    assert header.endswith("filename*=UTF-8''a%22b%5Cc%25%D0%B4.txt")


class ChunkedReader:
    """Delivers a byte string in given pieces, like aiohttp's StreamReader.readany()."""

    def __init__(self, data: bytes, cuts: list[int]):
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        self.pieces = [data[a:b] for a, b in zip(points, points[1:]) if b > a]

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


async def _parse(body: bytes, cuts, boundary: bytes):
    stream = MultipartStream(ChunkedReader(body, cuts), boundary)
    parts = []
    while (part := await stream.next_part()) is not None:
        content = b"".join([bytes(p) async for p in stream.iter_body()])
        parts.append((part.name, part.filename, content))
    return parts


tricky_bytes = st.lists(st.sampled_from([b"\r\n", b"--", b"-", b"\r", b"\n", b"bnd", b"x",
                                         b"--bnd", b"\r\n--bn", b"\x00", b"\xff"]),
                        max_size=40).map(b"".join).filter(
    # A client picks a boundary that its content does not contain (RFC 2046 §5.1.1).
    lambda c: (c + b"\r\n--bnd").find(b"\r\n--bnd") == len(c))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["file", "description", "sha256"]), tricky_bytes),
                min_size=1, max_size=4),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_multipart_parser_any_split(parts, cuts):
    boundary = b"bnd"
    body = b"preamble\r\n"
    for name, content in parts:
        body += (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" +
                 name.encode() + b"\"; filename=\"f\"\r\n\r\n" + content + b"\r\n")
    body += b"--" + boundary + b"--\r\nepilogue"
    got = asyncio.run(_parse(body, cuts, boundary))
    assert [(n, c) for n, _, c in got] == parts


def test_multipart_parser_truncated():
    body = b"--bnd\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc"
    with pytest.raises(BadRequest) as info:
        asyncio.run(_parse(body, [], b"bnd"))
    assert info.value.code == "malformed_multipart"


def test_attr_encode_limit_and_v1_migration():
    attr = {"file_id": FILE_ID, "original_filename": "a", "storage_filename": "a",
            "file_size": 1, "created_at": A.format_time(WHEN), "checksum_sha256": "0" * 64}
    v1 = json.dumps(attr).encode()
    migrated = A.decode(v1)
    assert migrated["schema_version"] == "2.0"
    assert migrated["custom_attributes"] == {} and migrated["version"] == 1
    assert A.decode(A.encode(migrated)) == migrated
    with pytest.raises(Exception) as info:
        A.encode(dict(migrated, description="x" * 5000))
    assert info.value.code == "attr_too_large"


@pytest.mark.parametrize("value,code", [
    ([1], "custom_attributes_not_object"), ({"": 1}, "invalid_custom_attributes"),
    ({"a.b": 1}, "invalid_custom_attributes"), ({"a": {"b": {"c": {"d": {"e": 1}}}}},
                                                "invalid_custom_attributes"),
    ({"a": float("nan")}, "invalid_custom_attributes"),
])
def test_custom_attribute_rules(value, code):
    with pytest.raises(ValidationError) as info:
        A.validate_custom_attributes(value)
    assert info.value.code == code
    assert A.validate_custom_attributes({"отдел": "финансы", "year-2": [1, {"k": None}]})


def test_mode_table_matches_design():
    expected = {  # DESIGN §4, row by row
        M.UPLOAD: {M.EDIT, M.RW}, M.READ_METADATA: {M.EDIT, M.RW, M.RO, M.AR},
        M.READ_CONTENT: {M.EDIT, M.RW, M.RO}, M.UPDATE_METADATA: {M.EDIT, M.RW},
        M.DELETE: {M.EDIT},
    }
    for op, modes in expected.items():
        assert {m for m in M.MODES if M.allows(m, op)} == modes
        for m in set(M.MODES) - modes:
            with pytest.raises(ModeNotAllowed):
                M.require(m, op)


def test_mode_transitions():
    allowed = {(a, b) for a in M.MODES for b in M.MODES if a != b
               and _transition_ok(a, b)}
    assert allowed == {(M.RW, M.RO), (M.RO, M.AR), (M.RO, M.RW)}
    with pytest.raises(ConfirmationRequired):
        M.check_transition(M.RO, M.RW, confirmed=False)


def _transition_ok(a, b):
    try:
        M.check_transition(a, b, confirmed=True)
        return True
    except TransitionNotAllowed:
        return False


def test_config_layers(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[limits]\nmax_upload_bytes = "2GiB"\n[server]\nlisten = "0.0.0.0:9000"\n')
    cfg = C.load(str(path), env={"ARTSTORE_SERVER_LISTEN": "127.0.0.1:9001"})
    assert cfg["limits.max_upload_bytes"] == 2 * 1024 ** 3
    assert cfg.source("limits.max_upload_bytes") == str(path)
    assert cfg["server.listen"] == "127.0.0.1:9001"
    assert cfg.source("server.listen") == "env ARTSTORE_SERVER_LISTEN"
    cfg = C.load(None, env={"ARTSTORE_DATA_DIR": "/srv/a"},
                 overrides={"storage.data_dir": ("/srv/b", "flag --data-dir")})
    assert cfg["storage.data_dir"] == "/srv/b"
    defaults = C.load(None, env={})
    assert defaults["server.listen"] == "127.0.0.1:8470"
    assert defaults["storage.data_dir"] == "./artstore-data"


@pytest.mark.parametrize("text,needle", [
    ('[limits]\nmax_upload_bytes = "lots"\n', "limits.max_upload_bytes"),
    ('[storage]\nsync_method = "prayer"\n', "storage.sync_method"),
    ('[nope]\nx = 1\n', "unknown key nope.x"),
    ('[server]\nlisten = "nowhere"\n', "server.listen"),
    ("not toml [", "not valid TOML"),
])
def test_config_errors_name_the_key_and_file(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(C.ConfigError) as info:
        C.load(str(path), env={})
    assert needle in str(info.value) and str(path) in str(info.value)


def test_config_env_error_names_the_variable():
    with pytest.raises(C.ConfigError) as info:
        C.load(None, env={"ARTSTORE_AUTH_TOKEN_TTL_SECONDS": "soon"})
    assert "ARTSTORE_AUTH_TOKEN_TTL_SECONDS" in str(info.value)


def test_capacity_thresholds_take_the_smaller_of_percent_and_bytes():
    from artstored.engine.disks import GB, thresholds_for

    rw = thresholds_for("rw")
    big = 100_000 * GB  # 100 TB: the byte thresholds are the smaller ones
    assert rw.status(big, 200 * GB) == "ok"
    assert rw.status(big, 150 * GB) == "warning"
    assert rw.status(big, 80 * GB) == "critical"
    assert rw.status(big, 20 * GB) == "full"
    small = 100 * GB  # 100 GB: the percentages are the smaller ones
    assert rw.status(small, 16 * GB) == "ok"
    assert rw.status(small, 15 * GB) == "warning"
    assert rw.status(small, 8 * GB) == "critical"
    assert rw.status(small, 2 * GB) == "full"
    assert rw.reserve(small) == 2 * GB
    edit = thresholds_for("edit")
    assert edit.status(big, 100 * GB) == "warning" and edit.status(big, 10 * GB) == "full"


def test_and_not_is_rewritten_outside_phrases():
    from artstored.index.search import normalize_query

    assert normalize_query("a AND NOT b") == "a AND -b"
    assert normalize_query("a AND NOT (b OR c)") == "a AND -(b OR c)"
    assert normalize_query('"x AND NOT y" AND NOT z') == '"x AND NOT y" AND -z'
    assert normalize_query('"a \\" AND NOT b" AND NOT c') == '"a \\" AND NOT b" AND -c'
    assert normalize_query("BRAND NOTE") == "BRAND NOTE"
