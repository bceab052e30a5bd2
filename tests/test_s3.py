"""The S3 endpoint against a real daemon, with real clients: boto3, the AWS CLI, rclone and
curl (a presigned URL). Every refusal is checked to leave nothing stored."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import urllib.parse

import boto3
import botocore
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from artstored.s3 import sigv4
from harness import ISSUED_SECRETS, Daemon, free_port, objects_files, wait_until

REGION = "us-east-1"
AWS = shutil.which("aws", path=os.path.dirname(os.path.realpath(__file__)) + "/../.venv/bin") \
    or shutil.which("aws")


def _s3_daemon(path, mode: str = "rw") -> Daemon:
    port = free_port()
    d = Daemon(str(path), config={"s3": {"listen": f"127.0.0.1:{port}"},
                                  "element": {"initial_mode": mode}}).start()
    d.s3_url = f"http://127.0.0.1:{port}"
    return d


def _new_key(daemon: Daemon, client_id: str | None = None) -> dict:
    client_id = client_id or daemon.admin_credentials()["client_id"]
    r = daemon.api().request("POST", f"/api/v1/accounts/{client_id}/s3-keys")
    assert r.status == 201, r.body
    key = r.json()
    ISSUED_SECRETS.add(key["secret_access_key"])
    return key


def _client(daemon: Daemon, key: dict, **config):
    return boto3.client(
        "s3", endpoint_url=daemon.s3_url, region_name=REGION,
        aws_access_key_id=key["access_key_id"], aws_secret_access_key=key["secret_access_key"],
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config))


def _code(info) -> str:
    return info.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def rw(tmp_path_factory):
    d = _s3_daemon(tmp_path_factory.mktemp("s3rw") / "node")
    d.key = _new_key(d)
    d.s3 = _client(d, d.key)
    yield d
    d.kill()


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    d = _s3_daemon(tmp_path_factory.mktemp("s3edit") / "node", mode="edit")
    d.key = _new_key(d)
    d.s3 = _client(d, d.key)
    yield d
    d.kill()


def test_buckets_are_durable_records_deleted_only_when_empty(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="life-cycle")
    assert "life-cycle" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="life-cycle")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.create_bucket(Bucket="life-cycle")
    assert _code(info) == "BucketAlreadyOwnedByYou"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.create_bucket(Bucket="Bad_Name")
    assert _code(info) == "InvalidBucketName"
    s3.put_object(Bucket="life-cycle", Key="k", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.delete_bucket(Bucket="life-cycle")
    assert _code(info) == "BucketNotEmpty"
    s3.create_bucket(Bucket="empty-one")
    s3.delete_bucket(Bucket="empty-one")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.head_bucket(Bucket="empty-one")
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
    assert _code(info) == "NoSuchBucket"
    # A restart keeps the bucket (a durable record, not a cache).
    rw.stop()
    rw.start()
    assert "life-cycle" in [b["Name"] for b in rw.s3.list_buckets()["Buckets"]]


def test_put_never_overwrites_and_every_version_stays_readable(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="versions")
    first = s3.put_object(Bucket="versions", Key="report.pdf", Body=b"v1",
                          Metadata={"dept": "finance"}, ContentType="application/pdf")
    second = s3.put_object(Bucket="versions", Key="report.pdf", Body=b"version two")
    assert first["VersionId"] != second["VersionId"]
    assert first["ETag"] == '"%s"' % hashlib.sha256(b"v1").hexdigest()
    got = s3.get_object(Bucket="versions", Key="report.pdf")
    assert got["Body"].read() == b"version two" and got["VersionId"] == second["VersionId"]
    old = s3.get_object(Bucket="versions", Key="report.pdf", VersionId=first["VersionId"])
    assert old["Body"].read() == b"v1"
    assert old["Metadata"] == {"dept": "finance"} and old["ContentType"] == "application/pdf"
    listed = s3.list_object_versions(Bucket="versions", Prefix="report")["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in listed] == \
        [(second["VersionId"], True), (first["VersionId"], False)]
    # Each version is an ArtStore file whose attr.json names its bucket and key.
    attr = rw.api().get(f"/api/v1/files/{first['VersionId']}").json()
    assert (attr["bucket"], attr["object_key"]) == ("versions", "report.pdf")
    assert attr["custom_attributes"] == {"dept": "finance"}
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="versions", Key="report.pdf",
                      VersionId="01a21f49-0000-7000-8000-000000000000")
    assert _code(info) == "NoSuchVersion"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="versions", Key="missing")
    assert _code(info) == "NoSuchKey"


def test_get_honours_range_and_conditions(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="ranges")
    body = os.urandom(300_000)
    put = s3.put_object(Bucket="ranges", Key="blob", Body=body)
    part = s3.get_object(Bucket="ranges", Key="blob", Range="bytes=1000-1999")
    assert part["Body"].read() == body[1000:2000]
    assert part["ContentRange"] == "bytes 1000-1999/300000"
    whole = s3.get_object(Bucket="ranges", Key="blob", ChecksumMode="ENABLED")
    assert whole["Body"].read() == body
    assert whole["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="ranges", Key="blob", IfNoneMatch=put["ETag"])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="ranges", Key="blob", IfMatch='"0000"')
    assert _code(info) == "PreconditionFailed"
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="ranges", Key="blob", IfModifiedSince=future)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="ranges", Key="blob", IfUnmodifiedSince=past)
    assert _code(info) == "PreconditionFailed"
    head = s3.head_object(Bucket="ranges", Key="blob")
    assert head["ContentLength"] == 300_000 and head["ObjectLockMode"] == "COMPLIANCE"
    retention = s3.get_object_retention(Bucket="ranges", Key="blob")["Retention"]
    assert retention["Mode"] == "COMPLIANCE"


def _all_pages(s3, method: str, **kw):
    paginator = s3.get_paginator(method)
    keys, prefixes = [], []
    for page in paginator.paginate(**kw):
        keys += [c["Key"] for c in page.get("Contents", page.get("Versions", []))]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return keys, prefixes


def test_listings_page_by_prefix_and_delimiter_in_utf8_order(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="listing")
    names = ["a/1", "a/2", "a/b/3", "b", "c/ä", "c/z", "d/x/y", "e", "é", "a", "a-"]
    for name in names:
        s3.put_object(Bucket="listing", Key=name, Body=name.encode())
    s3.put_object(Bucket="listing", Key="b", Body=b"second version of b")
    ordered = sorted(names, key=lambda k: k.encode())
    for method in ("list_objects_v2", "list_objects"):
        keys, prefixes = _all_pages(s3, method, Bucket="listing",
                                    PaginationConfig={"PageSize": 2})
        assert (keys, prefixes) == (ordered, [])
        keys, prefixes = _all_pages(s3, method, Bucket="listing", Delimiter="/",
                                    PaginationConfig={"PageSize": 2})
        assert keys == ["a", "a-", "b", "e", "é"]
        assert prefixes == ["a/", "c/", "d/"]
        keys, prefixes = _all_pages(s3, method, Bucket="listing", Prefix="a/",
                                    Delimiter="/", PaginationConfig={"PageSize": 1})
        assert (keys, prefixes) == (["a/1", "a/2"], ["a/b/"])
    keys, _ = _all_pages(s3, "list_object_versions", Bucket="listing",
                         PaginationConfig={"PageSize": 3})
    assert sorted(keys, key=lambda k: k.encode()) == keys and len(keys) == len(names) + 1
    assert s3.list_objects_v2(Bucket="listing", StartAfter="c/ä")["Contents"][0]["Key"] == "d/x/y"


def test_checksums_and_signatures_refused_with_nothing_stored(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="checks")
    before = len(objects_files(rw.data_dir))
    body = b"the real content"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket="checks", Key="k", Body=body,
                      ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other").digest())
                      .decode())
    assert _code(info) == "BadDigest"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket="checks", Key="k", Body=body,
                      ContentMD5=base64.b64encode(hashlib.md5(b"other").digest()).decode())
    assert _code(info) == "BadDigest"
    wrong = dict(rw.key, secret_access_key="not-the-secret-" + "x" * 25)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        _client(rw, wrong).put_object(Bucket="checks", Key="k", Body=body)
    assert _code(info) == "SignatureDoesNotMatch"
    unknown = dict(rw.key, access_key_id="AKUNKNOWNUNKNOWN0000")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        _client(rw, unknown).list_buckets()
    assert _code(info) == "InvalidAccessKeyId"
    # A body that is not what x-amz-content-sha256 signed.
    status, text = _signed_put(rw, "/checks/k", body, payload_of=b"something else")
    assert status == 400 and "<Code>XAmzContentSHA256Mismatch</Code>" in text
    # Anonymous.
    conn = http.client.HTTPConnection("127.0.0.1", int(rw.s3_url.rsplit(":", 1)[1]))
    conn.request("PUT", "/checks/k", body=body)
    answer = conn.getresponse()
    assert answer.status == 403 and b"<Code>AccessDenied</Code>" in answer.read()
    # A presigned PUT cannot be turned into something else by headers it did not sign.
    s3.put_object(Bucket="checks", Key="secret", Body=b"not for the URL's holder")
    url = s3.generate_presigned_url("put_object", ExpiresIn=60,
                                    Params={"Bucket": "checks", "Key": "k"})
    before = len(objects_files(rw.data_dir))
    forged = subprocess.run(["curl", "-s", "-X", "PUT", "-H",
                             "x-amz-copy-source: /checks/secret", "--data-binary", "x", url],
                            capture_output=True, timeout=30)
    assert b"<Code>AccessDenied</Code>" in forged.stdout and b"not signed" in forged.stdout
    # A signature that is not hex (not even ASCII) is a refusal, not a failure.
    for bad in ("%C3%A9", "zz"):
        spoiled = re.sub(r"X-Amz-Signature=[^&]+", "X-Amz-Signature=" + bad, url)
        answer = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X",
                                 "PUT", "--data-binary", "x", spoiled],
                                capture_output=True, timeout=30)
        assert answer.stdout == b"403"
    assert len(objects_files(rw.data_dir)) == before
    assert [c["Key"] for c in s3.list_objects_v2(Bucket="checks")["Contents"]] == ["secret"]
    good = base64.b64encode(hashlib.sha256(body).digest()).decode()
    s3.put_object(Bucket="checks", Key="k", Body=body, ChecksumSHA256=good,
                  ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())
    assert s3.get_object(Bucket="checks", Key="k")["Body"].read() == body


def _signed_put(daemon, path: str, body: bytes, *, payload_of: bytes):
    """A PUT signed by botocore's own signer whose x-amz-content-sha256 names other bytes."""
    creds = Credentials(daemon.key["access_key_id"], daemon.key["secret_access_key"])
    request = AWSRequest(method="PUT", url=daemon.s3_url + path, data=body,
                         headers={"x-amz-content-sha256":
                                  hashlib.sha256(payload_of).hexdigest()})
    SigV4Auth(creds, "s3", REGION).add_auth(request)
    parsed = urllib.parse.urlsplit(daemon.s3_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port)
    conn.request("PUT", path, body=body, headers=dict(request.headers.items()))
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def test_keys_follow_their_account_and_revocation(rw):
    client_id, _ = rw.create_account("ingest-bot", "user")
    key = _new_key(rw, client_id)
    s3 = _client(rw, key)
    s3.create_bucket(Bucket="bot-bucket")
    s3.put_object(Bucket="bot-bucket", Key="one", Body=b"1")
    admin = rw.admin_credentials()
    listed = rw.cli("account", "s3-key", "list", client_id, "--json",
                    env={"ARTSTORE_CLIENT_ID": admin["client_id"],
                         "ARTSTORE_CLIENT_SECRET": admin["client_secret"]})
    assert listed.returncode == 0, listed.stderr
    assert key["access_key_id"] in listed.stdout.decode()
    assert key["secret_access_key"] not in listed.stdout.decode()
    r = rw.api().request("PATCH", f"/api/v1/accounts/{client_id}",
                         json_body={"status": "suspended"})
    assert r.status == 200, r.body
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket="bot-bucket", Key="two", Body=b"2")
    assert _code(info) == "AccessDenied"
    assert "suspended" in info.value.response["Error"]["Message"]
    rw.api().request("PATCH", f"/api/v1/accounts/{client_id}", json_body={"status": "active"})
    s3.put_object(Bucket="bot-bucket", Key="two", Body=b"2")
    r = rw.api().request("DELETE",
                         f"/api/v1/accounts/{client_id}/s3-keys/{key['access_key_id']}")
    assert r.status == 200 and r.json()["status"] == "revoked"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket="bot-bucket", Key="three", Body=b"3")
    assert _code(info) == "InvalidAccessKeyId"
    keys = [c["Key"] for c in rw.s3.list_objects_v2(Bucket="bot-bucket")["Contents"]]
    assert keys == ["one", "two"]


