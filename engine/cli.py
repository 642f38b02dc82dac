"""`busbar` command line: serve, demo, validate, explain, diagram, usage, drain, keys, catalog, mock."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import tempfile

import trio

from busbar.config import PIPELINES_DIR, ConfigError, load_config

log = logging.getLogger("busbar")

DEMO_CONFIG = PIPELINES_DIR / "demo.yaml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


from busbar.app import run_gateway  # noqa: E402  (re-exported: tests and tools start gateways with it)


def print_config_error(exc: ConfigError) -> None:
    """Every problem of a rejected config, one per line (file:line: path: what)."""
    count = len(exc.problems)
    print(f"busbar: invalid config ({count} problem{'s' if count > 1 else ''}):", file=sys.stderr)
    for where, message in exc.problems:
        print(f"  {where}: {message}", file=sys.stderr)


def cmd_serve(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return 2
    host = args.host or config.server.get("host", "127.0.0.1")
    port = args.port if args.port is not None else config.server.get("port", 8080)
    if args.workers > 1:
        return _serve_workers(args, host, port, config)

    async def main():
        async with trio.open_nursery() as nursery:
            _, _, addrs, app = await nursery.start(functools.partial(
                run_gateway, config_path=args.config, reuse_port=args.reuse_port), config, host, port)
            print(serving_banner(config, host, addrs[0][1], app.admin_addrs), file=sys.stderr, flush=True)
            from busbar.config import advisories
            for note in advisories(config):
                print(f"warning: {note}", file=sys.stderr, flush=True)

    return _run_reporting_config_errors(main)


def _run_reporting_config_errors(main) -> int:
    """trio.run(main); a ConfigError raised while starting (e.g. the admin
    address in use) is printed like a validation error, exit 2."""
    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        matched, rest = group.split(ConfigError)
        if matched is None or rest is not None:
            raise
        while isinstance(matched, BaseExceptionGroup):
            matched = matched.exceptions[0]
        print_config_error(matched)
        return 2
    except ConfigError as exc:
        print_config_error(exc)
        return 2
    return 0


def serving_banner(config, host: str, port: int, admin_addrs=()) -> str:
    """What `busbar serve` says once it listens: where, which pools, and
    where admin and metrics answer."""
    scheme = "https" if config.server.get("tls") else "http"
    lines = [f"busbar: serving {config.source} on {scheme}://{host}:{port}"]
    for name, pool in config.pools.items():
        lines.append(f"  pool {name}: {len(pool['members'])} member(s), strategy {pool.get('strategy', 'weighted')}")
    if admin_addrs:
        admin_host, admin_port = admin_addrs[0][:2]
        lines.append(f"  admin and metrics: http://{admin_host}:{admin_port} (/metrics, /admin)")
    else:
        lines.append(f"  admin and metrics: on {scheme}://{host}:{port} (admin.listen: public)")
    return "\n".join(lines)


def _serve_workers(args, host: str, port: int, config) -> int:
    """N single-process gateways sharing the port (SO_REUSEPORT; the kernel
    spreads connections).  Each worker keeps its own routing state; signals
    are forwarded so SIGTERM drains all of them and SIGHUP reloads all."""
    import subprocess
    command = [sys.executable, "-m", "busbar.cli", "--log-level", args.log_level, "serve", "--config", args.config,
               "--host", host, "--port", str(port), "--reuse-port"]
    if config.state.get("backend", "memory") == "memory":
        # A continuation or a poll reaches whichever worker the kernel picks, so
        # say up front what else is per worker, not only the limits.
        print(f"busbar: state.backend is memory: each of the {args.workers} workers routes and limits alone, "
              "and keeps its own stored responses (previous_response_id, GET/DELETE /v1/responses/{id}, "
              "background runs): a request that lands on another worker does not find them "
              "(state.backend: redis shares all of it)",
              file=sys.stderr, flush=True)
    workers = [subprocess.Popen(command) for _ in range(args.workers)]

    def forward(signum, _frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    return max(worker.wait() for worker in workers)


def cmd_validate(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return 1
    pools = ", ".join(config.pools)
    print(f"{args.config}: OK ({len(config.providers)} providers, {len(config.pools)} pools: {pools})")
    from busbar.config import advisories
    for note in advisories(config):
        print(f"{args.config}: warning: {note}", file=sys.stderr)
    return 0


def cmd_explain(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return 1
    from busbar.pipeline import explain, load_pipelines
    pools = config.pools
    names = [args.pool] if args.pool else list(pools)
    pipelines = load_pipelines(config.raw)
    for name in names:
        if name not in pools:
            print(f"busbar: no pool {name!r}; pools: {', '.join(pools)}", file=sys.stderr)
            return 1
        pool = pools[name]
        pipeline_name = pool.get("pipeline", "default")
        print(f"pool {name} (strategy {pool.get('strategy', 'weighted')}, pipeline {pipeline_name})")
        for member in pool["members"]:
            print("  member", ", ".join(f"{k}={v}" for k, v in member.items()))
        print(explain(pipelines[pipeline_name]))
    return 0


def cmd_diagram(args) -> int:
    from busbar import diagram
    return diagram.main(args)


def cmd_usage(args) -> int:
    from busbar.admin import usage
    return usage.main(args)


def cmd_drain(args) -> int:
    """Drain or undrain a member of a running gateway through its admin API."""
    import httpx
    from urllib.parse import quote
    action = "drain" if args.command == "drain" else "undrain"
    key = args.key or os.environ.get("BUSBAR_ADMIN_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    url = f"{args.admin.rstrip('/')}/admin/members/{quote(args.member, safe='')}/{action}"
    try:
        response = httpx.post(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"busbar {action}: cannot reach the admin API at {args.admin}: {exc}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        print(f"busbar {action}: {response.status_code} {response.text.strip()}", file=sys.stderr)
        return 1
    members = response.json().get("members", [])
    print(f"{action}ed: {', '.join(members)}")
    return 0


def _admin_target(args) -> tuple[str, str | None]:
    """The admin API's URL and key: --admin / --key, else the config file's
    admin.listen and admin.key (--config), else $BUSBAR_ADMIN_URL / $BUSBAR_ADMIN_KEY."""
    url, key = args.admin, args.key
    if getattr(args, "config", None):
        config = load_config(args.config)
        admin = config.admin or {}
        if url is None:
            listen = admin.get("listen", "127.0.0.1:9901")
            if listen == "public":
                listen = f"{config.server.get('host', '127.0.0.1')}:{config.server.get('port', 8080)}"
            host, _, port = listen.rpartition(":")
            host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
            url = f"http://{host}:{port}"
        key = key or admin.get("key")
    url = url or os.environ.get("BUSBAR_ADMIN_URL", "http://127.0.0.1:9901")
    return url.rstrip("/"), key or os.environ.get("BUSBAR_ADMIN_KEY")


def _limit(value: str) -> int | None:
    """A limit flag of `keys update`: a positive integer, or `none` (remove that limit)."""
    if value.lower() in ("none", "off", "-"):
        return None
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a limit is a positive integer, or `none` to remove it")
    return number


def _update_changes(args, current: dict) -> dict:
    """`busbar keys update`'s flags as a PATCH body against the key's current
    fields: limits change one by one (the others stay), a budget keeps its
    period unless --period says otherwise, `--no-X` removes a field."""
    changes: dict = {}
    if args.all_pools:
        changes["pools"] = None
    elif args.pool:
        changes["pools"] = args.pool
    if args.direct is not None:
        changes["direct"] = args.direct
    for name in ("team", "expires"):
        if getattr(args, f"no_{name}"):
            changes[name] = None
        elif getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    limits = dict(current.get("limits") or {})
    given = [name for name in ("rpm", "tpm", "parallel") if hasattr(args, name)]     # (absent unless given)
    for name in given:
        if getattr(args, name) is None:
            limits.pop(name, None)
        else:
            limits[name] = getattr(args, name)
    if given:
        changes["limits"] = limits or None
    if args.no_budget:
        changes["budget"] = None
    elif args.budget_usd is not None or args.budget_tokens is not None or args.period is not None:
        budget = dict(current.get("budget") or {})
        if args.budget_usd is not None or args.budget_tokens is not None:
            budget.pop("usd", None), budget.pop("tokens", None)
            budget.update({"usd": args.budget_usd} if args.budget_usd is not None else {"tokens": args.budget_tokens})
        if not ("usd" in budget or "tokens" in budget):
            raise ValueError("--period changes a budget's period: the key has no budget; give --budget-usd or "
                             "--budget-tokens too")
        budget["period"] = args.period or budget.get("period", "month")
        changes["budget"] = budget
    if args.no_downgrade:
        changes["over_budget"] = None
    elif args.downgrade:
        changes["over_budget"] = {**(current.get("over_budget") or {}), "downgrade": args.downgrade}
    if not changes:
        raise ValueError("nothing to change: give at least one of --pool/--all-pools, --direct/--no-direct, "
                         "--team/--no-team, --expires/--no-expires, --rpm/--tpm/--parallel, "
                         "--budget-usd/--budget-tokens/--period/--no-budget, --downgrade/--no-downgrade")
    return changes


def _update_flags(k) -> None:
    k.add_argument("--pool", action="append", help="a pool the key may use (repeatable; replaces the list)")
    k.add_argument("--all-pools", action="store_true", help="remove the pool restriction (every pool)")
    k.add_argument("--direct", dest="direct", action="store_true", default=None, help="allow provider/model routes")
    k.add_argument("--no-direct", dest="direct", action="store_false", help="forbid provider/model routes")
    k.add_argument("--team", help="a team of auth.teams")
    k.add_argument("--no-team", action="store_true", help="take the key out of its team")
    k.add_argument("--expires", help="ISO date or date-time")
    k.add_argument("--no-expires", action="store_true", help="the key never expires")
    for name in ("rpm", "tpm", "parallel"):
        k.add_argument(f"--{name}", type=_limit, default=argparse.SUPPRESS, metavar="N|none",
                       help=f"set {name} (the other limits stay), or `none` to remove it")
    k.add_argument("--budget-usd", type=float)
    k.add_argument("--budget-tokens", type=int)
    k.add_argument("--period", choices=["day", "week", "month", "total"],
                   help="the budget's period (default: the key's current one, else month)")
    k.add_argument("--no-budget", action="store_true", help="remove the budget")
    k.add_argument("--downgrade", metavar="POOL", help="over budget: route to this pool instead of refusing")
    k.add_argument("--no-downgrade", action="store_true", help="over budget: refuse again")


def cmd_keys(args) -> int:
    """`busbar keys create|list|update|revoke`: the running gateway's client keys, through its admin API."""
    import httpx
    from urllib.parse import quote
    try:
        url, key = _admin_target(args)
    except ConfigError as exc:
        print_config_error(exc)
        return 2
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if args.action == "create":
        spec = {}
        for name in ("id", "team", "expires"):
            if getattr(args, name):
                spec[name] = getattr(args, name)
        if args.pool:
            spec["pools"] = args.pool
        if args.direct:
            spec["direct"] = True
        limits = {n: getattr(args, n) for n in ("rpm", "tpm", "parallel") if getattr(args, n) is not None}
        if limits:
            spec["limits"] = limits
        if args.budget_usd is not None or args.budget_tokens is not None:
            unit, amount = ("usd", args.budget_usd) if args.budget_usd is not None else ("tokens", args.budget_tokens)
            spec["budget"] = {unit: amount, "period": args.period}
        if args.downgrade:
            spec["over_budget"] = {"downgrade": args.downgrade}
        if args.aws:
            spec["aws"] = True
        call = ("POST", "/admin/keys", spec)
    elif args.action == "list":
        call = ("GET", "/admin/keys", None)
    elif args.action == "update":
        call = ("PATCH", f"/admin/keys/{quote(args.key_id, safe='')}", None)
    else:
        call = ("DELETE", f"/admin/keys/{quote(args.key_id, safe='')}", None)
    method, path, body = call

    def request(method, path, body):
        try:
            response = httpx.request(method, url + path, headers=headers, json=body, timeout=10)
        except httpx.HTTPError as exc:
            print(f"busbar keys {args.action}: cannot reach the admin API at {url}: {exc}", file=sys.stderr)
            return None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text.strip()}
        if response.status_code >= 400:
            print(f"busbar keys {args.action}: {response.status_code} {data.get('error', data)}", file=sys.stderr)
            return False
        return data
    if args.action == "update":        # the key's current fields first: limits change one by one
        current = request("GET", path, None)
        if not current:
            return 2 if current is None else 1
        try:
            body = _update_changes(args, current)
        except ValueError as exc:
            print(f"busbar keys update: {exc}", file=sys.stderr)
            return 1
    data = request(method, path, body)
    if not data:
        return 2 if data is None else 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.action == "create":
        print(f"created key {data['id']}; its secret (shown only now, store it safely):")
        if data.get("aws_access_key_id"):
            print(f"aws_access_key_id     {data['aws_access_key_id']}")
            print(f"aws_secret_access_key {data['aws_secret_access_key']}")
        print(data["key"])
    elif args.action == "revoke":
        print(f"revoked {data['id']}")
    elif args.action == "update":
        print(f"updated {data['id']}: pools={','.join(data.get('pools') or ['*'])} team={data.get('team') or '-'} "
              f"limits={_limits_text(data.get('limits'))} budget={_budget_text(data)} "
              f"expires={data.get('expires') or '-'}")
    else:
        rows = [[k["id"], k["source"], ",".join(k.get("pools") or ["*"]), k.get("team") or "-",
                 _limits_text(k.get("limits")), _budget_text(k), "revoked" if k.get("revoked") else "live"]
                for k in data["keys"]]
        head = ["id", "source", "pools", "team", "limits", "budget (spent/limit)", "state"]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        for row in [head] + rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _limits_text(limits) -> str:
    return " ".join(f"{k}={v}" for k, v in (limits or {}).items()) or "-"


