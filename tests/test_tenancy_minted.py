"""Keys minted at run time (issue 15): `/admin/keys` over a socket, with the
official SDKs as the minted keys' clients; persistence in SQLite across a hot
reload and a restart, in Redis across two replicas; the secret shown once and
nowhere else (answers, logs, metrics)."""
from __future__ import annotations

import logging

import httpx
import openai
import pytest
import yaml

from busbar.mock import MockVendor
from clients import anthropic_messages, openai_chat
from harness import gateway_with, sdk
from redis_support import redis_server  # noqa: F401  (fixture)

ADMIN = {"authorization": "Bearer admin-secret"}


def config(db, **auth):
    return {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]},
                  "cheap": {"members": [{"provider": "oai", "model": "gpt-4o-mini"}]}},
        "auth": {"keys_db": str(db), **auth},
        "admin": {"enabled": True, "key": "admin-secret", "usage_db": "off"},
    }


@pytest.mark.sdk
async def test_minted_key_works_at_once_survives_reload_and_restart_revoked_fails_at_once(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="busbar")
    db = tmp_path / "keys.sqlite"
    cfg = config(db, keys=[{"id": "team-a", "key": "config-key-a"}])
    vendor = MockVendor(reply="hi")
    async with gateway_with(cfg, a=vendor) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", headers=ADMIN, json={"id": "app-1", "pools": ["smart"]})
            assert r.status_code == 201, r.text
            minted = r.json()
            secret = minted.pop("key")
            assert secret.startswith("bb-") and minted["id"] == "app-1" and "key_sha256" not in minted
            # works at once, with the SDK; the config key alongside it
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key="config-key-a")) == "hi"
            with pytest.raises(openai.PermissionDeniedError):
                await sdk(lambda: openai_chat(gw.url, "cheap", "x", api_key=secret))
            assert [r.get("key_id") for r in gw.gateway.recent] == ["app-1", "team-a", None]
            # ids are unique across config and minted keys
            r = await http.post("/admin/keys", headers=ADMIN, json={"id": "team-a"})
            assert r.status_code == 409 and "taken" in r.json()["error"]
            listed = (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]
            assert {(k["id"], k["source"]) for k in listed} == {("team-a", "config"), ("app-1", "minted")}
            # a hot reload from the file keeps it
            path = tmp_path / "busbar.yaml"
            path.write_text(yaml.safe_dump({**cfg, "providers": {"oai": {**cfg["providers"]["oai"],
                                                                          "base_url": vendor.url + "/v1"}},
                                            "admin": {**cfg["admin"], "listen": "public"}}))
            gw.app.config_path = str(path)
            assert (await http.post("/admin/reload", headers=ADMIN)).status_code == 200
            assert gw.app.reloads == 1
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
            # PATCH: limits take effect on the next request
            r = await http.patch("/admin/keys/app-1", headers=ADMIN, json={"limits": {"rpm": 1}})
            assert r.status_code == 200 and r.json()["limits"] == {"rpm": 1}
            assert await sdk(lambda: anthropic_messages(gw.url, "smart", "x", api_key=secret)) == "hi"
            with pytest.raises(openai.RateLimitError):
                await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret))
            r = await http.patch("/admin/keys/app-1", headers=ADMIN, json={"limits": None})
            assert r.status_code == 200 and "limits" not in r.json()
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
            # a second key to revoke after the restart
            other = (await http.post("/admin/keys", headers=ADMIN, json={})).json()
            assert other["id"].startswith("key-")
        metrics = (await httpx.AsyncClient().get(gw.url + "/metrics")).text
    # restart: a new App on the same file
    async with gateway_with(cfg, a=vendor) as gw:
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=other["key"])) == "hi"
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.delete(f"/admin/keys/{other['id']}", headers=ADMIN)
            assert r.status_code == 200 and r.json()["revoked"]
            with pytest.raises(openai.AuthenticationError):            # at once
                await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=other["key"]))
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
            listed = (await http.get("/admin/keys", headers=ADMIN)).text
            # ids are never reused, revoked ones included
            assert (await http.post("/admin/keys", headers=ADMIN, json={"id": other["id"]})).status_code == 409
    # the secrets appear nowhere but in the POST answers
    for text in (caplog.text, metrics, listed, db.read_bytes().decode("latin-1")):
        assert secret not in text and other["key"] not in text
    assert "app-1" in listed