def test_presigned_get_with_curl_and_its_expiry(rw, monkeypatch):
    rw.s3.create_bucket(Bucket="shared")
    rw.s3.put_object(Bucket="shared", Key="dir/note.txt", Body=b"signed for you")
    url = rw.s3.generate_presigned_url("get_object", ExpiresIn=60,
                                       Params={"Bucket": "shared", "Key": "dir/note.txt"})
    got = subprocess.run(["curl", "-sf", url], capture_output=True, timeout=30)
    assert got.returncode == 0 and got.stdout == b"signed for you"
    # Tampered: another key with the same signature.
    bad = subprocess.run(["curl", "-s", url.replace("note.txt", "other.txt")],
                         capture_output=True, timeout=30)
    assert b"<Code>SignatureDoesNotMatch</Code>" in bad.stdout
    # Expired: signed two hours ago for one hour (botocore's signer, its clock moved back).
    creds = Credentials(rw.key["access_key_id"], rw.key["secret_access_key"])
    request = AWSRequest(method="GET", url=rw.s3_url + "/shared/dir/note.txt")
    signer = botocore.auth.S3SigV4QueryAuth(creds, "s3", REGION, expires=3600)
    then = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - \
        datetime.timedelta(hours=2)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: then)
    signer.add_auth(request)
    old = subprocess.run(["curl", "-s", request.url], capture_output=True, timeout=30)
    assert b"<Code>AccessDenied</Code>" in old.stdout and b"expired" in old.stdout


