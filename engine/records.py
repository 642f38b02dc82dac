"""What the gateway remembers of a request: its record and one record per
attempt.  Filled in by the driver (`busbar.exchange`), read by the access log,
the admin API and its listeners; no behaviour lives here."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from busbar import lifecycle


@dataclass(slots=True)
class AttemptRecord:
    member: str
    key: str | None
    outcome: str = "pending"      # ok | fault class | cancelled
    status: int = 0
    ms: float = 0.0
    message: str = ""
    hedge: bool = False           # started as a hedge (dispatch.hedge)
    usage: object = None          # ir.Usage this attempt's stream reported before its commit
    waste_tokens: int = 0         # a hedge loser's reported tokens (billed, not used)
    dropped: int = 0              # conversation messages dropped to fit the member (truncation: auto, ADR 0028)
    # the vendor's own id of this call (its request-id header, ADR 0029): for the operator
    # to quote to the vendor; the client is shown the record's id, never this one
    upstream_request_id: str | None = None


@dataclass(slots=True)
class RequestRecord:
    id: str
    client_protocol: str
    pool: str = ""
    stream: bool = False
    status: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)
    lifecycle: lifecycle.Lifecycle = field(default_factory=lifecycle.Lifecycle)
    started: float = field(default_factory=time.time)
    ms: float = 0.0
    ttfb_ms: float | None = None
    error: str = ""
    usage: object = None          # ir.Usage when the response told us
    client_key_id: str | None = None   # routing.fingerprint of the gateway client key (usage accounting)
    tenant: str | None = None     # the tenancy key id (busbar.tenancy), never the secret
    team: str | None = None       # the tenancy key's team
    limited: str | None = None    # why tenancy refused it: rpm | tpm | parallel | budget
    alerts: tuple = ()            # tenancy levels whose budget alert this request crossed
    cost_usd: float = 0.0         # priced from the answering member's `price`
    # each resume of a broken stream: {"from", "to", "after_chars", "trimmed", "fault", "added_ms"}
    resumed: list = field(default_factory=list)
    cache: str = ""               # the response cache's verdict (hit, miss, refresh, bypass, skip); "" without one
    # members routing skipped because their protocol cannot express the request:
    # {"member", "protocol", "field" (IR path), "reason"} (busbar.protocols.expressible)
    filtered: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"id": self.id, "client_protocol": self.client_protocol, "pool": self.pool, "stream": self.stream,
                "status": self.status, "ms": round(self.ms, 3),
                "ttfb_ms": None if self.ttfb_ms is None else round(self.ttfb_ms, 3),
                "attempts": [{"member": a.member, "key": a.key, "outcome": a.outcome, "status": a.status,
                              "ms": round(a.ms, 3), **({"message": a.message} if a.message else {}),
                              **({"hedge": True} if a.hedge else {}),
                              **({"waste_tokens": a.waste_tokens} if a.waste_tokens else {}),
                              **({"dropped": a.dropped} if a.dropped else {}),
                              **({"upstream_request_id": a.upstream_request_id} if a.upstream_request_id else {})}
                             for a in self.attempts],
                "final_member": next((a.member for a in reversed(self.attempts) if a.outcome == "ok"), None),
                "path": self.lifecycle.describe(), "state": self.lifecycle.state,
                "usage": _usage_dict(self.usage),
                **({"key_id": self.tenant, "cost_usd": self.cost_usd} if self.tenant else {}),
                **({"resumed": self.resumed} if self.resumed else {}),
                **({"cache": self.cache} if self.cache else {}),
                **({"filtered": self.filtered} if self.filtered else {}),
                **({"error": self.error} if self.error else {})}


def _usage_dict(usage) -> dict | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens, "reasoning_tokens": usage.reasoning_tokens}
