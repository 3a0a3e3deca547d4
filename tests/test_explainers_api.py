"""Chat-API explainers against a real HTTP server on 127.0.0.1 that imitates the OpenAI and Anthropic APIs."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nlakit.errors import NlakitError
from nlakit.explainers import (
    INSTRUCTION_PROMPT,
    PROVIDERS,
    AnthropicExplainer,
    Explainer,
    OpenAIExplainer,
    clean_analysis,
    make_explainer,
)

SECRET = "sk-test-very-secret-123"
FAST = {"backoff": 0.001, "timeout": 5.0}  # retries in milliseconds; timeouts still generous for a busy CI


@dataclass
class Response:
    """What the fake server sends: `reply` is the model text (wrapped in the API's JSON), `body` raw bytes."""

    status: int = 200
    reply: str | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    refusal: bool = False


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict


def echo_analysis(prompt: str) -> str:
    text = re.search(r"<begin_text>(.*)<end_text>", prompt, re.DOTALL).group(1)
    return f"<analysis>\n1. **Context:** the text is {text!r}.\n2. The last token ends {text!r}.</analysis>"


class FakeAPI:
    """Serves scripted responses first, then `handler` (default: an analysis echoing the prompt's text)."""

    def __init__(self, server: ThreadingHTTPServer):
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.seen: list[Seen] = []
        self.script: list[Response] = []
        self.handler: Callable[[Seen], Response] = lambda seen: Response()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def next_response(self, seen: Seen) -> Response:
        with self.lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.script.pop(0) if self.script else None
        return scripted or self.handler(seen)

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1


def api_body(path: str, prompt: str, response: Response) -> bytes:
    text = response.reply if response.reply is not None else echo_analysis(prompt)
    if path.endswith("/chat/completions"):
        message = {
            "role": "assistant",
            "content": None if response.refusal else text,
            "refusal": "I can't help with that." if response.refusal else None,
        }
        data = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
    else:
        data = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [] if response.refusal else [{"type": "text", "text": text}],
            "stop_reason": "refusal" if response.refusal else "end_turn",
        }
    return json.dumps(data).encode()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        api: FakeAPI = self.server.api
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        response = api.next_response(seen)
        counted = True
        try:
            time.sleep(response.delay)
            payload = response.body
            if payload is None:
                payload = api_body(self.path, body["messages"][0]["content"], response)
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            # leave the in-flight count before the body goes out: once the client has it, it may send its next
            # request before this thread runs again, which would otherwise count one request twice
            api.done()
            counted = False
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass
        finally:
            if counted:
                api.done()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real keys or proxies from the host leak into these tests."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.api = FakeAPI(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.api
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def make(provider: str, api: FakeAPI, **options) -> Explainer:
    options = {**FAST, **options}
    if provider == "openai":
        return OpenAIExplainer(options.pop("model", "gpt-test"), base_url=f"{api.url}/v1", **options)
    return AnthropicExplainer(base_url=api.url, **options)


# --- clean_analysis ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("<analysis>First feature.\nSecond feature.</analysis>", "First feature.\n\nSecond feature."),
        ("preamble <analysis>\n\n  First.  \n\n\nSecond.\n</analysis> trailing", "First.\n\nSecond."),
        (
            "<analysis>\n- dash\n* star\n• dot\n+ plus\n– en\n— em\n</analysis>",
            "dash\n\nstar\n\ndot\n\nplus\n\nen\n\nem",
        ),
        ("<analysis>\n1. one\n2) two\n(3) three\n</analysis>", "one\n\ntwo\n\nthree"),
        ("<analysis>\na. one\nB) two\n(c) three\n</analysis>", "one\n\ntwo\n\nthree"),
        ("<analysis>\ni. one\nii) two\n(iv) three\nIX. four\n</analysis>", "one\n\ntwo\n\nthree\n\nfour"),
        (
            "<analysis>\n1. **Syntax:** an open clause\n- **Last token:** the comma\n</analysis>",
            "Syntax: an open clause\n\nLast token: the comma",
        ),
        (
            "<analysis>\n**Syntax**: open clause\n**2. Register:** formal\n</analysis>",
            "Syntax: open clause\n\nRegister: formal",
        ),
        (
            "<analysis>\n**Open quote** mid-sentence **\n_Formal register_\n</analysis>",
            "Open quote mid-sentence\n\nFormal register",
        ),
        (
            "<analysis>\n*Stress* on *emphasis*\nA snake_case_ name\n</analysis>",
            "*Stress* on *emphasis*\n\nA snake_case_ name",
        ),
    ],
)
def test_clean_analysis_normalises_features(raw: str, expected: str) -> None:
    assert clean_analysis(raw) == expected


@pytest.mark.parametrize(
    "line",
    [
        "A sentence that starts with the article.",
        "I think the clause is open.",
        "1.5 litres of water precede the verb.",
        "2024. The year opens the sentence.",
        "Mix. is an imperative fragment.",
        "e.g. a list of examples is under way.",
        "U.S. policy is the topic.",
        "-5 degrees is quoted as a temperature.",
    ],
)
def test_clean_analysis_keeps_ordinary_sentence_starts(line: str) -> None:
    assert clean_analysis(f"<analysis>{line}\nSecond feature.</analysis>") == f"{line}\n\nSecond feature."