def test_deletes_follow_the_element_mode(rw, edit):
    rw.s3.create_bucket(Bucket="kept")
    rw.s3.put_object(Bucket="kept", Key="record", Body=b"forever")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        rw.s3.delete_object(Bucket="kept", Key="record")
    assert _code(info) == "AccessDenied" and "'rw'" in info.value.response["Error"]["Message"]
    answer = rw.s3.delete_objects(Bucket="kept", Delete={"Objects": [{"Key": "record"}]})
    assert answer["Errors"][0]["Code"] == "AccessDenied"
    assert rw.s3.get_object(Bucket="kept", Key="record")["Body"].read() == b"forever"

    s3 = edit.s3
    s3.create_bucket(Bucket="drafts")
    v1 = s3.put_object(Bucket="drafts", Key="draft", Body=b"1")["VersionId"]
    v2 = s3.put_object(Bucket="drafts", Key="draft", Body=b"2")["VersionId"]
    s3.put_object(Bucket="drafts", Key="other", Body=b"o")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object_retention(Bucket="drafts", Key="draft")
    assert _code(info) == "NoSuchObjectLockConfiguration"
    s3.delete_object(Bucket="drafts", Key="draft", VersionId=v2)
    assert s3.get_object(Bucket="drafts", Key="draft")["VersionId"] == v1
    s3.delete_object(Bucket="drafts", Key="draft")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.head_object(Bucket="drafts", Key="draft")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    answer = s3.delete_objects(Bucket="drafts", Delete={"Objects": [{"Key": "other"}]})
    assert [d["Key"] for d in answer["Deleted"]] == ["other"]
    s3.delete_bucket(Bucket="drafts")
    assert edit.api().get("/api/v1/files").json()["items"] == []


