"""Self-hosted backends (vLLM, SGLang, Ollama): telemetry and readiness.

A provider with `telemetry:` is scraped in the background, never on the
request path.  What a scrape learns lands on the routing `Target`s of that
provider as a `BackendLoad` (queue depth, KV-cache use, whether the model is
loaded, GPU numbers) and an `unready` flag:

* the `least_loaded` strategy (`busbar.routing.pools`) reads `load` while it
  is fresh, and falls back to in-flight counts once it is stale;
* a backend that stops answering its readiness probe, or no longer lists the
  model, is drained automatically (`unready`: no new requests, in-flight
  streams finish) and rejoins when the probe passes again.  An operator's
  drain is a separate flag, so recovery never undoes it.

The parsers below are pure (text in, numbers out); `BackendWatcher` owns the
I/O: one trio task per provider, each scrape bounded by `timeout`.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import orjson
import trio

log = logging.getLogger("busbar.selfhosted")

KINDS = ("vllm", "sglang", "ollama")

# Metric names per server, as their Prometheus endpoints spell them.
# vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (both accepted).
_QUEUE_METRICS = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting",
             ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "model_name"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs", ("sglang:token_usage",), "model_name"),
}
_SAMPLE = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class BackendLoad:
    """One scrape's view of a backend serving one model."""

    at: float                      # monotonic time of the scrape
    running: float | None = None   # requests being decoded
    waiting: float | None = None   # requests queued for a slot
    kv_usage: float | None = None  # KV-cache use, 0..1
    cold: bool = False             # the model is not loaded (Ollama would load it on the first request)
    gpu: dict | None = None        # util (0..100), memory_used/total (MiB), temperature (°C), from DCGM
    vram: float | None = None      # bytes of GPU memory the model holds (Ollama's /api/ps size_vram)

    def as_dict(self, now: float) -> dict:
        return {"age_s": round(now - self.at, 3), "running": self.running, "waiting": self.waiting,
                "kv_usage": self.kv_usage, "cold": self.cold, "gpu": self.gpu, "vram_bytes": self.vram}

    def sample(self, wall: float, unready: bool) -> dict:
        """The few numbers a sparkline plots, stamped with wall-clock time."""
        gpu = self.gpu or {}
        return {"t": round(wall, 3), "running": self.running, "waiting": self.waiting, "kv_usage": self.kv_usage,
                "gpu_util": gpu.get("util"), "gpu_memory_used": gpu.get("memory_used"), "vram_bytes": self.vram,
                "unready": unready}


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for each sample of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        samples.append((m["name"], labels, value))
    return samples


def queue_load(kind: str, text: str, model: str, now: float) -> BackendLoad:
    """A vLLM or SGLang `/metrics` page read for `model` (samples labelled
    with another model are ignored; unlabelled ones count for every model)."""
    running_name, waiting_name, kv_names, model_label = _QUEUE_METRICS[kind]
    found: dict[str, float] = {}
    for name, labels, value in parse_prometheus(text):
        if name not in (running_name, waiting_name, *kv_names):
            continue
        if labels.get(model_label, model) != model:
            continue
        key = "kv" if name in kv_names else name
        found[key] = found.get(key, 0.0) + value
    return BackendLoad(now, found.get(running_name), found.get(waiting_name), found.get("kv"))


def _ollama_names(obj) -> set[str]:
    names = set()
    for entry in (obj or {}).get("models") or ():
        if isinstance(entry, dict):
            names.update(n for n in (entry.get("name"), entry.get("model")) if isinstance(n, str))
    return names


def ollama_load(ps: dict, model: str, now: float) -> BackendLoad:
    """Ollama's `/api/ps`: a model not in it is cold (loading it takes seconds);
    a loaded one holds `size_vram` bytes of GPU memory."""
    for entry in (ps or {}).get("models") or ():
        if isinstance(entry, dict) and {entry.get("name"), entry.get("model")} & {model, f"{model}:latest"}:
            vram = entry.get("size_vram")
            return BackendLoad(now, vram=float(vram) if isinstance(vram, (int, float)) else None)
    return BackendLoad(now, cold=True)


