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


NO_BUCKET = "(a typo? only import, receive and retention set/import/rule create a local bucket)"


@pytest.mark.parametrize("args,code,line", [
    (["blocks", "ls", "--bucket", "FILE"], 1, f"error: bucket FILE is not a directory {NO_BUCKET}"),
    (["blocks", "ls", "--bucket", "NOSUCH"], 1, f"error: bucket NOSUCH does not exist {NO_BUCKET}"),
    (["blocks", "verify", "--bucket", "NOSUCH"], 1, f"error: bucket NOSUCH does not exist {NO_BUCKET}"),
    (["retention", "show", "--bucket", "NOSUCH"], 1, f"error: bucket NOSUCH does not exist {NO_BUCKET}"),
    (["gateway", "serve", "--bucket", "NOSUCH"], 1, f"error: bucket NOSUCH does not exist {NO_BUCKET}"),
    (["import", "--bucket", "B", "--tenant", "t", "DIR"], 1, "error: DIR: is a directory (give the files, e.g. DIR/*.om)"),
    (["retention", "set", "raw=999999999999d", "--bucket", "B"], 1,
     "error: invalid duration '999999999999d': more than 1000y; say forever"),
    (["retention", "set", "raw=30d", "5m=7d", "--bucket", "B"], 1,
     "error: defaults: 5m=7d is shorter than raw=30d; a coarser tier should outlive the finer one it summarises "
     "(set them equal to drop both together)"),
    (["retention", "show", "--tenant", "../../etc", "--bucket", "B"], 1,
     "error: invalid tenant '../../etc': must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"),
    (["import", "--tenant", "t", "--block-range", "7m", "F", "--bucket", "B"], 1,
     "error: invalid block range '7m': use whole minutes that divide 24h, e.g. 2h, 1h, 30m"),
    (["receive", "--wal-dir", "W", "--block-range", "7m", "--bucket", "B"], 1,
     "error: invalid block range '7m': use whole minutes that divide 24h, e.g. 2h, 1h, 30m"),
    (["compact", "--memory-budget", "1", "--bucket", "B"], 1, "error: memory budget '1' is below the minimum 16MiB"),
    (["import", "--tenant", "t", "--memory-budget", "1", "F", "--bucket", "B"], 1,
     "error: memory budget '1' is below the minimum 16MiB"),
    (["blocks", "ls", "--bucket", "B", "--bogus"], 2, None),
], ids=["bucket-is-a-file", "ls-typo", "verify-typo", "show-typo", "gateway-typo", "import-dir", "huge-duration",
        "5m-shorter-than-raw", "show-tenant", "import-block-range", "receive-block-range", "compact-budget",
        "import-budget", "usage"])
def test_operator_messages_exact_line_and_exit_code(tmp_path, args, code, line):
    """Each message of the operator-experience review: its exit code and its whole line."""
    (tmp_path / "B").mkdir()
    (tmp_path / "FILE").write_text("")
    (tmp_path / "DIR").mkdir()
    (tmp_path / "F").write_text("m 1 1790000000000\n")
    names = ("B", "FILE", "NOSUCH", "DIR", "F", "W")
    r = run(*[str(tmp_path / a) if a in names else a for a in args])
    assert r.exit_code == code, r.output
    if line is not None:
        for n in names:
            line = line.replace(n + " ", f"{tmp_path / n} ").replace(n + ":", f"{tmp_path / n}:").replace(n + "/", f"{tmp_path / n}/")
        assert r.output.strip().splitlines() == [line]
    assert list((tmp_path / "B").iterdir()) == []  # nothing written


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