def test_copy_makes_a_new_file_with_the_same_bytes(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="copies")
    body = os.urandom(400_000)
    src = s3.put_object(Bucket="copies", Key="src", Body=body, Metadata={"a": "1"})
    copied = s3.copy_object(Bucket="copies", Key="dst", CopySource="copies/src")
    assert copied["CopyObjectResult"]["ETag"] == src["ETag"]
    got = s3.get_object(Bucket="copies", Key="dst")
    assert got["Body"].read() == body and got["Metadata"] == {"a": "1"}
    assert got["VersionId"] != src["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.copy_object(Bucket="copies", Key="dst2", CopySource="copies/nothing")
    assert _code(info) == "NoSuchKey"


def test_aws_cli_and_rclone_work_unchanged(rw, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_bytes(b"one\n")
    (src / "sub" / "два.bin").write_bytes(os.urandom(3_000_000))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=rw.key["access_key_id"],
               AWS_SECRET_ACCESS_KEY=rw.key["secret_access_key"], AWS_DEFAULT_REGION=REGION)
    env.pop("AWS_CA_BUNDLE", None)   # rclone refuses a CA bundle on a plain-HTTP endpoint
    aws = [AWS, "--endpoint-url", rw.s3_url]

    def run(*cmd):
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        return done.stdout.decode()
    run(*aws, "s3", "mb", "s3://cli-bucket")
    run(*aws, "s3", "cp", "--recursive", str(src), "s3://cli-bucket/in/")
    listed = run(*aws, "s3", "ls", "--recursive", "s3://cli-bucket")
    assert "in/one.txt" in listed and "in/sub/два.bin" in listed
    run(*aws, "s3", "cp", "s3://cli-bucket/in/sub/два.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == (src / "sub" / "два.bin").read_bytes()
    head = json.loads(run(*aws, "s3api", "head-object", "--bucket", "cli-bucket",
                          "--key", "in/one.txt"))
    assert head["ContentLength"] == 4
    # 9 MB: the CLI uploads it in parts, and copies it within the archive part by part
    # (UploadPartCopy).
    big = os.urandom(9_000_000)
    (tmp_path / "big").write_bytes(big)
    run(*aws, "s3", "cp", str(tmp_path / "big"), "s3://cli-bucket/big")
    run(*aws, "s3", "cp", "s3://cli-bucket/big", "s3://cli-bucket/big-copy")
    run(*aws, "s3", "cp", "s3://cli-bucket/big-copy", str(tmp_path / "big-back"))
    assert (tmp_path / "big-back").read_bytes() == big
    # The lower-level commands, one per operation.
    api = [*aws, "s3api"]
    run(*api, "put-object", "--bucket", "cli-bucket", "--key", "in/one.txt", "--body",
        str(src / "one.txt"), "--metadata", "dept=finance")
    versions = json.loads(run(*api, "list-object-versions", "--bucket", "cli-bucket",
                              "--prefix", "in/one.txt"))["Versions"]
    assert len(versions) == 2 and [v["IsLatest"] for v in versions] == [True, False]
    listed = json.loads(run(*api, "list-objects-v2", "--bucket", "cli-bucket",
                            "--delimiter", "/", "--prefix", "in/"))
    assert [c["Key"] for c in listed["Contents"]] == ["in/one.txt"]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["in/sub/"]
    old = versions[1]["VersionId"]
    run(*api, "get-object", "--bucket", "cli-bucket", "--key", "in/one.txt", "--version-id",
        old, str(tmp_path / "old.txt"))
    assert (tmp_path / "old.txt").read_bytes() == b"one\n"
    run(*api, "copy-object", "--bucket", "cli-bucket", "--key", "copied.txt",
        "--copy-source", "cli-bucket/in/one.txt")
    retention = json.loads(run(*api, "get-object-retention", "--bucket", "cli-bucket",
                               "--key", "copied.txt"))
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    upload = json.loads(run(*api, "create-multipart-upload", "--bucket", "cli-bucket",
                            "--key", "never.bin"))
    run(*api, "abort-multipart-upload", "--bucket", "cli-bucket", "--key", "never.bin",
        "--upload-id", upload["UploadId"])
    refused = subprocess.run([*api, "delete-object", "--bucket", "cli-bucket", "--key",
                              "copied.txt"], env=env, capture_output=True, timeout=120)
    assert refused.returncode != 0 and b"AccessDenied" in refused.stderr
    refused = subprocess.run([*api, "delete-bucket", "--bucket", "cli-bucket"], env=env,
                             capture_output=True, timeout=120)
    assert refused.returncode != 0 and b"BucketNotEmpty" in refused.stderr

    env.update(RCLONE_CONFIG_AS_TYPE="s3", RCLONE_CONFIG_AS_PROVIDER="Other",
               RCLONE_CONFIG_AS_ACCESS_KEY_ID=rw.key["access_key_id"],
               RCLONE_CONFIG_AS_SECRET_ACCESS_KEY=rw.key["secret_access_key"],
               RCLONE_CONFIG_AS_ENDPOINT=rw.s3_url, RCLONE_CONFIG_AS_REGION=REGION,
               RCLONE_CONFIG="/dev/null")
    run("rclone", "copy", str(src), "as:rclone-bucket")
    entries = json.loads(run("rclone", "lsjson", "-R", "--files-only", "as:rclone-bucket"))
    assert sorted((e["Path"], e["Size"]) for e in entries) == \
        [("one.txt", 4), ("sub/два.bin", 3_000_000)]
    run("rclone", "check", "--download", str(src), "as:rclone-bucket")
    (src / "new.txt").write_bytes(b"new")
    planned = subprocess.run(["rclone", "sync", "--dry-run", str(src), "as:rclone-bucket"],
                             env=env, capture_output=True, timeout=300)
    assert planned.returncode == 0 and b"new.txt" in planned.stderr
    assert "new.txt" not in run("rclone", "lsf", "-R", "as:rclone-bucket")


def test_signature_v4_matches_aws_published_examples():
    """AWS's documented example of a chunked upload (seed and chunk signatures)."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    signed = sigv4.SignedRequest(
        access_key_id="AKIAIOSFODNN7EXAMPLE", date="20130524", amz_date="20130524T000000Z",
        scope="20130524/us-east-1/s3/aws4_request",
        signature="4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        payload=sigv4.STREAMING_SIGNED,
        signing_key=sigv4.signing_key(secret, "20130524", "us-east-1"))
    first = sigv4.chunk_signature(signed, signed.signature,
                                  hashlib.sha256(b"a" * 65536).hexdigest())
    assert first == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    second = sigv4.chunk_signature(signed, first, hashlib.sha256(b"a" * 1024).hexdigest())
    assert second == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    final = sigv4.chunk_signature(signed, second, sigv4.EMPTY_SHA256)
    assert final == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


def _raw_part_cut_short(daemon, bucket: str, key: str, upload_id: str, number: int,
                        size: int, sent: int) -> None:
    """Send part ``number`` announcing ``size`` bytes, then drop the connection after
    ``sent`` of them (signed by botocore's signer, payload unsigned)."""
    path = f"/{bucket}/{key}?partNumber={number}&uploadId={upload_id}"
    creds = Credentials(daemon.key["access_key_id"], daemon.key["secret_access_key"])
    request = AWSRequest(method="PUT", url=daemon.s3_url + path,
                         headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                                  "Content-Length": str(size)})
    SigV4Auth(creds, "s3", REGION).add_auth(request)
    parsed = urllib.parse.urlsplit(daemon.s3_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port)
    conn.putrequest("PUT", path, skip_accept_encoding=True)
    for name, value in request.headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(os.urandom(sent))
    conn.sock.shutdown(2)
    conn.close()


def test_multipart_upload_resumes_after_a_dropped_connection_and_a_restart(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="big-uploads")
    part1, part2, part3 = os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(1234)
    upload = s3.create_multipart_upload(Bucket="big-uploads", Key="scan.tiff",
                                        ContentType="image/tiff", Metadata={"batch": "7"})
    uid = upload["UploadId"]
    e1 = s3.upload_part(Bucket="big-uploads", Key="scan.tiff", UploadId=uid, PartNumber=1,
                        Body=part1)["ETag"]
    _raw_part_cut_short(rw, "big-uploads", "scan.tiff", uid, 2, len(part2), 3 << 20)
    upload_dir = os.path.join(rw.data_dir, "disks", "0", "multipart", uid)
    wait_until(lambda: os.listdir(upload_dir) == ["00001.part"], 10,
               "the cut part's bytes removed")
    listed = s3.list_parts(Bucket="big-uploads", Key="scan.tiff", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, len(part1))]
    # Parts are durable: they survive the daemon.
    rw.stop()
    rw.start()
    uploads = s3.list_multipart_uploads(Bucket="big-uploads")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("scan.tiff", uid)]
    listed = s3.list_parts(Bucket="big-uploads", Key="scan.tiff", UploadId=uid)["Parts"]
    assert [p["ETag"] for p in listed] == [e1]
    e2 = s3.upload_part(Bucket="big-uploads", Key="scan.tiff", UploadId=uid, PartNumber=2,
                        Body=part2)["ETag"]
    e3 = s3.upload_part(Bucket="big-uploads", Key="scan.tiff", UploadId=uid, PartNumber=3,
                        Body=part3)["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(
            Bucket="big-uploads", Key="scan.tiff", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                       {"PartNumber": 2, "ETag": e3}]})
    assert _code(info) == "InvalidPart"
    done = s3.complete_multipart_upload(
        Bucket="big-uploads", Key="scan.tiff", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2},
                                   {"PartNumber": 3, "ETag": e3}]})
    whole = part1 + part2 + part3
    assert done["ETag"] == '"%s"' % hashlib.sha256(whole).hexdigest()
    got = s3.get_object(Bucket="big-uploads", Key="scan.tiff")
    assert got["Body"].read() == whole and got["ContentType"] == "image/tiff"
    assert got["Metadata"] == {"batch": "7"}
    attr = rw.api().get(f"/api/v1/files/{done['VersionId']}").json()
    assert attr["checksum_sha256"] == hashlib.sha256(whole).hexdigest()
    assert s3.list_multipart_uploads(Bucket="big-uploads").get("Uploads", []) == []
    assert os.listdir(os.path.join(rw.data_dir, "disks", "0", "multipart")) == []


