"""The httptools request parser makes h11's decisions (ADR 0023).

A differential test: the same bytes, in the same pieces, go through both
parsers the way the server drives them (a parser per request, bytes past a
request handed to the next, EOF at the end), and every outcome must be the
same: each request's method, target, headers, body and keep-alive, or the
same refusal (status and message), the same `idle` answer wherever the
server may ask it (a timeout), the same bytes left over.  The inputs are
hostile corpora (smuggling, framing, oversize heads, control bytes,
pipelining, odd versions and methods, upgrades), every split of each, and
hypothesis-generated streams built from near-valid parts, mutated valid
requests and plain random bytes."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# a worktree whose venv predates the dependency: `pip install -e .` brings it
pytest.importorskip("httptools", reason="httptools (a dependency since ADR 0023) is not installed")

from busbar.http_in import CLOSED, END, NEED_DATA, FastParser, H11Parser, ParseError, RequestHead, keep_alive  # noqa: E402

pytestmark = pytest.mark.pure

MAX_HEAD = 64 * 1024


def drive(parser_class, pieces: list[bytes], eof: bool = True) -> list:
    """What the server sees from a connection that sends `pieces` (then
    closes, if `eof`): per request ("request", head fields, body,
    keep-alive, leftover), or ("error", status, message), or ("closed",),
    with ("idle", bool) wherever the parser waited for bytes."""
    out: list = []
    pieces = list(pieces) + ([b""] if eof else [])
    pending = b""
    while True:
        parser = parser_class(MAX_HEAD)
        if pending:
            parser.receive_data(pending)
            pending = b""
        head = None
        body = []
        try:
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    out.append(("idle", parser.idle))
                    if not pieces:
                        out.append(("waiting",))
                        return out
                    parser.receive_data(pieces.pop(0))
                elif isinstance(event, RequestHead):
                    assert head is None
                    head = event
                elif event is END:
                    break
                elif event is CLOSED:
                    out.append(("closed",))
                    return out
                else:
                    assert isinstance(event, bytes) and head is not None and event
                    body.append(event)
        except ParseError as exc:
            out.append(("error", exc.status, str(exc), parser.idle))
            return out
        pending = parser.trailing
        out.append(("request", head.method, head.target, head.headers, head.http_version, b"".join(body),
                    keep_alive(head), pending))
        if not pending and not pieces:
            return out


def same_decisions(pieces: list[bytes], eof: bool = True) -> list:
    reference = drive(H11Parser, pieces, eof)
    fast = drive(FastParser, pieces, eof)
    assert fast == reference
    return reference


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut once at every point."""
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    out += [[data[:i], data[i:]] for i in range(1, len(data))]
    return out