@pytest.mark.integration
async def test_admin_keys_errors_are_clear_and_need_the_admin_key(tmp_path):
    cfg = config(tmp_path / "keys.sqlite", keys=[{"id": "team-a", "key": "config-key-a"}],
                 teams={"platform": {"limits": {"rpm": 5}}})
    async with gateway_with(cfg, a=MockVendor()) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.post("/admin/keys", json={})).status_code == 401
            assert (await http.post("/admin/keys", headers={"authorization": "Bearer nope"}, json={})).status_code == 401
            cases = [
                ({"pools": "smart"}, "pools"),
                ({"pools": ["nope"]}, "no pool 'nope'"),
                ({"team": "ghosts"}, "no team 'ghosts'"),
                ({"limits": {"rpm": "many"}}, "limits.rpm"),
                ({"budget": {"usd": 5, "period": "fortnight"}}, "budget.period"),
                ({"key": "my-own-secret"}, "unknown key(s) 'key'"),
                ({"id": "has space"}, "id"),
                ({"expires": "next tuesday"}, "expires"),
                ([1, 2], "JSON object"),
            ]
            for body, expected in cases:
                r = await http.post("/admin/keys", headers=ADMIN, json=body)
                assert r.status_code == 400 and expected in r.json()["error"], (body, r.text)
            r = await http.post("/admin/keys", headers={**ADMIN, "content-type": "application/json"}, content=b"{nope")
            assert r.status_code == 400 and "not JSON" in r.json()["error"]
            r = await http.post("/admin/keys", headers=ADMIN, json={"id": "ok-1", "team": "platform",
                                                                     "budget": {"usd": 5, "period": "day"}})
            assert r.status_code == 201, r.text
            assert (await http.get("/admin/keys/ok-1", headers=ADMIN)).json()["spent"] == 0
            assert (await http.get("/admin/keys/nope", headers=ADMIN)).status_code == 404
            assert (await http.patch("/admin/keys/team-a", headers=ADMIN, json={})).status_code == 409
            assert (await http.delete("/admin/keys/team-a", headers=ADMIN)).status_code == 409
            assert (await http.delete("/admin/keys/nope", headers=ADMIN)).status_code == 404
            r = await http.patch("/admin/keys/ok-1", headers=ADMIN, json={"id": "renamed"})
            assert r.status_code == 400 and "cannot change" in r.json()["error"]
            r = await http.put("/admin/keys/ok-1", headers=ADMIN, json={})
            assert r.status_code == 405 and "PATCH" in r.headers["allow"]
            assert (await http.delete("/admin/keys/ok-1", headers=ADMIN)).status_code == 200
            r = await http.patch("/admin/keys/ok-1", headers=ADMIN, json={"pools": ["smart"]})
            assert r.status_code == 409 and "revoked" in r.json()["error"]
    # without an admin key nobody may mint (the listing stays readable)
    cfg["admin"].pop("key")
    async with gateway_with(cfg, a=MockVendor()) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", json={})
            assert r.status_code == 403 and "admin.key" in r.json()["error"]
            assert (await http.get("/admin/keys")).status_code == 200


@pytest.mark.sdk
async def test_first_minted_key_turns_on_client_auth(tmp_path):
    async with gateway_with(config(tmp_path / "keys.sqlite"), a=MockVendor(reply="hi")) as gw:
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key="anything")) == "hi"
        async with httpx.AsyncClient(base_url=gw.url) as http:
            secret = (await http.post("/admin/keys", headers=ADMIN, json={"id": "first"})).json()["key"]
        with pytest.raises(openai.AuthenticationError):
            await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key="anything"))
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"