def test_multipart_abort_and_refusals_keep_nothing(rw):
    s3 = rw.s3
    s3.create_bucket(Bucket="aborted")
    uid = s3.create_multipart_upload(Bucket="aborted", Key="k")["UploadId"]
    s3.upload_part(Bucket="aborted", Key="k", UploadId=uid, PartNumber=1, Body=b"x" * 1000)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part(Bucket="aborted", Key="k", UploadId=uid, PartNumber=2, Body=b"y",
                       ChecksumSHA256=base64.b64encode(hashlib.sha256(b"z").digest()).decode())
    assert _code(info) == "BadDigest"
    small = s3.upload_part(Bucket="aborted", Key="k", UploadId=uid, PartNumber=3,
                           Body=b"z")["ETag"]
    first = s3.list_parts(Bucket="aborted", Key="k", UploadId=uid)["Parts"][0]["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(
            Bucket="aborted", Key="k", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first},
                                       {"PartNumber": 3, "ETag": small}]})
    assert _code(info) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket="aborted", Key="k", UploadId=uid)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.list_parts(Bucket="aborted", Key="k", UploadId=uid)
    assert _code(info) == "NoSuchUpload"
    assert "Contents" not in s3.list_objects_v2(Bucket="aborted")
    assert os.listdir(os.path.join(rw.data_dir, "disks", "0", "multipart")) == []