def gpu_stats(text: str) -> dict | None:
    """NVIDIA DCGM exporter metrics, summed over GPUs (utilisation averaged)."""
    util, used, free, temp = [], 0.0, 0.0, []
    for name, _labels, value in parse_prometheus(text):
        if name == "DCGM_FI_DEV_GPU_UTIL":
            util.append(value)
        elif name == "DCGM_FI_DEV_FB_USED":
            used += value
        elif name == "DCGM_FI_DEV_FB_FREE":
            free += value
        elif name == "DCGM_FI_DEV_GPU_TEMP":
            temp.append(value)
    if not util and not used:
        return None
    return {"util": round(sum(util) / len(util), 1) if util else None, "memory_used": used,
            "memory_total": used + free, "temperature": max(temp) if temp else None}


def lists_model(kind: str, body: bytes, model: str) -> bool:
    """Whether a readiness listing (`/v1/models`, Ollama's `/api/tags`) names `model`."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if kind == "ollama":
        names = _ollama_names(obj)
        return model in names or f"{model}:latest" in names
    return any(isinstance(m, dict) and m.get("id") == model for m in (obj or {}).get("data") or ())


# ---------------------------------------------------------------------------
# the background side


@dataclass
class WatchSpec:
    """A provider's `telemetry:` block, normalised."""

    provider: str
    kind: str
    root: str                   # scheme://host:port of the backend
    models_url: str             # readiness listing
    interval: float = 2.0
    timeout: float = 1.0
    unready_after: int = 2      # consecutive failed probes before the backend is drained
    gpu_url: str | None = None
    stale_after: float = field(init=False)

    def __post_init__(self):
        self.stale_after = 3 * self.interval

    @classmethod
    def from_config(cls, name: str, spec: dict) -> "WatchSpec | None":
        telemetry = spec.get("telemetry")
        if telemetry is None:
            return None
        if isinstance(telemetry, str):
            telemetry = {"kind": telemetry}
        parts = urlsplit(telemetry.get("url") or spec["base_url"])
        root = f"{parts.scheme}://{parts.netloc}"
        base = spec["base_url"].rstrip("/")
        models_url = root + "/api/tags" if telemetry["kind"] == "ollama" else base + "/models"
        return cls(name, telemetry["kind"], root, models_url, float(telemetry.get("interval", 2.0)),
                   float(telemetry.get("timeout", 1.0)), int(telemetry.get("unready_after", 2)),
                   telemetry.get("gpu_url"))


# Samples kept per member for the admin page's sparklines: at the default
# 2 s interval, the last 4 minutes.
HISTORY = 120


def httpx_options(transport) -> dict:
    """httpx.AsyncClient arguments for a provider's `upstream.Transport`:
    its CA bundle's context and its egress proxy (credentials as a header)."""
    import httpx
    if transport is None:
        return {}
    options: dict = {}
    if transport.ssl_context is not None:
        options["verify"] = transport.ssl_context
    proxy = transport.proxy
    if proxy is not None:
        headers = {"proxy-authorization": proxy.authorization.decode()} if proxy.authorization else None
        options["proxy"] = httpx.Proxy(f"http://{proxy.host}:{proxy.port}", headers=headers)
    return options