@pytest.mark.sdk
async def test_minted_keys_in_redis_are_shared_by_replicas_at_once(redis_server, tmp_path):
    cfg = config(tmp_path / "unused.sqlite", keys=[{"id": "team-a", "key": "config-key-a"}])
    cfg["state"] = {"backend": "redis", "url": redis_server.url, "prefix": "minted", "timeout_ms": 1000}
    vendor = MockVendor(reply="hi")
    async with gateway_with(cfg, a=vendor) as one, gateway_with(cfg, a=vendor) as two:
        async with httpx.AsyncClient() as http:
            r = await http.post(one.url + "/admin/keys", headers=ADMIN, json={"id": "shared-1"})
            assert r.status_code == 201, r.text
            secret = r.json()["key"]
            # the other replica takes it from the pub/sub message (its cache; no lookup per request)
            await eventually(lambda: "shared-1" in two.app.minted.records, "two receives the minted key")
            assert await sdk(lambda: openai_chat(two.url, "smart", "x", api_key=secret)) == "hi"
            assert (await http.post(two.url + "/admin/keys", headers=ADMIN, json={"id": "shared-1"})).status_code == 409
            r = await http.delete(one.url + "/admin/keys/shared-1", headers=ADMIN)
            assert r.status_code == 200
            await eventually(lambda: not two.app.minted.by_hash, "two receives the revocation")
            with pytest.raises(openai.AuthenticationError):       # revoked on one, refused by two
                await sdk(lambda: openai_chat(two.url, "smart", "x", api_key=secret))
    assert not (tmp_path / "unused.sqlite").exists()
    # a restart reads them back from Redis
    async with gateway_with(cfg, a=vendor) as three:
        listed = (await httpx.AsyncClient().get(three.url + "/admin/keys", headers=ADMIN)).json()["keys"]
        assert [k["id"] for k in listed if k["source"] == "minted"] == ["shared-1"]
        assert listed[-1]["revoked"]


async def eventually(check, what: str, timeout: float = 30.0) -> None:
    """A liveness guard for a loaded box (not a timing assertion)."""
    import trio
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"never happened: {what}")