def _budget_text(view: dict) -> str:
    budget = view.get("budget")
    if not budget:
        return "-"
    unit = "usd" if "usd" in budget else "tokens"
    return f"{view.get('spent', 0):g}/{budget[unit]:g} {unit}/{budget.get('period', 'month')}"


def cmd_catalog(args) -> int:
    import json
    from busbar import catalog
    rows = catalog.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        kind = "self-hosted" if r["self_hosted"] else r["protocol"]
        models = f"  models: {', '.join(r['models'])}" if r["models"] else ""
        print(f"{r['name']:<{width}}  {kind:<11}  {r['base_url']}  (auth: {r['auth']}){models}")
    print("\nuse: providers: {NAME: {catalog: ENTRY, key: ${YOUR_KEY}}}; any key you set overrides the entry")
    return 0


async def _start_mocks(nursery, specs):
    from busbar.mock import MockVendor
    vendors = []
    for name, port, kwargs in specs:
        vendor = MockVendor(name=name, **kwargs)
        await nursery.start(vendor.serve, "127.0.0.1", port)
        vendors.append(vendor)
    return vendors


def cmd_mock(args) -> int:
    async def main():
        async with trio.open_nursery() as nursery:
            backend = ({"kind": args.backend, "models": args.model or ["default"], "loaded": args.model or []}
                       if args.backend else None)
            vendors = await _start_mocks(nursery, [("mock", args.port, {"chunk_delay": args.chunk_delay,
                                                                       "chunks": args.chunks, "reply": args.reply,
                                                                       "record": not args.no_record,
                                                                       "backend": backend})])
            print(f"busbar mock: simulated vendors on {vendors[0].url} "
                  f"(openai base_url {vendors[0].url}/v1, anthropic base_url {vendors[0].url})", flush=True)

    trio.run(main)
    return 0


