"""`nla serve`: the JSON API (TestClient), its OpenAPI contract (schemathesis), the explain queue under real
concurrent HTTP requests (uvicorn on loopback), the real `nla serve` process behind uvicorn (raw HTTP: path traversal,
Host check, port in use, 20 concurrent explains), and the page in headless Chromium (Playwright).

Everything runs the tiny NLA trained by the `nla_dir` fixture; nothing is mocked."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import schemathesis
from fastapi.testclient import TestClient

from nlakit.nla import NLA
from nlakit.serve import Limits, batches, create_app
from nlakit.steer import next_token_logprobs, steer

TEXT = "The history of the city is long, and the people of the region"
CHROMIUM = "/usr/bin/chromium"
# without these, Chromium's background services try the network, which this machine refuses
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def nla(nla_dir) -> NLA:
    return NLA.from_pretrained(nla_dir[0], dtype="float32")


@pytest.fixture(scope="module")
def client(nla):
    with TestClient(create_app(nla, name="tiny-test")) as c:
        yield c


def ndjson(resp) -> list[dict]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


# --- the API, good requests -------------------------------------------------------------------------------------


def test_info(client, nla):
    r = client.get("/api/info")
    assert r.status_code == 200
    info = r.json()
    assert info["name"] == "tiny-test" and info["target"] == nla.target
    assert (info["layer"], info["d_model"]) == (2, 64)
    assert info["fidelity"] == "fve_nrm" and info["can_explain"] and info["can_steer"] and info["chat"]
    assert info["limits"]["max_text_chars"] == Limits().max_text_chars
    # counts are integers on the wire ("1024", not "1024.0"); only alpha is a real number
    assert all(type(v) is int for k, v in info["limits"].items() if k != "max_alpha"), info["limits"]
    assert '"max_tokens":1024' in r.text.replace(" ", "") and info["limits"]["max_waiting"] == Limits().max_waiting


def test_tokenize_matches_the_nla(client, nla):
    toks = client.post("/api/tokenize", json={"text": TEXT}).json()["tokens"]
    ids = nla.activations(TEXT)[0]
    assert [t["id"] for t in toks] == ids == nla.tokenize(TEXT)
    assert [t["position"] for t in toks] == list(range(len(ids)))
    assert "".join(t["token"] for t in toks) == nla.target_tokenizer().decode(ids)


def test_explain_streams_the_library_rows(client, nla):
    # no batch_size: the default batches every position of a short text in one generation, as `nla explain` does
    r = client.post("/api/explain", json={"text": TEXT, "max_new_tokens": 12})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    events = ndjson(r)
    first, rows, last = events[0], [e["explanation"] for e in events[1:-1]], events[-1]
    n = len(nla.activations(TEXT)[0])
    assert first["type"] == "tokens" and len(first["tokens"]) == n and first["batches"] == 1
    assert first["positions"] == list(range(1, n))  # the library's default: all but the attention sink
    assert all(e["type"] == "explanation" for e in events[1:-1])
    assert last["type"] == "done" and last["count"] == n - 1 and last["seconds"] >= 0
    # one batch holding every position: the same call as the library's, so the same rows
    expected = [x.to_dict() for x in nla.explain(TEXT, max_new_tokens=12)]
    assert [x["explanation"] for x in rows] == [x["explanation"] for x in expected]
    for got, want in zip(rows, expected, strict=True):
        assert got["position"] == want["position"] and got["token"] == want["token"]
        assert got["cos"] == pytest.approx(want["cos"], abs=1e-5)
        assert got["fve_nrm"] == pytest.approx(want["fve_nrm"], abs=1e-4)


def test_explain_best_of_is_the_library_pick(client, nla):
    body = {"text": TEXT, "positions": [2, 3, 4], "max_new_tokens": 8, "best_of": 3}
    rows = [e["explanation"] for e in ndjson(client.post("/api/explain", json=body)) if e["type"] == "explanation"]
    want = nla.explain(TEXT, [2, 3, 4], max_new_tokens=8, best_of=3)
    greedy = nla.explain(TEXT, [2, 3, 4], max_new_tokens=8)
    assert [r["explanation"] for r in rows] == [w.explanation for w in want]
    # the greedy text is one of the candidates, so the pick reconstructs at least as well
    assert all(w.mse_nrm <= g.mse_nrm + 1e-4 for w, g in zip(want, greedy, strict=True))


def test_explain_chosen_positions_in_small_batches(client):
    events = ndjson(
        client.post("/api/explain", json={"text": TEXT, "positions": [4, 2, 4], "batch_size": 1, "max_new_tokens": 6})
    )
    assert events[0]["positions"] == [4, 2] and events[0]["batches"] == 2  # duplicates dropped, order kept
    assert [e["explanation"]["position"] for e in events if e["type"] == "explanation"] == [4, 2]
    assert events[-1] == {"type": "done", "count": 2, "seconds": events[-1]["seconds"]}


def test_batches_are_few_and_even():
    assert batches([], 64) == []
    assert batches(list(range(15)), 64) == [list(range(15))]  # a 15-token text: one call, like the CLI
    assert [len(b) for b in batches(list(range(39)), 32)] == [20, 19]  # not 32 + 7
    assert [len(b) for b in batches(list(range(1023)), 64)] == [64] * 15 + [63]
    assert [len(b) for b in batches(list(range(5)), 1)] == [1] * 5
    for n in range(1, 200):
        for size in (1, 3, 16, 64):
            got = batches(list(range(n)), size)
            assert sum(got, []) == list(range(n)) and len(got) == -(-n // size) and max(map(len, got)) <= size


def test_topk_is_the_target_lm_distribution(client, nla):
    ids = nla.activations(TEXT)[0]
    last = len(ids) - 1
    out = client.post("/api/topk", json={"text": TEXT, "positions": [3, last], "k": 5}).json()["rows"]
    assert [r["position"] for r in out] == [3, last]
    logp = next_token_logprobs(nla.target_lm(), ids, [3], nla.layer)[0]
    values, idx = logp.topk(5)
    row = out[0]
    assert [t["id"] for t in row["top"]] == idx.tolist() and [t["rank"] for t in row["top"]] == [1, 2, 3, 4, 5]
    assert [t["logprob"] for t in row["top"]] == pytest.approx(values.tolist(), abs=1e-5)
    assert row["actual"]["id"] == ids[4] and row["actual"]["logprob"] == pytest.approx(float(logp[ids[4]]), abs=1e-5)
    assert row["actual"]["rank"] == int((logp > logp[ids[4]]).sum()) + 1
    assert out[1]["actual"] is None  # nothing follows the last token


def test_steer_is_the_library_steer(client, nla):
    body = {
        "prompt": TEXT,
        "original": "The text ends with the token 'city'. city city",
        "edited": "The text ends with the token 'region'. region region",
        "position": 4,
        "alpha": 2.0,
        "max_new_tokens": 8,
    }
    out = client.post("/api/steer", json=body).json()
    want = steer(nla, TEXT, body["original"], body["edited"], position=4, alpha=2.0, max_new_tokens=8)
    assert (out["original"], out["steered"], out["position"], out["alpha"]) == (
        want.original,
        want.steered,
        4,
        2.0,
    )
    assert out["delta_norm"] == pytest.approx(want.delta_norm, rel=1e-5) and out["delta_norm"] > 0
    zero = client.post("/api/steer", json={**body, "alpha": 0.0, "position": -1}).json()
    assert zero["delta_norm"] == 0 and zero["steered"] == zero["original"]
    assert zero["position"] == len(nla.activations(TEXT)[0]) - 1


def test_continue_and_chat(client, nla):
    out = client.post("/api/continue", json={"text": "The city of", "max_new_tokens": 6}).json()
    assert out["text"] == "The city of" + out["continuation"]
    tok = nla.target_tokenizer()
    assert len(tok(out["continuation"], add_special_tokens=False)["input_ids"]) <= 8  # about 6 tokens, re-tokenised
    chat = client.post(
        "/api/chat", json={"messages": [{"role": "user", "content": "Where is Paris?"}], "max_new_tokens": 6}
    ).json()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Where is Paris?"}], add_generation_prompt=True, tokenize=False
    )
    assert chat["text"].startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")
    assert chat["reply"] in chat["text"]
    # the rendered conversation is explainable as it comes back
    assert client.post("/api/tokenize", json={"text": chat["text"]}).status_code == 200


# --- the API, bad requests ------------------------------------------------------------------------------------

BAD = [
    # (path, raw body, status, a piece of the message)
    ("/api/explain", b'{"text": "The city', 422, "JSON decode error"),
    ("/api/explain", b"not json at all", 422, "JSON decode error"),
    ("/api/explain", b"[1, 2]", 422, "valid dictionary"),
    ("/api/explain", b'{"text": 5}', 422, "valid string"),
    ("/api/explain", b'{"text": "a b", "positions": "1"}', 422, "valid list"),
    ("/api/explain", b'{"text": "a b", "positions": [-1]}', 422, "greater than or equal to 0"),
    ("/api/explain", b'{"text": "a b", "batch_size": 0}', 422, "greater than or equal to 1"),
    ("/api/explain", b'{"text": "a b", "max_new_tokens": 100000}', 422, "less than or equal to"),
    ("/api/explain", b'{"text": "a b", "colour": "red"}', 422, "Extra inputs are not permitted"),
    ("/api/explain", b'{"text": "a b", "best_of": 0}', 422, "greater than or equal to 1"),
    ("/api/explain", b'{"text": "a b", "best_of": 17}', 422, "less than or equal to 16"),
    ("/api/explain", b'{"text": ""}', 422, "at least 1 character"),
    ("/api/explain", json.dumps({"text": "x" * 4001}).encode(), 422, "at most 4000 characters"),
    ("/api/explain", b'{"text": "\\ud800 city"}', 422, "valid string"),  # a lone surrogate
    ("/api/explain", b'{"text": "a b", "\\udfff": 1}', 422, "valid string"),  # a lone surrogate as a key
    ("/api/explain", b'{"text": "   "}', 400, "empty"),
    ("/api/explain", b'{"text": "The city", "positions": [1, 50]}', 400, "position 50 is outside"),
    ("/api/tokenize", b"{}", 422, "Field required"),
    ("/api/topk", b'{"text": "The city", "positions": [9]}', 400, "outside"),
    ("/api/topk", b'{"text": "The city", "positions": []}', 422, "at least 1 item"),
    ("/api/topk", b'{"text": "The city", "positions": [1], "k": 1000}', 422, "less than or equal to 50"),
    ("/api/steer", b'{"prompt": "The city", "original": "a", "edited": "b", "alpha": 1e9}', 422, "less than"),
    ("/api/steer", b'{"prompt": "The city", "original": "a", "edited": "b", "alpha": NaN}', 422, "finite"),
    ("/api/steer", b'{"prompt": "The city", "original": "a", "edited": "b", "alpha": "big"}', 422, "valid number"),
    ("/api/steer", b'{"prompt": "The city", "original": " ", "edited": "b"}', 400, "non-empty"),
    ("/api/steer", b'{"prompt": "The city", "original": "a", "edited": "b", "position": 40}', 400, "outside"),
    ("/api/continue", b'{"text": "The city", "max_new_tokens": 0}', 422, "greater than or equal to 1"),
    ("/api/continue", b'{"text": "  "}', 400, "empty"),
    ("/api/chat", b'{"messages": [{"role": "robot", "content": "hi"}]}', 422, "Input should be"),
    ("/api/chat", b'{"messages": []}', 422, "at least 1 item"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_clear_4xx(client, path, body, status, message):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.text, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) if status == 400 else all("msg" in d and "loc" in d for d in detail)
    assert len(r.content) < 1000  # the bad input is not echoed back


def test_non_json_bodies_and_methods_are_refused(client):
    # a cross-site form or text/plain POST (no CORS preflight) is not parsed as JSON
    assert client.post(
        "/api/explain", content=b'{"text": "a b"}', headers={"Content-Type": "text/plain"}
    ).is_client_error
    assert client.post("/api/explain", data={"text": "a b"}).status_code == 422
    assert client.get("/api/explain").status_code == 405
    assert client.post("/api/info").status_code == 405


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"] and 'id="tokens"' in r.text
    assert client.get("/static/index.html").text == r.text
    for path in ("/static/nope.html", "/static/serve.py", "/static/", "/index.html", "/openapi.json/../serve.py"):
        assert client.get(path).status_code == 404, path


# --- the OpenAPI contract -------------------------------------------------------------------------------------

# small caps keep each generated request cheap (the model runs for every one)
SMALL = Limits(
    max_text_chars=48,
    max_positions=6,
    max_batch=3,
    max_explanation_tokens=4,
    max_new_tokens=4,
    max_topk_positions=2,
    max_k=5,
    max_messages=2,
)


@pytest.fixture(scope="module")
def api_schema(nla):
    from schemathesis.config import SchemathesisConfig

    config = SchemathesisConfig.from_dict(
        # schema-valid input the model still refuses (positions past the text's end, blank text) is a 400
        {
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400"]}},
            "request-timeout": 300,  # a loaded 2-core machine can take a while over a streamed explanation
        }
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(nla, limits=SMALL), config=config)


POSTS = [f"/api/{p}" for p in ("tokenize", "explain", "topk", "steer", "continue", "chat")]
# a GET without parameters has no invalid form
CONTRACT = [("GET", "/api/info", "positive")] + [("POST", p, m) for p in POSTS for m in ("positive", "negative")]


@pytest.mark.parametrize(("method", "path", "mode"), CONTRACT, ids=[f"{p}-{m}" for _, p, m in CONTRACT])
def test_openapi_contract(api_schema, method, path, mode):
    """Generated requests (valid ones, and ones that break the schema): no 5xx, and every response (status,
    content type, body) as the schema documents it."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    operation = api_schema[path][method]

    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(GenerationMode(mode)))
    def check(case):
        case.call_and_validate()

    check()


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        f"/api/{p}" for p in ("info", "tokenize", "explain", "topk", "steer", "continue", "chat")
    }
    explain = spec["paths"]["/api/explain"]["post"]["responses"]
    assert "application/x-ndjson" in explain["200"]["content"] and "application/json" in explain["400"]["content"]
    assert "application/json" in explain["429"]["content"]
    assert spec["components"]["schemas"]["SteerIn"]["properties"]["alpha"]["maximum"] == Limits().max_alpha