def _keys_cli(*args, config):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "busbar.cli", "keys", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.sdk
@pytest.mark.slow
def test_busbar_keys_cli_create_list_revoke_across_a_process_restart(tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from harness import free_port, wait_port
    mock_port, gw_port, admin_port = free_port(), free_port(), free_port()
    config = tmp_path / "busbar.yaml"
    db = tmp_path / "keys.sqlite"
    config.write_text(yaml.safe_dump({
        "providers": {"m": {"protocol": "openai", "base_url": f"http://127.0.0.1:{mock_port}/v1", "key": "k"}},
        "pools": {"smart": {"members": [{"provider": "m", "model": "x"}]}},
        "auth": {"keys_db": str(db)},
        "server": {"port": gw_port},
        "admin": {"enabled": True, "listen": f"127.0.0.1:{admin_port}", "key": "${ADMIN_KEY}", "usage_db": "off"},
    }))
    monkeypatch.setenv("ADMIN_KEY", "admin-secret-cli")      # the gateway and the CLI read the same config
    env = dict(os.environ)
    mock = subprocess.Popen([sys.executable, "-m", "busbar.cli", "mock", "--port", str(mock_port), "--reply", "hi"],
                            env=env, stdout=subprocess.DEVNULL)

    def serve():
        proc = subprocess.Popen([sys.executable, "-m", "busbar.cli", "--log-level", "debug", "serve",
                                 "--config", str(config)], env=env, stderr=subprocess.PIPE, text=True)
        wait_port(gw_port)
        wait_port(admin_port)
        return proc

    def stop(proc):
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        return err

    url = f"http://127.0.0.1:{gw_port}"
    gateway = serve()
    try:
        wait_port(mock_port)
        made = _keys_cli("create", "--id", "cli-1", "--pool", "smart", "--rpm", "100", config=config)
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("bb-") and "cli-1" in made.stdout
        assert openai_chat(url, "smart", "x", api_key=secret) == "hi"
        listed = _keys_cli("list", config=config)
        assert listed.returncode == 0 and "cli-1" in listed.stdout and "rpm=100" in listed.stdout
        assert secret not in listed.stdout
        bad = _keys_cli("create", "--pool", "nope", config=config)
        assert bad.returncode == 1 and "no pool 'nope'" in bad.stderr
        logs = stop(gateway)
        gateway = serve()                                   # a new process: the key is still there
        assert openai_chat(url, "smart", "x", api_key=secret) == "hi"
        gone = _keys_cli("revoke", "cli-1", config=config)
        assert gone.returncode == 0 and "revoked cli-1" in gone.stdout
        with pytest.raises(openai.AuthenticationError):
            openai_chat(url, "smart", "x", api_key=secret)
        logs += stop(gateway)
        assert "cli-1" in logs and secret not in logs      # the access log names the key id, never the secret
    finally:
        for proc in (gateway, mock):
            if proc.poll() is None:
                proc.kill()
    unreachable = _keys_cli("list", config=config)
    assert unreachable.returncode == 2 and "cannot reach the admin API" in unreachable.stderr


def _keys_cli_at(url, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "busbar.cli", "keys", *args, "--admin", url, "--key", "admin-secret"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.sdk
@pytest.mark.slow
async def test_busbar_keys_update_changes_limits_one_by_one_budget_team_pools_and_expiry(tmp_path):
    import trio
    cfg = config(tmp_path / "keys.sqlite", teams={"plat": {"limits": {"rpm": 1000}}})
    async with gateway_with(cfg, a=MockVendor(reply="hi")) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", headers=ADMIN, json={
                "id": "app-1", "pools": ["smart"], "limits": {"rpm": 50, "tpm": 100000},
                "budget": {"usd": 10, "period": "week"}})
            secret = r.json()["key"]

        def cli(*args):
            return trio.to_thread.run_sync(lambda: _keys_cli_at(gw.url, *args))
        done = await cli("update", "app-1", "--rpm", "1", "--budget-usd", "5")
        assert done.returncode == 0, done.stderr
        assert "updated app-1" in done.stdout and "rpm=1 tpm=100000" in done.stdout and secret not in done.stdout
        record = gw.app.minted.records["app-1"]
        assert record["limits"] == {"rpm": 1, "tpm": 100000}               # tpm stayed
        assert record["budget"] == {"usd": 5.0, "period": "week"}          # the period stayed
        # the new rpm holds from the next request on
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
        with pytest.raises(openai.RateLimitError):
            await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret))
        done = await cli("update", "app-1", "--rpm", "none", "--no-budget", "--pool", "cheap", "--team", "plat",
                         "--json")
        assert done.returncode == 0, done.stderr
        record = gw.app.minted.records["app-1"]
        assert record["limits"] == {"tpm": 100000} and "budget" not in record
        assert record["pools"] == ["cheap"] and record["team"] == "plat"
        assert await sdk(lambda: openai_chat(gw.url, "cheap", "x", api_key=secret)) == "hi"
        with pytest.raises(openai.PermissionDeniedError):
            await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret))
        done = await cli("update", "app-1", "--all-pools", "--expires", "2020-01-01")
        assert done.returncode == 0, done.stderr
        with pytest.raises(openai.AuthenticationError):                    # expired
            await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret))
        done = await cli("update", "app-1", "--no-expires", "--no-team")
        assert done.returncode == 0 and "team=-" in done.stdout and "expires=-" in done.stdout
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"
        # what is refused, and how
        nothing = await cli("update", "app-1")
        assert nothing.returncode == 1 and "nothing to change" in nothing.stderr
        unknown = await cli("update", "nope", "--rpm", "3")
        assert unknown.returncode == 1 and "404" in unknown.stderr
        bad = await cli("update", "app-1", "--team", "ghosts")
        assert bad.returncode == 1 and "no team 'ghosts'" in bad.stderr
        period_only = await cli("update", "app-1", "--period", "day")
        assert period_only.returncode == 1 and "has no budget" in period_only.stderr
        assert (await cli("update", "app-1", "--rpm", "0")).returncode == 2        # argparse: not a limit


MASTER = "master-secret-for-sigv4-pairs-0123456789"