def test_abandoned_uploads_and_sessions_are_cleaned_up(tmp_path):
    """Multipart uploads and upload sessions untouched for uploads.abandoned_days go, with
    their bytes; those still in use stay."""
    import time as _time

    from artstored.engine.multipart import MultipartUploads
    from artstored.engine.sessions import UploadSessions
    from artstored.engine.store import Store, StoreConfig
    from artstored.engine.wal import Actor

    actor = Actor("cl_test", "tester", "user")
    with Store(StoreConfig(data_dir=str(tmp_path / "data"))) as store:
        store.create_bucket("sweep-me", actor)
        uploads, sessions = MultipartUploads(store), UploadSessions(store)
        old = uploads.create("sweep-me", "k", actor, content_type=None, custom_attributes={})
        part = uploads.part_writer(old, 1)
        part.write_many([b"x" * 100])
        part.commit()
        session = sessions.create(10, {"original_filename": "f"}, actor)
        soon, later = _time.time() + 1000, _time.time() + 3600
        assert uploads.expire(1800, now=soon) == 0 and sessions.expire(1800, now=soon) == 0
        assert [u["upload_id"] for u in uploads.list()] == [old]
        assert os.path.exists(session["dir"])
        assert uploads.expire(1800, now=later) == 1 and sessions.expire(1800, now=later) == 1
        assert uploads.list() == [] and not os.path.exists(session["dir"])
        roots = [os.path.join(d.root, "multipart") for d in store.disks]
        assert all(not os.listdir(r) for r in roots if os.path.isdir(r))