async def _drift(vendor, period: float = 2.0) -> None:
    """The demo's simulated vLLM: a load that rises and falls (a 2-minute
    wave) so the admin page's sparklines move without traffic; it stops
    once someone scripts the backend (a script replaces the mock's dict)."""
    import math
    backend, t = vendor.backend, 0.0
    while vendor.backend is backend:
        wave = (1 - math.cos(2 * math.pi * t / 120)) / 2          # 0..1
        backend.update(running=round(2 + 14 * wave), waiting=round(max(0.0, 12 * wave - 6)),
                       kv=round(0.15 + 0.8 * wave, 2), gpu={"util": round(20 + 75 * wave), "used": round(3000 + 4000 * wave),
                                                            "free": round(5192 - 4000 * wave), "temp": round(50 + 25 * wave)})
        await trio.sleep(period)
        t += period


def cmd_demo(args) -> int:
    for name, default in (("A", "9101"), ("B", "9102"), ("C", "9103"), ("D", "9104")):
        os.environ.setdefault(f"BUSBAR_DEMO_PORT_{name}", default)
    # Keys minted in a demo live as long as it does: the default store is
    # ./busbar-keys.sqlite, and a key left there by an earlier run (or by
    # `busbar serve` in the same directory) would turn the demo's open door
    # into 401s for the `api_key="demo"` its banner prints.
    with tempfile.TemporaryDirectory(prefix="busbar-demo-") as scratch:
        os.environ.setdefault("BUSBAR_KEYS_DB", os.path.join(scratch, "keys.sqlite"))
        return _demo(args)