@pytest.mark.parametrize(
    "raw",
    [
        "No tags at all.\nSecond line.",
        "<analysis>\nFirst.\nSecond.",  # never closed (ran out of tokens)
        "<analysis>Only one feature.</analysis>",
        "<analysis>\n- \n**\n1. Only one.\n</analysis>",  # empty bullets and stray markup do not count
        "<analysis>   </analysis>",
        "",
    ],
)
def test_clean_analysis_rejects(raw: str) -> None:
    assert clean_analysis(raw) is None


def test_clean_analysis_takes_first_block() -> None:
    raw = "<analysis>Alpha.\nBeta.</analysis> and <analysis>Gamma.\nDelta.</analysis>"
    assert clean_analysis(raw) == "Alpha.\n\nBeta."


def test_instruction_prompt_formats_any_text() -> None:
    prompt = INSTRUCTION_PROMPT.format(text="def f(x): return {x: '{text}'}")
    assert "<begin_text>def f(x): return {x: '{text}'}<end_text>" in prompt
    assert "<analysis>" in prompt and "</analysis>" in prompt


# --- providers against the fake server ---------------------------------------------------------------------


def test_openai_success_sends_chat_completions(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    explainer = make("openai", api, model="gpt-test", max_tokens=123, temperature=0.7)
    [out] = explainer.explain(["The cat sat on the"])
    assert out == "Context: the text is 'The cat sat on the'.\n\nThe last token ends 'The cat sat on the'."
    [seen] = api.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body["model"] == "gpt-test"
    assert seen.body["max_tokens"] == 123 and seen.body["temperature"] == 0.7
    prompt = INSTRUCTION_PROMPT.format(text="The cat sat on the")
    assert seen.body["messages"] == [{"role": "user", "content": prompt}]
    assert explainer.stats["explained"] == 1 and explainer.stats["retries"] == 0


def test_anthropic_success_sends_messages(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    explainer = make("anthropic", api, max_tokens=77)
    [out] = explainer.explain(["Once upon a"])
    assert out is not None and "'Once upon a'" in out
    [seen] = api.seen
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == SECRET
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body["model"] == "claude-haiku-4-5-20251001" and seen.body["max_tokens"] == 77
    prompt = INSTRUCTION_PROMPT.format(text="Once upon a")
    assert seen.body["messages"] == [{"role": "user", "content": prompt}]


def test_local_openai_compatible_server_needs_no_key(api: FakeAPI) -> None:
    assert make("openai", api).explain(["x y"])[0] is not None
    assert "authorization" not in api.seen[0].headers


@pytest.mark.parametrize("cls, env", [(OpenAIExplainer, "OPENAI_API_KEY"), (AnthropicExplainer, "ANTHROPIC_API_KEY")])
def test_official_api_without_key_is_an_error(cls: type, env: str) -> None:
    with pytest.raises(NlakitError, match=env):
        cls(model="some-model")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status, stat", [(429, "http_429"), (503, "http_5xx")])
def test_retry_after_is_honoured(api: FakeAPI, provider: str, status: int, stat: str) -> None:
    api.script = [Response(status, body=b'{"error": "slow down"}', headers={"Retry-After": "0.4"})]
    explainer = make(provider, api)
    start = time.monotonic()
    [out] = explainer.explain(["text"])
    assert time.monotonic() - start >= 0.35  # backoff alone would have waited ~1 ms
    assert out is not None
    assert explainer.stats[stat] == 1 and explainer.stats["retries"] == 1 and len(api.seen) == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_server_error_then_success(api: FakeAPI, provider: str) -> None:
    api.script = [Response(500, body=b"internal error"), Response(502, body=b"bad gateway")]
    explainer = make(provider, api)
    assert explainer.explain(["text"])[0] is not None
    assert explainer.stats["http_5xx"] == 2 and explainer.stats["retries"] == 2


def test_timeout_then_success(api: FakeAPI) -> None:
    api.script = [Response(delay=0.6)]
    explainer = make("openai", api, timeout=0.2)
    assert explainer.explain(["text"])[0] is not None
    assert explainer.stats["timeouts"] == 1 and explainer.stats["retries"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_malformed_bodies_then_success(api: FakeAPI, provider: str) -> None:
    api.script = [Response(body=b"<html>oops"), Response(body=b'{"unexpected": true}'), Response(body=b"[]")]
    explainer = make(provider, api)
    assert explainer.explain(["text"])[0] is not None
    assert explainer.stats["bad_json"] == 3 and explainer.stats["retries"] == 3


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "reply, stat",
    [
        ("Here are the features: syntax, register.", "dropped_missing_tag"),
        ("<analysis>\n1. Syntax.\n2. Register.", "dropped_missing_tag"),  # cut off by max_tokens
        ("<analysis>Only one feature.</analysis>", "dropped_few_features"),
    ],
)
def test_unusable_reply_is_dropped(api: FakeAPI, provider: str, reply: str, stat: str) -> None:
    api.handler = lambda seen: Response(reply=reply)
    explainer = make(provider, api)
    assert explainer.explain(["a", "b"]) == [None, None]
    assert explainer.stats[stat] == 2
    assert explainer.stats["explained"] == 0 and explainer.stats["retries"] == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_refusal_is_dropped(api: FakeAPI, provider: str) -> None:
    api.script = [Response(refusal=True)]
    explainer = make(provider, api, concurrency=1)
    out = explainer.explain(["refused", "fine"])
    assert out[0] is None and out[1] is not None
    assert explainer.stats["dropped_refusal"] == 1 and explainer.stats["explained"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_error_stops_the_run(api: FakeAPI, monkeypatch: pytest.MonkeyPatch, provider: str, status: int) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    body = b'{"error": {"message": "invalid x-api-key"}}\n    see docs'  # multi-line bodies become one line
    api.handler = lambda seen: Response(status, body=body)
    explainer = make(provider, api, concurrency=2)
    with pytest.raises(NlakitError) as caught:
        explainer.explain([f"row {i}" for i in range(50)])
    message = str(caught.value)
    assert f"HTTP {status}" in message and '"invalid x-api-key"}} see docs' in message
    assert "\n" not in message and SECRET not in message
    assert len(api.seen) <= 6  # no retries of a failing row; at most the queued window was sent


def test_exhausted_retries_drop_only_that_row(api: FakeAPI) -> None:
    api.handler = lambda seen: Response(500, body=b"down") if "flaky" in str(seen.body) else Response()
    explainer = make("openai", api, concurrency=1, max_retries=2)
    out = explainer.explain(["fine", "flaky row", "also fine"])
    assert out[0] is not None and out[1] is None and out[2] is not None
    assert explainer.stats["dropped_transient"] == 1 and explainer.stats["explained"] == 2
    assert explainer.stats["retries"] == 2 and explainer.stats["http_5xx"] == 3 and len(api.seen) == 5


def test_no_reply_ever_is_an_error(api: FakeAPI) -> None:
    """A server that fails from the first request is a misconfiguration, not a reason to drop every row."""
    api.handler = lambda seen: Response(500, body=b"down")
    with pytest.raises(NlakitError, match="no usable reply"):
        make("openai", api, max_retries=1).explain(["a", "b"])


def test_unreachable_server_is_an_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    explainer = OpenAIExplainer("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, **FAST)
    with pytest.raises(NlakitError, match="check that the server is up"):
        explainer.explain(["a"])
    assert explainer.stats["connection_errors"] == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_order_preserved_under_concurrency(api: FakeAPI, provider: str) -> None:
    def jittered(seen: Seen) -> Response:  # later rows tend to answer first
        row = int(re.search(r"row (\d+)", seen.body["messages"][0]["content"]).group(1))
        return Response(delay=0.005 * ((31 - row) % 7))

    api.handler = jittered
    contexts = [f"row {i}" for i in range(32)]
    done: list[int] = []
    out = make(provider, api, concurrency=6).explain(contexts, progress=done.append)
    assert [o is not None and f"'{c}'" in o for o, c in zip(out, contexts, strict=True)] == [True] * 32
    assert sum(done) == 32
    assert 1 < api.max_in_flight <= 6


def test_empty_input(api: FakeAPI) -> None:
    assert make("openai", api).explain([]) == [] and api.seen == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_settings_never_contain_the_key(api: FakeAPI, monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    explainer = make(provider, api, max_tokens=200, temperature=0.5)
    settings = explainer.settings()
    assert SECRET not in json.dumps(settings) and SECRET not in repr(explainer)
    assert settings["provider"] == provider and settings["model"]
    assert settings["max_tokens"] == 200 and settings["temperature"] == 0.5
    assert settings["base_url"].startswith(api.url) and settings["instruction_prompt"] == INSTRUCTION_PROMPT


# --- make_explainer ----------------------------------------------------------------------------------------


def test_make_explainer_builds_registered_providers(api: FakeAPI) -> None:
    assert set(PROVIDERS) >= {"openai", "anthropic"}
    assert isinstance(make_explainer("openai", model="m", base_url=api.url), OpenAIExplainer)
    assert isinstance(make_explainer("Anthropic", base_url=api.url), AnthropicExplainer)


def test_make_explainer_unknown_name() -> None:
    with pytest.raises(NlakitError, match="unknown explainer 'gpt'.*anthropic, grounded, nla, openai"):
        make_explainer("gpt")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "http://127.0.0.1:9"}, "openai explainer needs a model name"),
        ({"model": "m", "modle": "m"}, "bad options for explainer 'openai'"),
    ],
)
def test_make_explainer_bad_options(options: dict, message: str) -> None:
    with pytest.raises(NlakitError, match=message):
        make_explainer("openai", **options)


@pytest.mark.parametrize("options", [{"concurrency": 0}, {"max_retries": -1}, {"timeout": 0}, {"model": ""}])
def test_out_of_range_options(api: FakeAPI, options: dict) -> None:
    with pytest.raises(NlakitError):
        make("openai", api, **options)