def test_buckets_and_keys_come_back_from_the_sidecars_alone(tmp_path):
    """attr.json is the source of truth: with store.lmdb gone, a rebuild brings back the
    bucket records and the key index (every version) from the sidecars."""
    from artstored.engine.rebuild import rebuild_catalog
    from artstored.engine.store import Store, StoreConfig
    from artstored.engine.uploads import UploadRequest
    from artstored.engine.wal import Actor

    actor = Actor("cl_test", "tester", "user")
    data = str(tmp_path / "data")
    with Store(StoreConfig(data_dir=data)) as store:
        store.create_bucket("kept-bucket", actor)
        ids = [store.ingest([body], UploadRequest(original_filename="f", bucket="kept-bucket",
                                                  object_key="dir/f"), actor)["file_id"]
               for body in (b"one", b"two")]
        with pytest.raises(Exception) as info:
            store.ingest([b"x"], UploadRequest(original_filename="f", bucket="no-bucket",
                                               object_key="k"), actor)
        assert getattr(info.value, "code", None) == "bucket_not_found"
    shutil.rmtree(os.path.join(data, "store.lmdb"))
    with Store(StoreConfig(data_dir=data)) as store:
        rebuild_catalog(store)
        with store.view.snapshot() as snap:
            index = snap.buckets()
            assert [b["name"] for b in index.buckets()] == ["kept-bucket"]
            assert index.versions("kept-bucket", "dir/f") == ids
            page = index.list("kept-bucket", delimiter="/")
            assert (page.keys, page.prefixes) == ([], ["dir/"])