def _demo(args) -> int:
    config = load_config(args.config or DEMO_CONFIG)
    port = args.port if args.port is not None else 8080
    a, b, c, d = (int(os.environ[f"BUSBAR_DEMO_PORT_{name}"]) for name in "ABCD")
    vllm = {"kind": "vllm", "models": ["llama"]}
    ollama = {"kind": "ollama", "models": ["llama3.2"], "loaded": ["llama3.2"], "vram": 2_300_000_000}

    async def main():
        async with trio.open_nursery() as nursery:
            mocks = await _start_mocks(nursery, [
                ("vendor-a", a, {"chunk_delay": 0.02}), ("vendor-b", b, {"chunk_delay": 0.02}),
                ("gpu-vllm", c, {"chunk_delay": 0.02, "backend": vllm}),
                ("gpu-ollama", d, {"chunk_delay": 0.02, "backend": ollama})])
            nursery.start_soon(_drift, mocks[2])

            async def gateway(task_status=trio.TASK_STATUS_IGNORED):
                await run_gateway(config, "127.0.0.1", port, task_status=task_status)
                nursery.cancel_scope.cancel()   # SIGINT/SIGTERM ended the gateway: stop the vendors too

            await nursery.start(gateway)
            url = f"http://127.0.0.1:{port}"
            print(DEMO_BANNER.format(url=url, a=a, b=b, c=c, d=d, config=config.source), flush=True)

    trio.run(main)
    return 0


