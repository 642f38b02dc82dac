"""Which HTTP stack for the hot path?  Minimal proxies, measured side by side.

Each variant is a do-nothing proxy (read the request, POST it upstream, relay
the answer) in front of `busbar mock`, loaded by wrk; the difference between
variants is only the stack.  Results feed docs/adr/0002-http-stack.md.

    python bench/bench_http_stack.py [--duration 5] [--runs 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_gateway import BODY, LUA, ROOT, free_port, med, wait_port, wrk  # noqa: E402

PROXY = r'''
import sys, trio, httpx
from busbar.server import HttpServer
from busbar.upstream import UpstreamClient, Origin
kind, port, upstream_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
origin = Origin.from_url(f"http://127.0.0.1:{upstream_port}")
target = b"/v1/chat/completions"

async def main():
    if kind == "hypercorn":
        # hypercorn's trio worker (ASGI) in front of the same upstream pool
        from hypercorn.config import Config
        from hypercorn.trio import serve
        pool = UpstreamClient().pool(origin)

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            response = await pool.request(b"POST", target, [(b"content-type", b"application/json")], body)
            try:
                data = await response.read()
            finally:
                await response.aclose()
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": data})

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.bounds.run)     # the pool's head-wait timeouts
            await serve(app, config)
        return
    if kind == "h11-pool":
        pool = UpstreamClient().pool(origin)
        async def handle(request, responder):
            response = await pool.request(b"POST", target, [(b"content-type", b"application/json")], request.body)
            try:
                body = await response.read()
            finally:
                await response.aclose()
            await responder.send(response.status, [(b"content-type", b"application/json")], body)
    else:
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream_port}",
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
        async def handle(request, responder):
            response = await client.post("/v1/chat/completions", content=request.body,
                                         headers={"content-type": "application/json"})
            await responder.send(response.status_code, [(b"content-type", b"application/json")], response.content)
    async with trio.open_nursery() as nursery:
        if kind == "h11-pool":
            await nursery.start(pool.bounds.run)     # the pool's head-wait timeouts
        await HttpServer(handle).serve("127.0.0.1", port)

trio.run(main)
'''


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="busbar-stack-"))
    script = tmp / "post.lua"
    script.write_text(LUA % BODY)
    proxy = tmp / "proxy.py"
    proxy.write_text(PROXY)
    mock_port = free_port()
    env_python = sys.executable
    procs = [subprocess.Popen([env_python, "-m", "busbar.cli", "mock", "--port", str(mock_port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL)]
    rows = []
    try:
        wait_port(mock_port)
        kinds = ["h11-pool", "httpx"]
        try:
            import hypercorn  # noqa: F401  (optional: pip install hypercorn to compare)
            kinds.append("hypercorn")
        except ImportError:
            print("bench: hypercorn not installed; skipping that variant", file=sys.stderr)
        for kind in kinds:
            port = free_port()
            p = subprocess.Popen([env_python, str(proxy), kind, str(port), str(mock_port)], cwd=ROOT,
                                 env={"PYTHONPATH": str(ROOT)})
            procs.append(p)
            wait_port(port)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            wrk(url, 8, 1, str(script))
            c20 = [wrk(url, 20, args.duration, str(script)) for _ in range(args.runs)]
            c1 = [wrk(url, 1, args.duration, str(script)) for _ in range(args.runs)]
            direct = [wrk(f"http://127.0.0.1:{mock_port}/v1/chat/completions", 1, args.duration, str(script))
                      for _ in range(args.runs)]
            rows.append((kind, med([r["rps"] for r in c20]),
                         med([a["p50_ms"] - d["p50_ms"] for a, d in zip(c1, direct)])))
            p.terminate()
            p.wait(5)
    finally:
        for p in procs:
            p.terminate()
    print(f"\nminimal proxy, upstream stack compared (median of {args.runs} x {args.duration:g}s)")
    print("variants: h11-pool = lean h11 server + own keep-alive pool; httpx = lean server + httpx.AsyncClient;")
    print("          hypercorn = hypercorn's trio worker (ASGI) + own pool")
    print(f"{'variant':>16} | {'RPS at c=20':>16} | {'added p50 at c=1 (ms)':>22}")
    for kind, rps, added in rows:
        print(f"{kind:>16} | {rps[0]:>9.0f} ±{rps[1]:<5.0f} | {added[0]:>14.3f} ±{added[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