@pytest.mark.sdk
@pytest.mark.slow
async def test_a_minted_key_with_a_sigv4_pair_signs_boto3_requests_and_its_revocation_ends_them(tmp_path, caplog):
    """POST /admin/keys {aws: true}: an access key id (kept) and its secret
    (shown once, derived from auth.aws_master_secret, stored nowhere); boto3
    signs with it and gets the key's pools and limits; revoking the key
    refuses the pair; another gateway with the same master (a restart) verifies it."""
    from botocore.exceptions import ClientError as BotoError
    from clients import bedrock_converse
    caplog.set_level(logging.DEBUG, logger="busbar")
    db = tmp_path / "keys.sqlite"
    cfg = config(db, keys=[{"id": "team-a", "key": "config-key-a"}], aws_master_secret=MASTER)
    vendor = MockVendor(reply="hi")
    async with gateway_with(cfg, a=vendor) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", headers=ADMIN,
                                json={"id": "bedrock-app", "pools": ["smart"], "limits": {"rpm": 2}, "aws": True})
            assert r.status_code == 201, r.text
            made = r.json()
            access, secret = made["aws_access_key_id"], made["aws_secret_access_key"]
            assert access.startswith("BBKA") and len(access) == 20 and len(secret) == 40
            listed = (await http.get("/admin/keys/bedrock-app", headers=ADMIN)).json()
            assert listed["aws_access_key_id"] == access and "aws_secret_access_key" not in listed
            assert secret not in (await http.get("/admin/api/state", headers=ADMIN)).text

        def converse(model="smart", **kw):
            return bedrock_converse(gw.url, model, "hello", **{"access_key_id": access, "secret_access_key": secret,
                                                               **kw})
        assert await sdk(converse) == "hi"
        assert gw.gateway.recent[-1]["key_id"] == "bedrock-app"
        with pytest.raises(BotoError) as info:                     # the key's pools
            await sdk(lambda: converse("cheap"))
        assert info.value.response["Error"]["Code"] == "AccessDeniedException"
        with pytest.raises(BotoError) as info:                     # a wrong secret: a signature failure
            await sdk(lambda: converse(secret_access_key=secret[:-1] + ("A" if secret[-1] != "A" else "B")))
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert await sdk(converse) == "hi"
        with pytest.raises(BotoError) as info:                     # its rpm (2)
            await sdk(converse)
        assert info.value.response["Error"]["Code"] == "ThrottlingException"
    # nothing secret at rest: the store holds the access key id, never the pair's secret
    raw = db.read_bytes()
    assert access.encode() in raw and secret.encode() not in raw and MASTER.encode() not in raw
    async with gateway_with(cfg, a=vendor) as gw:                  # a restart derives the same secret
        assert await sdk(converse) == "hi"
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.delete("/admin/keys/bedrock-app", headers=ADMIN)).status_code == 200
            with pytest.raises(BotoError) as info:                 # revoked: the pair is unknown
                await sdk(converse)
            assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
            r = await http.post("/admin/keys", headers=ADMIN, json={"aws": "yes"})
            assert r.status_code == 400
        import trio
        made = await trio.to_thread.run_sync(lambda: _keys_cli_at(gw.url, "create", "--id", "cli-aws", "--aws"))
        assert made.returncode == 0, made.stderr
        lines = made.stdout.splitlines()
        cli_access = next(l.split()[1] for l in lines if l.startswith("aws_access_key_id"))
        cli_secret = next(l.split()[1] for l in lines if l.startswith("aws_secret_access_key"))
        assert await sdk(lambda: bedrock_converse(gw.url, "smart", "hello", access_key_id=cli_access,
                                                  secret_access_key=cli_secret)) == "hi"
    async with gateway_with(config(db), a=vendor) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", headers=ADMIN, json={"id": "no-master", "aws": True})
            assert r.status_code == 400 and "aws_master_secret" in r.json()["error"]
        refused = await trio.to_thread.run_sync(lambda: _keys_cli_at(gw.url, "create", "--aws"))
        assert refused.returncode == 1 and "aws_master_secret" in refused.stderr
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logs and MASTER not in logs


@pytest.mark.sdk
async def test_a_minted_sigv4_pair_lists_the_inference_profiles(tmp_path):
    """The control plane's lists check a signature the way requests do: a
    minted pair (no auth.aws_credentials at all) is verified, a wrong secret refused."""
    import boto3
    from botocore.exceptions import ClientError as BotoError
    cfg = config(tmp_path / "keys.sqlite", keys=[{"id": "team-a", "key": "config-key-a"}], aws_master_secret=MASTER)
    async with gateway_with(cfg, a=MockVendor(reply="hi")) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", headers=ADMIN, json={"id": "lister", "aws": True})
            assert r.status_code == 201, r.text
            made = r.json()

        def control(secret):
            return boto3.client("bedrock", endpoint_url=gw.url, region_name="us-east-1",
                                aws_access_key_id=made["aws_access_key_id"], aws_secret_access_key=secret)
        profiles = await sdk(lambda: control(made["aws_secret_access_key"]).list_inference_profiles())
        assert {p["inferenceProfileId"] for p in profiles["inferenceProfileSummaries"]} >= {"smart", "cheap"}
        with pytest.raises(BotoError) as info:
            await sdk(lambda: control("wrong" * 8).list_inference_profiles())
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
