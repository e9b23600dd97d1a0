"""The `strata` CLI through typer's CliRunner: happy path, one-line errors, exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from blocks.layout import meta_key
from strata.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_generate_import_ls_inspect_verify(tmp_path):
    om = tmp_path / "d.om"
    bucket = str(tmp_path / "bucket")
    r = run("generate", "--series", "49", "--hours", "3", "--out", str(om), "--start", "2026-01-01T00:00:00Z")
    assert r.exit_code == 0, r.output
    r = run("import", "--bucket", bucket, "--tenant", "demo", "--output", "json", str(om))
    assert r.exit_code == 0, r.output
    imported = json.loads(r.stdout)
    assert imported["samples_written"] == 49 * 720 and len(imported["blocks"]) == 2
    r = run("blocks", "ls", "--bucket", bucket, "-o", "json")
    rows = json.loads(r.output)
    assert [x["samples"] for x in rows] == [49 * 480, 49 * 240]
    assert {x["resolution"] for x in rows} == {"raw"}
    r = run("blocks", "inspect", rows[0]["ulid"], "--tenant", "demo", "--bucket", bucket)
    assert r.exit_code == 0 and "node_cpu_seconds_total: 8" in r.output
    r = run("blocks", "verify", "--bucket", bucket)
    assert r.exit_code == 0 and "verified 2 blocks: ok" in r.output


def test_generate_into_bucket_is_deterministic(tmp_path):
    for name in ("a", "b"):
        r = run("generate", "--series", "49", "--hours", "2", "--bucket", str(tmp_path / name),
                "--tenant", "t", "--start", "0", "-o", "json")
        assert r.exit_code == 0, r.output
    a = json.loads(run("blocks", "ls", "--bucket", str(tmp_path / "a"), "-o", "json").output)
    b = json.loads(run("blocks", "ls", "--bucket", str(tmp_path / "b"), "-o", "json").output)
    assert [x["bytes"] for x in a] == [x["bytes"] for x in b]


def test_verify_exits_3_on_corruption(tmp_path):
    bucket = tmp_path / "bucket"
    run("generate", "--series", "49", "--hours", "2", "--bucket", str(bucket), "--tenant", "t", "--start", "0")
    ulid = json.loads(run("blocks", "ls", "--bucket", str(bucket), "-o", "json").output)[0]["ulid"]
    (bucket / meta_key("t", ulid)).unlink()
    r = run("blocks", "verify", "--bucket", str(bucket))
    assert r.exit_code == 3
    assert f"t/{ulid}: no meta.json" in r.output


@pytest.mark.parametrize("args,code,message", [
    (["import", "--bucket", "B", "--tenant", "bad/tenant", "F"], 1, "invalid tenant"),
    (["import", "--bucket", "gs://x", "--tenant", "t", "F"], 1, "unsupported bucket URL"),
    (["import", "--tenant", "t", "F"], 1, "no bucket"),
    (["import", "--bucket", "B", "--tenant", "t", "--block-range", "2 hours", "F"], 1, "invalid duration"),
    (["blocks", "ls", "--bucket", "B", "--resolution", "7m"], 1, "invalid resolution"),
    (["blocks", "inspect", "nope", "--tenant", "t", "--bucket", "B"], 1, "not a ULID"),
    (["generate", "--series", "0", "--out", "x"], 1, "series >= 1"),
], ids=["tenant", "scheme", "no-bucket", "duration", "resolution", "ulid", "generate"])
def test_bad_input_one_line_error(tmp_path, args, code, message):
    args = [str(tmp_path / "b") if a == "B" else str(tmp_path / "f.om") if a == "F" else a for a in args]
    (tmp_path / "f.om").write_text("m 1 1\n# EOF\n")
    r = run(*args)
    assert r.exit_code == code, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_malformed_import_names_file_and_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.om"
    bad.write_text("m 1 1\nm{x=} 2 2\n# EOF\n")
    r = run("import", "--bucket", str(tmp_path / "b"), "--tenant", "t", str(bad))
    assert r.exit_code == 1
    assert f"{bad}:2:" in r.output
    assert not (tmp_path / "b" / "t").exists()


def test_config_file_unknown_key_rejected(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\nurl = "/tmp/x"\nendpoint = "http://x"\n')
    r = run("blocks", "ls", "--config", str(cfg))
    assert r.exit_code == 1 and "unknown [store] keys ['endpoint']" in r.output


@pytest.mark.integration
def test_cli_against_s3(tmp_path, s3_bucket):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{s3_bucket.url}"\nendpoint_url = "{s3_bucket.endpoint_url}"\n'
                   f'region = "us-east-1"\naccess_key_id = "testing"\nsecret_access_key = "testing"\n')
    r = run("generate", "--series", "49", "--hours", "2", "--config", str(cfg), "--tenant", "t", "--start", "0")
    assert r.exit_code == 0, r.output
    r = run("blocks", "verify", "--config", str(cfg))
    assert r.exit_code == 0 and "verified 1 blocks: ok" in r.output