DEMO_BANNER = """
Busbar demo is running ({config})
  gateway:            {url}
  admin page:         {url}/admin    (pools, breakers, keys, self-hosted backends, live request paths)
  simulated vendors:  http://127.0.0.1:{a}  and  http://127.0.0.1:{b}  (no API keys needed)
  self-hosted:        vLLM http://127.0.0.1:{c}  and  Ollama http://127.0.0.1:{d}  (pool `local`, least_loaded)

Try it with the OpenAI SDK (pool `smart` spans an OpenAI- and an Anthropic-protocol vendor):

    from openai import OpenAI
    client = OpenAI(base_url="{url}/v1", api_key="demo")
    print(client.chat.completions.create(model="smart",
          messages=[{{"role": "user", "content": "hello busbar"}}]).choices[0].message.content)

or the Anthropic SDK:

    from anthropic import Anthropic
    client = Anthropic(base_url="{url}", api_key="demo")
    print(client.messages.create(model="claude-pool", max_tokens=100,
          messages=[{{"role": "user", "content": "hello"}}]).content[0].text)

Watch failover: make vendor A fail its next 3 requests, then call again:

    curl -s -X POST http://127.0.0.1:{a}/_mock/script -d '{{"queue":[{{"status":500}},{{"status":500}},{{"status":500}}]}}'
    curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
         -d '{{"model":"smart","messages":[{{"role":"user","content":"still here?"}}]}}'

Self-hosted: the `local` pool picks the least loaded backend from their telemetry
(the vLLM's load rises and falls by itself until you script it; the admin page plots it).
Queue it up, and `local` sends its traffic to the Ollama:

    curl -s -X POST http://127.0.0.1:{c}/_mock/script -d '{{"backend":{{"waiting":30,"kv":0.95}}}}'

Ctrl-C stops everything.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="busbar", description="A fast LLM API gateway: protocols, not providers.")
    parser.add_argument("--log-level", default=os.environ.get("BUSBAR_LOG_LEVEL", "warning"))
    from busbar import __version__
    parser.add_argument("--version", action="version", version=f"busbar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="run the gateway with simulated vendors and a ready config")
    p.add_argument("--config")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="check a config file")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("explain", help="print a pool's effective pipeline")
    p.add_argument("--config", required=True)
    p.add_argument("--pool")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("diagram", help="render the request state machine (as a pool's pipeline configures it, "
                                       "optionally with one request's path highlighted)")
    p.add_argument("--config", help="config file: the pool's pipeline names the edges (default: the default pipeline)")
    p.add_argument("--pool", help="the pool whose pipeline to draw (needs --config)")
    p.add_argument("--request", metavar="FILE",
                   help="highlight a request's path: its access-log line or `GET /admin/api/requests/{id}` answer "
                        "(- reads stdin)")
    p.add_argument("--format", default="mermaid", choices=["mermaid", "dot", "svg", "png"],
                   help="png needs Graphviz's `dot`; svg, mermaid and dot text need nothing")
    p.add_argument("--output", help="write here instead of stdout")
    p.set_defaults(func=cmd_diagram)

    p = sub.add_parser("usage", help="token usage per pool, member, key and client from the usage database")
    p.add_argument("--db", default="busbar-usage.sqlite", help="the gateway's usage database")
    p.add_argument("--since", help="unix seconds, a duration back from now (24h, 7d) or an ISO date")
    p.add_argument("--until", help="same forms as --since")
    p.add_argument("--group-by", default="pool,member,key",
                   help="comma-separated: pool, member, model, key (upstream), client, client_key (the gateway "
                        "key id), team, minute, hour, day, week, month")
    p.add_argument("--config", help="price the tokens with this config's member prices (adds usd)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_usage)

    for name, what in (("drain", "stop new requests to a member of a running gateway (in-flight ones finish)"),
                       ("undrain", "let a drained member take requests again")):
        p = sub.add_parser(name, help=what)
        p.add_argument("member", help="a member id as the admin API lists it, or provider/model")
        p.add_argument("--admin", default=os.environ.get("BUSBAR_ADMIN_URL", "http://127.0.0.1:9901"),
                       help="the gateway's admin listener (default http://127.0.0.1:9901, or $BUSBAR_ADMIN_URL)")
        p.add_argument("--key", help="the admin key (default $BUSBAR_ADMIN_KEY)")
        p.set_defaults(func=cmd_drain)

    p = sub.add_parser("keys", help="mint, list, update and revoke client keys of a running gateway (its admin API)")
    keys = p.add_subparsers(dest="action", required=True)
    for action, what in (("create", "mint a key; prints its secret once"), ("list", "every key, config and minted"),
                         ("update", "change a minted key's pools, limits, budget, expiry or team (PATCH)"),
                         ("revoke", "revoke a minted key (refused from the next request on)")):
        k = keys.add_parser(action, help=what)
        k.add_argument("--config", help="the gateway's config file: its admin.listen and admin.key")
        k.add_argument("--admin", help="the admin listener's URL (default from --config, else $BUSBAR_ADMIN_URL "
                                       "or http://127.0.0.1:9901)")
        k.add_argument("--key", help="the admin key (default from --config, else $BUSBAR_ADMIN_KEY)")
        k.add_argument("--json", action="store_true", help="print the API's JSON answer")
        k.set_defaults(func=cmd_keys)
        if action in ("revoke", "update"):
            k.add_argument("key_id", metavar="ID")
        if action == "update":
            _update_flags(k)
        if action != "create":
            continue
        k.add_argument("--id", help="the key's id (default: generated)")
        k.add_argument("--pool", action="append", help="a pool the key may use (repeatable; default: every pool)")
        k.add_argument("--direct", action="store_true", help="allow provider/model routes")
        k.add_argument("--team", help="a team of auth.teams")
        k.add_argument("--expires", help="ISO date or date-time")
        k.add_argument("--rpm", type=int)
        k.add_argument("--tpm", type=int)
        k.add_argument("--parallel", type=int)
        k.add_argument("--budget-usd", type=float)
        k.add_argument("--budget-tokens", type=int)
        k.add_argument("--period", default="month", choices=["day", "week", "month", "total"])
        k.add_argument("--downgrade", metavar="POOL", help="over budget: route to this pool instead of refusing")
        k.add_argument("--aws", action="store_true",
                       help="also a SigV4 access key pair for Bedrock clients (needs auth.aws_master_secret)")

    p = sub.add_parser("catalog", help="list the provider catalog (presets for `providers.x.catalog`)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("mock", help="run simulated vendor APIs")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--chunks", type=int)
    p.add_argument("--reply", help="fixed reply text (default: echo the last user message)")
    p.add_argument("--no-record", action="store_true", help="do not keep received requests (benchmarks)")
    p.add_argument("--backend", choices=["vllm", "sglang", "ollama"],
                   help="also act as a self-hosted server: its telemetry and readiness pages "
                        "(load scriptable over POST /_mock/script {\"backend\": {...}})")
    p.add_argument("--model", action="append", help="models the simulated backend lists (repeatable)")
    p.set_defaults(func=cmd_mock)

    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