# --- the explain queue, under real concurrent HTTP requests ----------------------------------------------------


class Stream:
    """One /api/explain request over a real socket, read line by line as the server streams it."""

    def __init__(self, port: int, body: dict) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("POST", "/api/explain", json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()

    def event(self) -> dict:
        line = self.resp.readline()
        assert line, "the stream ended early"
        return json.loads(line)

    def rest(self) -> list[dict]:
        return [json.loads(x) for x in self.resp.read().splitlines() if x.strip()]

    def close(self) -> None:
        # shut the socket down so the server sees the client go (as a closed browser tab does)
        sock = self.conn.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def raw_post(port: int, path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def queued_server(nla):
    """The app behind a real uvicorn server on loopback, in this process so a test can hold the models' lock (and
    so decide exactly which request runs and which wait). One request may wait behind the running one."""
    import uvicorn

    app = create_app(nla, name="queue-test", limits=Limits(max_waiting=1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn to start")
    try:
        yield app.state.viewer, port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_full_queue_answers_429_with_retry_after(queued_server):
    viewer, port = queued_server
    body = {"text": TEXT, "max_new_tokens": 6}
    viewer.lock.acquire()  # the models are busy: the first request runs (blocked on them), the next one waits
    try:
        running = Stream(port, body)
        assert running.resp.status == 200 and running.event()["type"] == "tokens"
        wait_for(lambda: len(viewer.queue.tickets) == 1, "the first request to be admitted")
        waiting = Stream(port, body)
        assert waiting.event()["type"] == "tokens" and waiting.event() == {"type": "queued", "ahead": 1}

        # the queue is full: a clear JSON 429 with Retry-After, at once (it does not wait for the models)
        start = time.monotonic()
        status, headers, raw = raw_post(port, "/api/explain", body)
        assert status == 429 and time.monotonic() - start < 10
        assert headers["content-type"] == "application/json" and int(headers["retry-after"]) >= 1
        detail = json.loads(raw)["detail"]
        assert "busy" in detail and "1 waiting" in detail and f"{headers['retry-after']} s" in detail
        # other routes are not queued behind explanations
        assert raw_post(port, "/api/tokenize", {"text": TEXT})[0] == 200

        # a client that leaves the queue frees its place at once: the next request is admitted
        waiting.close()
        wait_for(lambda: len(viewer.queue.tickets) == 1, "the closed request to leave the queue")
        again = Stream(port, body)
        assert again.resp.status == 200 and again.event()["type"] == "tokens"
        assert again.event() == {"type": "queued", "ahead": 1}
    finally:
        viewer.lock.release()
    for stream in (running, again):  # both finish, in arrival order, with every position explained
        events = stream.rest()
        assert events[-1]["type"] == "done" and events[-1]["count"] == len(events) - 1
        assert all(e["type"] == "explanation" for e in events[:-1])
        stream.close()
    wait_for(lambda: not viewer.queue.tickets, "the queue to empty")
    assert raw_post(port, "/api/explain", {**body, "positions": [2]})[0] == 200


MODEL_ROUTES = {
    "/api/topk": {"text": TEXT, "positions": [3], "k": 5},
    "/api/steer": {
        "prompt": TEXT,
        "original": "The text ends with the token 'city'.",
        "edited": "The text ends with the token 'region'.",
        "position": 4,
        "alpha": 0.25,
        "max_new_tokens": 4,
    },
    "/api/continue": {"text": "The city of", "max_new_tokens": 4},
    "/api/chat": {"messages": [{"role": "user", "content": "Where is Paris?"}], "max_new_tokens": 4},
}


def test_a_full_model_queue_answers_429_on_every_model_route(queued_server):
    """topk, steer, continue and chat share one bounded queue: with one running (blocked on the models) and
    max_waiting (1) waiting, each of them is refused at once with a one-line JSON 429 and Retry-After; the slots free
    up afterwards, after an error too."""
    viewer, port = queued_server
    results: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def call(path: str) -> threading.Thread:
        t = threading.Thread(target=lambda: results.__setitem__(path, raw_post(port, path, MODEL_ROUTES[path])))
        t.start()
        return t

    viewer.lock.acquire()  # the models are busy: the first request runs (blocked on them), the next one waits
    try:
        running = call("/api/topk")
        wait_for(lambda: len(viewer.model_queue.tickets) == 1, "the topk request to be admitted")
        waiting = call("/api/steer")
        wait_for(lambda: len(viewer.model_queue.tickets) == 2, "the steer request to wait")
        for path, body in MODEL_ROUTES.items():
            start = time.monotonic()
            status, headers, raw = raw_post(port, path, body)
            assert status == 429 and time.monotonic() - start < 10, (path, status, raw)
            assert headers["content-type"] == "application/json" and int(headers["retry-after"]) >= 1
            assert headers["cache-control"] == "no-store"
            detail = json.loads(raw)["detail"]
            assert "busy" in detail and "1 model request running and 1 waiting" in detail, detail
            assert f"retry in about {headers['retry-after']} s" in detail and "\n" not in detail
        assert len(viewer.model_queue.tickets) == 2  # the refusals took no place
        # tokenizing does not use the models, so it is not queued
        assert raw_post(port, "/api/tokenize", {"text": TEXT})[0] == 200
    finally:
        viewer.lock.release()
    for t in (running, waiting):
        t.join(timeout=300)
    assert results["/api/topk"][0] == 200 and json.loads(results["/api/topk"][2])["rows"][0]["position"] == 3
    assert results["/api/steer"][0] == 200 and json.loads(results["/api/steer"][2])["position"] == 4
    wait_for(lambda: not viewer.model_queue.tickets, "the model queue to empty")
    # a request that fails inside the models' lock frees its slot too
    status, _, raw = raw_post(port, "/api/steer", {**MODEL_ROUTES["/api/steer"], "position": 40})
    assert status == 400 and "outside" in json.loads(raw)["detail"]
    assert not viewer.model_queue.tickets
    for path, body in MODEL_ROUTES.items():  # every route is served again
        assert raw_post(port, path, body)[0] == 200, path
    assert not viewer.model_queue.tickets and not viewer.queue.tickets


def test_openapi_documents_the_429s(client):
    spec = client.get("/openapi.json").json()
    for path in ("explain", *(p.rsplit("/", 1)[1] for p in MODEL_ROUTES)):
        responses = spec["paths"][f"/api/{path}"]["post"]["responses"]
        assert responses["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), path


def test_serve_passes_max_waiting_to_the_limits(nla_dir, monkeypatch):
    import uvicorn

    from nlakit.config import ServeConfig
    from nlakit.errors import NlakitError
    from nlakit.serve import serve

    # refused before anything loads or listens
    for bad in (-1, 1.5, "4"):
        with pytest.raises(NlakitError, match=r"max_waiting must be a (whole )?number 0 or more") as e:
            serve(ServeConfig(nla=str(nla_dir[0]), max_waiting=bad))
        assert "\n" not in str(e.value)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))  # the app serve() builds, not run
    serve(ServeConfig(nla=str(nla_dir[0]), port=free_port(), dtype="float32", max_waiting=0))
    viewer = apps[0].state.viewer
    assert viewer.queue.capacity == viewer.model_queue.capacity == 1  # 0 waiting: only the running one
    with TestClient(apps[0], base_url="http://127.0.0.1") as c:  # a loopback server checks the Host header
        assert c.get("/api/info").json()["limits"]["max_waiting"] == 0


# --- the real `nla serve` process -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(nla_dir):
    """`nla serve` as a user runs it (CLI -> uvicorn) on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "nlakit", "serve", "--nla", str(nla_dir[0]), "--port", str(port), "--dtype", "float32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nla serve exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            try:
                status, _ = raw_get(port, "/api/info")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("nla serve did not answer within 300 s")
            time.sleep(0.3)
        yield url, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw_get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (http.client does not normalise `..` or percent escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/static/../../etc/passwd",
    "/static/..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/static/%252e%252e%252fetc%252fpasswd",
    "/static/..%5c..%5cetc%5cpasswd",
    "/static/%2fetc%2fpasswd",
    "/static//etc/passwd",
    "/static/..",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f__init__.py",
    "/static/..%2fserve.py",
]


def test_path_traversal_is_404(server):
    _, port = server
    for path in TRAVERSALS:
        status, body = raw_get(port, path)
        assert status == 404, path
        assert b"root:" not in body and b"import" not in body, path
    assert raw_get(port, "/static/index.html")[0] == 200


def test_loopback_server_checks_the_host_header(server):
    _, port = server
    assert raw_get(port, "/api/info", host=f"127.0.0.1:{port}")[0] == 200
    assert raw_get(port, "/api/info", host=f"localhost:{port}")[0] == 200
    # DNS rebinding: a page on another name must not reach the model through the browser
    assert raw_get(port, "/api/info", host="attacker.example")[0] == 400


def test_twenty_concurrent_explains_on_the_real_server(server):
    """The issue's scenario: 20 explain requests at once. One runs, Limits().max_waiting wait, and the rest get a
    429 at once instead of waiting minutes; every accepted stream completes."""
    _, port = server
    body = {"text": TEXT * 3, "max_new_tokens": 24}
    go = threading.Barrier(20)
    results: list[tuple[float, int, dict[str, str], bytes]] = []

    def one() -> None:
        go.wait()
        start = time.monotonic()
        status, headers, raw = raw_post(port, "/api/explain", body)
        results.append((time.monotonic() - start, status, headers, raw))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(results) == 20
    ok = [r for r in results if r[1] == 200]
    busy = [r for r in results if r[1] == 429]
    assert len(ok) + len(busy) == 20 and len(ok) >= 1 + Limits().max_waiting and busy, [r[1] for r in results]
    for _, _, headers, raw in busy:
        assert int(headers["retry-after"]) >= 1 and "busy" in json.loads(raw)["detail"]
    # a refusal comes before any accepted request has finished its explanations
    assert max(r[0] for r in busy) < max(r[0] for r in ok)
    for _, _, _, raw in ok:
        events = [json.loads(x) for x in raw.splitlines()]
        assert events[-1]["type"] == "done" and events[-1]["count"] == len(events[0]["positions"])


def test_serve_refuses_a_busy_port(nla_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "nlakit", "serve", "--nla", str(nla_dir[0]), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 2 and "cannot listen" in r.stderr and "--port" in r.stderr, r.stderr[-2000:]


# --- the page in a real browser -------------------------------------------------------------------------------


def post(url: str, path: str, body: dict) -> dict:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def test_page_end_to_end_in_chromium(server, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(300_000)  # generous: a busy 2-core machine explains slowly
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            page.wait_for_function("() => document.getElementById('meta').textContent.includes('layer 2')")

            # type a prompt and explain it: every token but the first ends up coloured
            page.fill("#text", TEXT)
            page.fill("#explain-tokens", "24")
            page.click("#explain-btn")
            n = len(post(url, "/api/tokenize", {"text": TEXT})["tokens"])
            page.wait_for_function(f"() => document.querySelectorAll('#tokens .tok.explained').length === {n - 1}")
            assert page.locator("#tokens .tok").count() == n
            colours = page.eval_on_selector_all("#tokens .tok.explained", "els => els.map(e => e.style.background)")
            assert all(c.startswith("rgb") or c.startswith("hsl") for c in colours), colours
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('explained')")
            assert "(1 batch)" in page.inner_text("#status")  # all positions in one batched call, as the CLI

            # position 0 is hatched, not grey, and the page says why it is skipped
            sink = page.locator('#tokens .tok[data-pos="0"]')
            assert "sink" in sink.get_attribute("class") and "attention sink" in sink.get_attribute("title")
            note = page.inner_text("#sink-note")
            assert page.is_visible("#sink-note") and "attention sink" in note and "never samples it" in note

            # download: the JSON holds what the page shows
            with page.expect_download() as download:
                page.click("#download-btn")
            assert download.value.suggested_filename == "nla-explanations.json"
            data = json.loads(open(download.value.path(), encoding="utf-8").read())
            assert data["text"] == TEXT and data["layer"] == 2 and data["fidelity"] == "fve_nrm"
            assert (data["max_new_tokens"], data["best_of"]) == (24, 1)  # the settings the rows were made with
            assert data["tokens"] == post(url, "/api/tokenize", {"text": TEXT})["tokens"]
            assert [r["position"] for r in data["explanations"]] == list(range(1, n)) and data["not_explained"] == [0]
            assert set(data["explanations"][0]) == {
                "position",
                "token",
                "explanation",
                "cos",
                "mse_nrm",
                "fve_nrm",
                "norm",
            }

            # the legend's scale covers the real values (fewer than 20: their exact min and max, with 0 inside)
            values = [r["fve_nrm"] for r in data["explanations"]]
            lo, hi = min(*values, 0.0), max(*values, 0.0)
            assert page.inner_text("#legend-lo") == f"{lo:.3f}" and page.inner_text("#legend-hi") == f"{hi:.3f}"
            shown_range = page.inner_text("#legend-range")
            assert f"min {min(values):.3f}" in shown_range and f"max {max(values):.3f}" in shown_range, shown_range
            assert (data["scale"]["lo"], data["scale"]["hi"]) == pytest.approx((lo, hi))
            worst, best = values.index(min(values)) + 1, values.index(max(values)) + 1
            bg = "e => e.style.background"
            assert page.eval_on_selector(f'#tokens .tok[data-pos="{worst}"]', bg) != page.eval_on_selector(
                f'#tokens .tok[data-pos="{best}"]', bg
            )

            # click a token: its explanation, cos and fve, and the target's top next tokens
            page.click('#tokens .tok[data-pos="4"]')
            page.wait_for_function("() => document.querySelectorAll('#topk li').length >= 10")
            explanation = page.eval_on_selector("#expl-text", "e => e.textContent")
            assert explanation.strip() and "not explained" not in explanation
            assert re.fullmatch(r"-?\d+\.\d{3}", page.inner_text("#cos"))
            assert re.fullmatch(r"-?\d+\.\d{3}", page.inner_text("#fve"))
            assert page.locator("#topk li .tokname").first.inner_text().startswith('"')
            assert "Token" in page.inner_text("#detail-title") and "position 4" in page.inner_text("#detail-title")

            # edit the explanation, set alpha, steer: the steered continuation sits next to the original
            edited = "The text ends with the token 'region'. region region region"
            page.fill("#edit", edited)
            page.eval_on_selector(
                "#alpha", "el => { el.value = '1.5'; el.dispatchEvent(new Event('input', {bubbles: true})); }"
            )
            assert page.inner_text("#alpha-value") == "1.50"  # a fraction of |h| (the paper's rule)
            page.click("#steer-btn")
            page.wait_for_selector("#steer-box[data-done='1']")
            want = post(
                url,
                "/api/steer",
                {
                    "prompt": TEXT,
                    "original": explanation,
                    "edited": edited,
                    "position": 4,
                    "alpha": 1.5,
                    "max_new_tokens": 30,
                },
            )
            shown = page.eval_on_selector_all(".compare .out", "els => els.map(e => e.textContent)")
            assert shown == [want["original"] or "(empty)", want["steered"] or "(empty)"]
            assert page.inner_text("#delta-norm") == f"{want['delta_norm']:.2f}"
            page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)

            # continue: the target's continuation is appended and only the new tokens are explained again
            page.fill("#continue-tokens", "4")
            page.click("#continue-btn")
            page.wait_for_function(f"() => document.getElementById('text').value.length > {len(TEXT)}")
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('explained')")
            longer = page.input_value("#text")
            assert longer.startswith(TEXT)
            m = len(post(url, "/api/tokenize", {"text": longer})["tokens"])
            assert page.locator("#tokens .tok.explained").count() == m - 1
            assert not problems, problems
        finally:
            browser.close()
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