def _chunked_put(daemon, path: str, chunks: list[bytes], *, spoil: int | None = None):
    """A PUT in aws-chunked form with signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD):
    headers signed by botocore's signer, each chunk's signature chained from the seed (the
    chaining is checked against AWS's published example above). ``spoil``: the index of a
    chunk whose bytes change after it was signed."""
    creds = Credentials(daemon.key["access_key_id"], daemon.key["secret_access_key"])
    total = sum(len(c) for c in chunks)
    request = AWSRequest(method="PUT", url=daemon.s3_url + path, headers={
        "x-amz-content-sha256": sigv4.STREAMING_SIGNED, "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(total)})
    SigV4Auth(creds, "s3", REGION).add_auth(request)
    auth = request.headers["Authorization"]
    seed = auth.rsplit("Signature=", 1)[1]
    amz_date = request.headers["X-Amz-Date"]
    signed = sigv4.SignedRequest(
        access_key_id=daemon.key["access_key_id"], date=amz_date[:8], amz_date=amz_date,
        scope=f"{amz_date[:8]}/{REGION}/s3/aws4_request", signature=seed,
        payload=sigv4.STREAMING_SIGNED,
        signing_key=sigv4.signing_key(daemon.key["secret_access_key"], amz_date[:8], REGION))
    body, previous = b"", seed
    for i, chunk in enumerate([*chunks, b""]):
        sig = sigv4.chunk_signature(signed, previous, hashlib.sha256(chunk).hexdigest())
        sent = b"X" * len(chunk) if i == spoil else chunk
        body += f"{len(chunk):x};chunk-signature={sig}\r\n".encode() + sent + b"\r\n"
        previous = sig
    parsed = urllib.parse.urlsplit(daemon.s3_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port)
    conn.request("PUT", path, body=body, headers=dict(request.headers.items()))
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def test_aws_chunked_uploads_are_checked_chunk_by_chunk(rw):
    rw.s3.create_bucket(Bucket="chunked")
    chunks = [os.urandom(65536), os.urandom(65536), os.urandom(1000)]
    status, text = _chunked_put(rw, "/chunked/whole", chunks)
    assert status == 200, text
    got = rw.s3.get_object(Bucket="chunked", Key="whole")["Body"].read()
    assert got == b"".join(chunks)
    before = len(objects_files(rw.data_dir))
    status, text = _chunked_put(rw, "/chunked/spoiled", chunks, spoil=1)
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text
    assert len(objects_files(rw.data_dir)) == before
    with pytest.raises(botocore.exceptions.ClientError):
        rw.s3.head_object(Bucket="chunked", Key="spoiled")


def test_a_long_copy_is_answered_at_once_and_kept_alive(monkeypatch):
    """answer_when_done (CompleteMultipartUpload, CopyObject) on a real aiohttp server: past
    a moment the 200 goes out, then spaces, then the result, or an S3 Error document."""
    import asyncio
    import time as _time
    import xml.etree.ElementTree as ET

    import aiohttp
    from aiohttp import web

    from artstored.s3 import context as s3app
    from artstored.s3.xml import S3Error, element

    monkeypatch.setattr(s3app, "QUICK_SECONDS", 0.05)
    monkeypatch.setattr(s3app, "KEEPALIVE_SECONDS", 0.05)

    def render(value):
        root = element("Result")
        root.text = value
        return root, {}

    async def slow_ok(request):
        return await s3app.answer_when_done(request, lambda: _time.sleep(0.3) or "done",
                                            render)

    async def slow_failure(request):
        def work():
            _time.sleep(0.3)
            raise S3Error("InvalidPart", "part 2 was not uploaded")
        return await s3app.answer_when_done(request, work, render)

    class Where:
        path = "/b/k"

    @web.middleware
    async def context(request, handler):
        request[s3app.S3_CONTEXT] = (None, Where)
        return await handler(request)

    async def main():
        application = web.Application(middlewares=[context])
        application.router.add_get("/ok", slow_ok)
        application.router.add_get("/fails", slow_failure)
        runner = web.AppRunner(application)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session:
                out = {}
                for name in ("ok", "fails"):
                    async with session.get(f"http://127.0.0.1:{port}/{name}") as resp:
                        out[name] = (resp.status, await resp.read())
                return out
        finally:
            await runner.cleanup()

    out = asyncio.run(main())
    status, body = out["ok"]
    head, _, rest = body.partition(b"\n")
    assert status == 200 and head.startswith(b"<?xml")
    assert rest.startswith(b" ") and ET.fromstring(rest.strip()).text == "done"
    status, body = out["fails"]
    error = ET.fromstring(body.partition(b"\n")[2].strip())
    assert status == 200 and error.tag == "Error"
    assert error.findtext("Code") == "InvalidPart"


def test_read_only_and_archived_elements_refuse_with_s3_errors(tmp_path):
    d = _s3_daemon(tmp_path / "node")
    try:
        s3 = _client(d, _new_key(d))
        s3.create_bucket(Bucket="frozen")
        s3.put_object(Bucket="frozen", Key="kept", Body=b"kept")
        for mode in ("ro", "ar"):
            r = d.api().request("PUT", "/api/v1/element/mode", json_body={"mode": mode})
            assert r.status == 200, r.body
            with pytest.raises(botocore.exceptions.ClientError) as info:
                s3.put_object(Bucket="frozen", Key="new", Body=b"x")
            assert _code(info) == "AccessDenied"
            assert f"'{mode}'" in info.value.response["Error"]["Message"]
            with pytest.raises(botocore.exceptions.ClientError) as info:
                s3.create_bucket(Bucket="another")
            assert _code(info) == "AccessDenied"
            with pytest.raises(botocore.exceptions.ClientError) as info:
                s3.delete_bucket(Bucket="frozen")
            assert _code(info) == "AccessDenied"
            assert s3.head_object(Bucket="frozen", Key="kept")["ContentLength"] == 4
        # Archived: the content is offline; its metadata is not.
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.get_object(Bucket="frozen", Key="kept")
        assert _code(info) == "AccessDenied"
        assert [c["Key"] for c in s3.list_objects_v2(Bucket="frozen")["Contents"]] == ["kept"]
    finally:
        d.kill()