def req(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n\r\n" + body


OK = b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 7"
CHUNKED = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked"

CORPUS = {
    # the plain ones the fast path serves
    "post": req(OK, b'{"a":1}'),
    "get": req(b"GET /healthz HTTP/1.1\r\nhost: x"),
    "head": req(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*"),
    "mixed case names": req(b"POST / HTTP/1.1\r\nHOST: a\r\nContent-Length: 2\r\nX-Api-Key: k", b"{}"),
    "empty value": req(b"GET / HTTP/1.1\r\nx:\r\nhost: a\r\ny: "),
    "whitespace around values": req(b"GET / HTTP/1.1\r\nhost: \t a \t \r\nx:b  c\t"),
    "obs-text value": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: caf\xc3\xa9 \xff"),
    "get with body": req(b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 2", b"hi"),
    "post without length": req(b"POST / HTTP/1.1\r\nhost: a"),
    "content-length zero": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0"),
    "content-length leading zeros": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 002", b"hi"),
    "content-length trailing space": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2 ", b"hi"),
    "query": req(b"GET /v1/models?x=1&y=%20 HTTP/1.1\r\nhost: a"),
    "absolute-form": req(b"POST http://gw.test/v1/chat/completions HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 2", b"{}"),
    "absolute-form https": req(b"GET https://gw.test HTTP/1.1\r\nhost: gw.test"),
    "options star": req(b"OPTIONS * HTTP/1.1\r\nhost: a"),
    "http/1.0": req(b"POST /v1/chat/completions HTTP/1.0\r\ncontent-length: 2", b"{}"),
    "http/1.0 keep-alive": req(b"GET / HTTP/1.0\r\nconnection: keep-alive"),
    "http/1.0 with host": req(b"GET / HTTP/1.0\r\nhost: a"),
    "connection close": req(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close"),
    "connection list": req(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, Close"),
    "expect 100-continue": req(b"POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2", b"{}"),
    "many headers": req(b"GET / HTTP/1.1\r\nhost: a" + b"".join(b"\r\nx-h%d: %d" % (i, i) for i in range(300))),
    "pipelined": req(b"GET /1 HTTP/1.1\r\nhost: a") + req(b"POST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 3", b"abc")
    + req(b"GET /3 HTTP/1.1\r\nhost: a\r\nconnection: close"),
    "pipelined after a body": req(OK, b'{"a":1}') + req(OK, b'{"b":2}'),
    # smuggling and framing
    "CL+TE": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked", b"0\r\n\r\n")
    + req(b"GET /smuggled HTTP/1.1\r\nhost: a"),
    "TE+CL": req(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 30", b"0\r\n\r\n"),
    "duplicate CL, same": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 1", b"x"),
    "duplicate CL, different": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2", b"xy"),
    "CL list, same": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1, 1", b"x"),
    "CL list, different": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1, 2", b"xy"),
    "CL negative": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: -1"),
    "CL plus": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +1", b"x"),
    "CL hex": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0x1", b"x"),
    "CL inner space": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1 1", b"x"),
    "CL empty": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length:"),
    "CL 20 digits": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 00000000000000000001", b"x"),
    "CL 20 nines": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 99999999999999999999", b"x"),
    "CL 21 digits": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 000000000000000000001", b"x"),
    "TE chunked": req(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"),
    "TE Chunked": req(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked", b"1\r\nx\r\n0\r\n\r\n"),
    "TE gzip, chunked": req(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked", b"0\r\n\r\n"),
    "TE chunked, chunked": req(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, chunked", b"0\r\n\r\n"),
    "TE twice": req(CHUNKED + b"\r\ntransfer-encoding: chunked", b"0\r\n\r\n"),
    "TE identity": req(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: identity\r\ncontent-length: 1", b"x"),
    "TE on 1.0": req(b"POST / HTTP/1.0\r\ntransfer-encoding: chunked", b"1\r\nx\r\n0\r\n\r\n"),
    "TE with tab": req(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding:\tchunked", b"0\r\n\r\n"),
    "chunk size junk": req(CHUNKED, b"zz\r\nx\r\n0\r\n\r\n"),
    "chunk size overflow": req(CHUNKED, b"fffffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    "chunk size negative": req(CHUNKED, b"-1\r\nx\r\n0\r\n\r\n"),
    "chunk size space": req(CHUNKED, b"1 \r\nx\r\n0\r\n\r\n"),
    "chunk extension": req(CHUNKED, b"1;name=value\r\nx\r\n0\r\n\r\n"),
    "chunk extension control": req(CHUNKED, b"1;a=\x01b\r\nx\r\n0\r\n\r\n"),
    "chunk bare LF": req(CHUNKED, b"1\nx\n0\n\n"),
    "chunk data too long": req(CHUNKED, b"1\r\nxy\r\n0\r\n\r\n"),
    "chunk trailer": req(CHUNKED, b"1\r\nx\r\n0\r\nx-trailer: yes\r\n\r\n"),
    "chunk trailer content-length": req(CHUNKED, b"1\r\nx\r\n0\r\ncontent-length: 5\r\n\r\n"),
    "chunked then pipelined": req(CHUNKED, b"1\r\nx\r\n0\r\n\r\n") + req(b"GET / HTTP/1.1\r\nhost: a"),
    "obs-fold": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: b\r\n c"),
    "obs-fold tab": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: b\r\n\tc"),
    "obs-fold first line": req(b"GET / HTTP/1.1\r\n host: a"),
    "obs-fold into CL": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n 0", b"x" * 10),
    "bare LF": b"GET / HTTP/1.1\nhost: a\n\n",
    "bare LF end only": b"GET / HTTP/1.1\r\nhost: a\r\n\n",
    "bare LF mid": b"GET / HTTP/1.1\r\nhost: a\nx: y\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\rhost: a\r\r\n\r\n",
    "CR in value": req(b"GET / HTTP/1.1\r\nhost: a\rb"),
    "NUL in value": req(b"GET / HTTP/1.1\r\nhost: a\x00b"),
    "NUL in name": req(b"GET / HTTP/1.1\r\nhost: a\r\nx\x00y: 1"),
    "NUL in target": req(b"GET /a\x00b HTTP/1.1\r\nhost: a"),
    "control in value": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x01b"),
    "DEL in value": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x7fb"),
    "VT in value": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x0bb"),
    "FF in value": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x0cb"),
    "space before colon": req(b"GET / HTTP/1.1\r\nhost : a"),
    "tab before colon": req(b"GET / HTTP/1.1\r\nhost\t: a"),
    "no colon": req(b"GET / HTTP/1.1\r\nhost: a\r\nfoo"),
    "empty name": req(b"GET / HTTP/1.1\r\nhost: a\r\n: x"),
    "non-token name": req(b"GET / HTTP/1.1\r\nhost: a\r\nx(y): 1"),
    "obs-text name": req(b"GET / HTTP/1.1\r\nhost: a\r\nx\xff: 1"),
    "no host": req(b"GET / HTTP/1.1"),
    "two hosts": req(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b"),
    "two hosts on 1.0": req(b"GET / HTTP/1.0\r\nhost: a\r\nhost: b"),
    "empty host": req(b"GET / HTTP/1.1\r\nhost:"),
    # request lines
    "target with space": req(b"GET /a b HTTP/1.1\r\nhost: a"),
    "target with tab": req(b"GET /a\tb HTTP/1.1\r\nhost: a"),
    "target with DEL": req(b"GET /a\x7f HTTP/1.1\r\nhost: a"),
    "target with obs-text": req(b"GET /caf\xc3\xa9 HTTP/1.1\r\nhost: a"),
    "target with fragment": req(b"GET /a#b HTTP/1.1\r\nhost: a"),
    "target odd chars": req(b"GET /a\"<>{}|\\^`[]' HTTP/1.1\r\nhost: a"),
    "double space": req(b"GET  / HTTP/1.1\r\nhost: a"),
    "trailing space": req(b"GET / HTTP/1.1 \r\nhost: a"),
    "leading CRLF": b"\r\n" + req(b"GET / HTTP/1.1\r\nhost: a"),
    "leading space": b" " + req(b"GET / HTTP/1.1\r\nhost: a"),
    "lower-case method": req(b"get / HTTP/1.1\r\nhost: a"),
    "unknown method": req(b"BREW /pot HTTP/1.1\r\nhost: a"),
    "method with symbols": req(b"M-SEARCH * HTTP/1.1\r\nhost: a"),
    "webdav method": req(b"PROPFIND / HTTP/1.1\r\nhost: a"),
    "lower-case version": req(b"GET / http/1.1\r\nhost: a"),
    "HTTP/1.2": req(b"GET / HTTP/1.2\r\nhost: a"),
    "HTTP/2.0": req(b"GET / HTTP/2.0\r\nhost: a"),
    "HTTP/0.9 line": b"GET /\r\n\r\n",
    "HTTP/9.9": req(b"GET / HTTP/9.9\r\nhost: a"),
    "HTTP/11": req(b"GET / HTTP/11\r\nhost: a"),
    "RTSP": req(b"GET / RTSP/1.0\r\nhost: a"),
    "ICE": req(b"SOURCE / ICE/1.0\r\nhost: a"),
    "no version": req(b"GET /\r\nhost: a"),
    "only method": req(b"GET"),
    "h2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    "h2c upgrade": req(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                       b"http2-settings: AAMAAABkAARAAAAAAAIAAAAA"),
    "upgrade with body": req(b"POST / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
                             b"content-length: 2", b"hi") + req(b"GET /next HTTP/1.1\r\nhost: a"),
    "upgrade header only": req(b"GET / HTTP/1.1\r\nhost: a\r\nupgrade: h2c"),
    "CONNECT": req(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443"),
    "TLS client hello": bytes.fromhex("16030100f4010000f00303") + b"\x00" * 40,
    "empty": b"",
    "only CRLF": b"\r\n\r\n",
    # sizes
    "head just under the limit": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"v" * (MAX_HEAD - 100)),
    "huge header value": req(b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"v" * (MAX_HEAD + 5000)),
    "huge target": req(b"GET /" + b"a" * (MAX_HEAD + 5000) + b" HTTP/1.1\r\nhost: a"),
    "endless head": b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x: y\r\n" * 15000,
    "huge chunk extension": req(CHUNKED, b"1;" + b"e" * (MAX_HEAD + 5000) + b"\r\nx\r\n0\r\n\r\n"),
    # truncated
    "EOF mid head": b"GET / HTTP/1.1\r\nhost: a\r\n",
    "EOF mid request line": b"POST /v1/chat",
    "EOF mid body": req(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10", b"abc"),
    "EOF mid chunk": req(CHUNKED, b"5\r\nhel"),
    "EOF after a request": req(b"GET / HTTP/1.1\r\nhost: a") + b"GET /2 HTT",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_corpus_same_decisions_under_every_split(name):
    data = CORPUS[name]
    if len(data) <= 600:
        ways = splits(data)
    else:   # large inputs: whole, a few cuts, and the read sizes a socket gives
        ways = [[data]] + [[data[:i], data[i:]] for i in (1, 17, len(data) // 2)] + \
            [[data[i:i + size] for i in range(0, len(data), size)] for size in (4096, 65536)]
    for pieces in ways:
        same_decisions(pieces)
        same_decisions(pieces, eof=False)


def test_the_corpus_covers_both_paths():
    """Some inputs are served by the fast path and some refused, so the
    differential above is not vacuous."""
    def pieces(data):       # as a socket delivers them
        return [data[i:i + 4096] for i in range(0, len(data), 4096)]
    accepted = [n for n, d in CORPUS.items() if drive(H11Parser, pieces(d))[1][0] == "request"]
    refused = [n for n, d in CORPUS.items() if any(o[0] == "error" for o in drive(H11Parser, pieces(d)))]
    assert {"post", "pipelined", "absolute-form", "http/1.0", "expect 100-continue", "obs-fold", "bare LF"} <= set(accepted)
    assert {"duplicate CL, different", "TE gzip, chunked", "no host", "two hosts", "huge header value",
            "NUL in value", "CR in value", "chunk size junk", "TLS client hello"} <= set(refused)


def test_what_the_fast_path_reads():
    """The requests that matter for speed really take the fast path (no h11),
    and read as h11 reads them."""
    for name in ("post", "get", "pipelined after a body", "whitespace around values", "http/1.0", "absolute-form",
                 "expect 100-continue", "many headers"):
        parser = FastParser(MAX_HEAD)
        parser.receive_data(CORPUS[name])
        head = parser.next_event()
        assert isinstance(head, RequestHead) and parser._h11 is None, name
    parser = FastParser(MAX_HEAD)
    parser.receive_data(CORPUS["whitespace around values"])
    assert parser.next_event().headers == [(b"host", b"a"), (b"x", b"b  c")]


def test_h11_decides_what_the_fast_path_does_not_serve():
    for name in ("CL+TE", "obs-fold", "bare LF", "TE chunked", "h2c upgrade", "HTTP/1.2", "unknown method",
                 "duplicate CL, same", "no host", "leading CRLF", "huge header value"):
        parser = FastParser(MAX_HEAD)
        data = CORPUS[name]
        try:
            for at in range(0, len(data), 4096):
                parser.receive_data(data[at:at + 4096])
                if parser.next_event() is not NEED_DATA:
                    break
        except ParseError:
            pass
        assert parser._h11 is not None, name


# ---- generated inputs --------------------------------------------------------
SPECIAL = b" \t\r\n\x00\x01\x0b\x0c\x7f\x80\xff,;:=\"\\/?#%"
# (mostly right, sometimes wrong) for each part of a request
METHODS = ([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"],
           [b"CONNECT", b"get", b"BREW", b"G ET", b"", b"PRI", b"M-SEARCH", b"POST\x00"])
SPACES = ([b" "], [b"  ", b"\t", b""])
TARGETS = ([b"/", b"/v1/chat/completions", b"/v1/models?x=1", b"*", b"http://h/v1/x", b"https://h", b"/a#f",
            b"/%00", b"/a\"{}"],
           [b"h:443", b"", b"/a b", b"/a\tb", b"/\xff", b"/\x7f"])
VERSIONS = ([b"HTTP/1.1", b"HTTP/1.0"],
            [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11", b"RTSP/1.0", b""])
NAMES = ([b"content-length", b"Content-Length", b"connection", b"expect", b"content-type", b"authorization", b"x-a",
          b"X-Stainless-Lang", b"accept"],
         [b"host", b"Host", b"transfer-encoding", b"upgrade", b"x a", b"x:a", b"", b"h\xffst", b"host ", b"x\x00"])
VALUES = ([b"a", b"", b" ", b"0", b"1", b"2", b"5", b"10", b"01", b" 3 ", b"close", b"keep-alive", b"100-continue",
           b"application/json", b"\xc3\xa9", b"a\tb", b"Bearer sk-1", b"a  b\t"],
          [b"1, 1", b"1,2", b"+1", b"-1", b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip", b"identity",
           b"Upgrade", b"upgrade, close", b"h2c", b"a\x00b", b"a\rb", b"a\nb", b"a\x01b", b"99999999999999999999",
           b"a\x0bb", b"\x7f"])
SEPARATORS = ([b": ", b":", b":\t", b":  "], [b" : ", b" :", b"\t:"])
EOLS = ([b"\r\n"], [b"\n", b"\r", b" \r\n", b"\r\n ", b"\r\n\t", b"\r\r\n"])
BODIES = ([b"", b"{}", b'{"model":"m"}', b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"],
          [b"1\r\nx\r\n0\r\nt: v\r\n\r\n", b"z\r\n", b"GET / HTTP/1.1\r\n"])


@st.composite
def near_valid_requests(draw) -> bytes:
    """Requests assembled from parts that are mostly right (one part in 25
    is drawn from the wrong ones, or random bytes): the places where parsers
    disagree are at the edges of each part, and most of these requests are
    ones h11 accepts, so both paths of the fast parser are exercised."""
    def pick(options):
        good, bad = options
        return draw(st.sampled_from(bad if draw(st.integers(0, 24)) == 17 else good))
    parts = [pick(METHODS), pick(SPACES), pick(TARGETS), pick(SPACES), pick(VERSIONS), pick(EOLS)]
    if draw(st.integers(0, 9)) != 7:
        parts += [draw(st.sampled_from([b"host", b"Host", b"HOST"])), pick(SEPARATORS), b"gw.test:8080", pick(EOLS)]
    body = pick(BODIES)
    for _ in range(draw(st.integers(0, 6))):
        name = pick(NAMES)
        if draw(st.integers(0, 19)) != 7:
            value = pick(VALUES)
        else:
            value = draw(st.one_of(st.binary(max_size=12),
                                   st.lists(st.sampled_from(list(SPECIAL) + list(b"azAZ09")), max_size=8).map(bytes)))
        if name.lower() == b"content-length" and draw(st.booleans()):
            value = b"%d" % len(body)
        parts += [name, pick(SEPARATORS), value, pick(EOLS)]
        if draw(st.integers(0, 19)) == 7:
            parts += [draw(st.sampled_from([b" ", b"\t"])), b"folded", pick(EOLS)]
    parts.append(pick(EOLS))
    return b"".join(parts) + body


@st.composite
def mutated_requests(draw) -> bytes:
    """A valid request (or two) with a few bytes changed, dropped or added."""
    data = bytearray(draw(st.sampled_from([CORPUS["post"], CORPUS["pipelined"], CORPUS["get"], CORPUS["TE chunked"],
                                           CORPUS["http/1.0"], CORPUS["expect 100-continue"]])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "insert", "delete"]))
        byte = draw(st.one_of(st.sampled_from(list(SPECIAL)), st.integers(0, 255)))
        if kind == "insert":
            data[at:at] = bytes([byte])
        elif at < len(data):
            if kind == "set":
                data[at] = byte
            else:
                del data[at]
    return bytes(data)


@st.composite
def cut(draw, streams) -> list[bytes]:
    data = b"".join(draw(st.lists(streams, min_size=1, max_size=3)))
    points = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=5))))
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if a < b] or [b""]


GENERATED = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@GENERATED
@given(cut(near_valid_requests()), st.booleans())
@example([b"GET / HTTP/1.1\r\nhost: a\r\nx: 1 \r\n\r\n"], True)
def test_generated_requests_same_decisions(pieces, eof):
    same_decisions(pieces, eof)


@GENERATED
@given(cut(mutated_requests()), st.booleans())
def test_mutated_requests_same_decisions(pieces, eof):
    same_decisions(pieces, eof)


@settings(max_examples=300, deadline=None)
@given(cut(st.binary(max_size=200)), st.booleans())
def test_random_bytes_same_decisions(pieces, eof):
    same_decisions(pieces, eof)