class BackendWatcher:
    """Scrapes every self-hosted provider of the current gateway.  Owned by
    the app's nursery; reads `app.gateway` each round, so a reload's new
    router gets the next scrape.  Keeps the last `HISTORY` samples of each
    (provider, model) for the admin page."""

    def __init__(self, app, clock=trio.current_time, wall=time.time):
        self.app = app
        self.clock = clock
        self.wall = wall
        self._failures: dict[str, int] = {}
        self.history: dict[tuple[str, str], deque] = {}

    def samples(self, provider: str, model: str) -> list[dict]:
        """Oldest first; empty before the first scrape."""
        return list(self.history.get((provider, model), ()))

    async def run(self) -> None:
        while not self.app.gateway.watch_specs:     # nothing self-hosted (yet: a reload may add some)
            await trio.sleep(1.0)
        async with trio.open_nursery() as nursery:
            started: set[str] = set()
            while True:
                for spec in self.app.gateway.watch_specs:
                    if spec.provider not in started:
                        started.add(spec.provider)
                        nursery.start_soon(self._watch, spec.provider)
                await trio.sleep(1.0)

    def _spec(self, provider: str) -> WatchSpec | None:
        return next((s for s in self.app.gateway.watch_specs if s.provider == provider), None)

    async def _watch(self, provider: str) -> None:
        """Scrape one provider, through its transport (its `ca_bundle` and
        `proxy`, as its requests go); a reload that changes them gets a new
        client at the next scrape."""
        import httpx
        client, transport = None, None
        try:
            while True:
                spec = self._spec(provider)
                if spec is None:             # removed by a reload
                    await trio.sleep(1.0)
                    continue
                built = self.app.gateway.providers.get(provider)
                wanted = built.transport if built is not None else None
                if client is None or wanted != transport:
                    if client is not None:
                        await client.aclose()
                    client, transport = httpx.AsyncClient(**httpx_options(wanted)), wanted
                await self.scrape(client, spec)
                await trio.sleep(spec.interval)
        finally:
            if client is not None:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    async def scrape(self, client, spec: WatchSpec) -> None:
        router = self.app.gateway.router
        targets = [t for (p, _m), t in router.targets.items() if p == spec.provider]
        listing = load_page = gpu_page = None
        with trio.move_on_after(spec.timeout):
            try:
                listing = await client.get(spec.models_url, timeout=spec.timeout)
                if spec.kind == "ollama":
                    load_page = await client.get(spec.root + "/api/ps", timeout=spec.timeout)
                else:
                    load_page = await client.get(spec.root + "/metrics", timeout=spec.timeout)
                if spec.gpu_url:
                    gpu_page = await client.get(spec.gpu_url, timeout=spec.timeout)
            except Exception as exc:     # an unreachable backend is a failed probe, never a crash
                log.debug("scrape of %s failed: %s", spec.provider, exc)
        now, wall = self.clock(), self.wall()
        reachable = listing is not None and listing.status_code == 200
        gpu = gpu_stats(gpu_page.text) if gpu_page is not None and gpu_page.status_code == 200 else None
        failures = 0 if reachable else self._failures.get(spec.provider, 0) + 1
        self._failures[spec.provider] = failures
        for target in targets:
            ready = reachable and lists_model(spec.kind, listing.content, target.model)
            if load_page is not None and load_page.status_code == 200:
                try:
                    if spec.kind == "ollama":
                        load = ollama_load(orjson.loads(load_page.content), target.model, now)
                    else:
                        load = queue_load(spec.kind, load_page.text, target.model, now)
                    target.load = replace(load, gpu=gpu)
                    target.load_stale_after = spec.stale_after
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    pass
            unready = not ready and (failures >= spec.unready_after or reachable)
            if unready != target.unready:
                target.unready = unready
                log.warning("self-hosted backend %s/%s %s", target.provider, target.model,
                            "is not ready: drained until it recovers" if unready else "is ready again: rejoined")
            # an unanswered scrape is a sample too (a gap in the line, the unready mark)
            fresh = target.load if target.load is not None and target.load.at == now else BackendLoad(now)
            ring = self.history.get((target.provider, target.model))
            if ring is None:
                ring = self.history[(target.provider, target.model)] = deque(maxlen=HISTORY)
            ring.append(fresh.sample(wall, unready))
