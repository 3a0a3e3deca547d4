"""`nla serve`: a local, offline web viewer for one NLA (FastAPI + one static page).

The page sends text, gets every token coloured by reconstruction fidelity, reads a token's explanation next to the
target's top next tokens, and steers the target by editing an explanation. All model work goes through the same
library calls as the CLI and eval (`NLA.activations`, `NLA.explain`, `steer.next_token_logprobs`, `steer.steer`);
this module only validates, serialises and streams.

One NLA per process; torch calls are serialised by one lock (a CPU box has few cores, and the models are shared).
Explanations stream as NDJSON, one small batch of positions per lock hold, so other requests (a token click, a
steering run) get the models between batches.
"""

import json
import mimetypes
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nlakit.errors import NlakitError

WEB = Path(__file__).parent / "web"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for; they also appear in the OpenAPI schema (pydantic constraints)."""

    max_text_chars: int = 4000
    max_tokens: int = 1024  # the tokenised text; NLA.activations reads at most 1024 tokens
    max_positions: int = 1024  # positions explained by one /api/explain request
    max_batch: int = 16  # positions verbalised per lock hold while streaming
    max_explanation_tokens: int = 200
    max_new_tokens: int = 200  # continuation / steering length
    max_topk_positions: int = 16
    max_k: int = 50
    max_alpha: float = 16.0
    max_messages: int = 32


class NDJSONResponse(StreamingResponse):
    media_type = NDJSON


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str = Field(description="What is wrong, in one line.")


class TokenOut(BaseModel):
    position: int
    id: int
    token: str


class TokenizeOut(BaseModel):
    tokens: list[TokenOut]


class ExplanationOut(BaseModel):
    position: int
    token: str
    explanation: str
    cos: float
    mse_nrm: float
    fve_nrm: float | None = Field(description="None when the AR records no training variance; use cos then.")
    norm: float


class ExplainEvent(BaseModel):
    """One line of the /api/explain stream: `tokens` first, then one `explanation` per position, then `done` (or
    `error`, after which the stream ends)."""

    type: Literal["tokens", "explanation", "done", "error"]
    tokens: list[TokenOut] | None = None
    positions: list[int] | None = None
    explanation: ExplanationOut | None = None
    count: int | None = None
    seconds: float | None = None
    message: str | None = None


class NextToken(BaseModel):
    id: int
    token: str
    logprob: float
    rank: int


class TopkRow(BaseModel):
    position: int
    token: str
    top: list[NextToken] = Field(description="The target's most likely next tokens after this position.")
    actual: NextToken | None = Field(description="The token that follows in the text (None at the end).")


class TopkOut(BaseModel):
    rows: list[TopkRow]


class SteerOut(BaseModel):
    original: str = Field(description="The target's greedy continuation, untouched.")
    steered: str = Field(description="The same with alpha * (AR(edited) - AR(original)) added at `position`.")
    delta_norm: float
    position: int
    alpha: float


class ContinueOut(BaseModel):
    text: str = Field(description="The input text with the continuation appended.")
    continuation: str


class ChatOut(BaseModel):
    text: str = Field(description="The conversation rendered with the chat template, reply included.")
    reply: str


class InfoOut(BaseModel):
    name: str
    target: str
    layer: int
    d_model: int
    fidelity: Literal["fve_nrm", "cos"] = Field(description="The score tokens are coloured by.")
    can_explain: bool
    can_steer: bool
    chat: bool = Field(description="The target's tokenizer has a chat template (enables /api/chat).")
    limits: dict[str, float]


def _request_models(limits: Limits) -> dict[str, type[BaseModel]]:
    """Request bodies with this app's limits baked in, so the OpenAPI schema states them."""
    Text = Annotated[str, Field(min_length=1, max_length=limits.max_text_chars)]
    Position = Annotated[int, Field(ge=0, lt=limits.max_tokens)]
    NewTokens = Annotated[int, Field(ge=1, le=limits.max_new_tokens)]

    class TextIn(_Model):
        text: Text

    class ExplainIn(_Model):
        text: Text
        positions: list[Position] | None = Field(
            default=None,
            max_length=limits.max_positions,
            description="Token positions to explain; default every token but 0 (the attention sink).",
        )
        batch_size: int = Field(default=4, ge=1, le=limits.max_batch, description="Positions per streamed batch.")
        max_new_tokens: int = Field(default=120, ge=1, le=limits.max_explanation_tokens)

    class TopkIn(_Model):
        text: Text
        positions: list[Position] = Field(min_length=1, max_length=limits.max_topk_positions)
        k: int = Field(default=10, ge=1, le=limits.max_k)

    class SteerIn(_Model):
        prompt: Text
        original: Text = Field(description="The explanation the AV wrote at `position`.")
        edited: Text = Field(description="The edited explanation to steer towards.")
        position: int = Field(default=-1, ge=-limits.max_tokens, lt=limits.max_tokens)
        alpha: float = Field(default=1.0, ge=-limits.max_alpha, le=limits.max_alpha, allow_inf_nan=False)
        max_new_tokens: NewTokens = 30

    class ContinueIn(_Model):
        text: Text
        max_new_tokens: NewTokens = 40

    class Message(_Model):
        role: Literal["system", "user", "assistant"]
        content: Text

    class ChatIn(_Model):
        messages: list[Message] = Field(min_length=1, max_length=limits.max_messages)
        max_new_tokens: NewTokens = 60

        @model_validator(mode="after")
        def _total_length(self) -> "ChatIn":
            total = sum(len(m.content) for m in self.messages)
            if total > limits.max_text_chars:
                raise ValueError(f"the conversation has {total} characters; at most {limits.max_text_chars}")
            return self

    return {m.__name__: m for m in (TextIn, ExplainIn, TopkIn, SteerIn, ContinueIn, ChatIn)}


def create_app(
    nla,
    *,
    name: str | None = None,
    limits: Limits | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The viewer's app around one loaded `NLA`. `allowed_hosts` (Host header check) guards a loopback server
    against DNS rebinding: a web page elsewhere cannot make the browser talk to it under another name."""
    from nlakit.steer import greedy_continuation, next_token_logprobs, steer

    limits = limits or Limits()
    models = _request_models(limits)
    TextIn, ExplainIn, TopkIn = models["TextIn"], models["ExplainIn"], models["TopkIn"]
    SteerIn, ContinueIn, ChatIn = models["SteerIn"], models["ContinueIn"], models["ChatIn"]
    lock = threading.Lock()
    errors: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut, "description": "Bad input (NlakitError)."}}
    # only files that ship in the package's web folder, looked up by exact name: no user path reaches the filesystem
    static = {p.name: p for p in WEB.iterdir() if p.is_file() and not p.name.startswith(".")} if WEB.is_dir() else {}

    app = FastAPI(
        title="nlakit viewer",
        version=_version(),
        description="Explain a target model's activations token by token, and steer it by editing an explanation.",
        # Swagger/ReDoc pages load their scripts from a CDN, which an offline viewer cannot reach: the schema only
        docs_url=None,
        redoc_url=None,
    )
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input back: a 4000-character text, or a lone surrogate that cannot
        # even be encoded (a 500). Where and what is enough.
        detail = [
            {"type": e["type"], "loc": [_clean(x) for x in e["loc"]], "msg": _clean(e["msg"])} for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(NlakitError)
    async def _nlakit_error(_request: Request, exc: NlakitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def tokenize(text: str) -> tuple[list[int], list[TokenOut]]:
        """Token ids exactly as the NLA reads them (`NLA.activations`), so positions mean the same everywhere."""
        with lock:
            ids = nla.activations(text)[0]
            tok = nla.target_tokenizer()
            return ids, [TokenOut(position=i, id=t, token=tok.decode([t])) for i, t in enumerate(ids)]

    def check_positions(positions: list[int], n: int) -> None:
        bad = [p for p in positions if not 0 <= p < n]
        if bad:
            raise NlakitError(f"position {bad[0]} is outside the text's {n} tokens (0..{n - 1})")

    @app.get("/api/info", response_model=InfoOut, tags=["api"])
    def info() -> InfoOut:
        """What this server explains: the NLA, its target model and layer, and the request limits."""
        with lock:
            chat = bool(getattr(nla.target_tokenizer(), "chat_template", None))
        return InfoOut(
            name=name or f"{nla.target} L{nla.layer}",
            target=str(nla.target),
            layer=nla.layer,
            d_model=nla.d_model,
            fidelity="fve_nrm" if nla.rawvar else "cos",
            can_explain=nla.av is not None and nla.ar is not None,
            can_steer=nla.ar is not None,
            chat=chat,
            limits={k: float(v) for k, v in asdict(limits).items()},
        )

    @app.post("/api/tokenize", response_model=TokenizeOut, responses=errors, tags=["api"])
    def tokenize_route(req: TextIn) -> TokenizeOut:
        """The text's tokens as the NLA sees them (position, id, decoded string)."""
        return TokenizeOut(tokens=tokenize(req.text)[1])

    @app.post(
        "/api/explain",
        response_class=NDJSONResponse,
        responses={
            200: {
                "model": ExplainEvent,
                "description": "NDJSON: one ExplainEvent per line (tokens, then explanations as ready, then done).",
            },
            **errors,
        },
        tags=["api"],
    )
    def explain(req: ExplainIn) -> NDJSONResponse:
        """Per-token explanations, streamed in small batches as they are ready (`NLA.explain` per batch).

        Bad input (empty text, positions past the end) fails before the stream starts, with a 400."""
        ids, tokens = tokenize(req.text)
        if len(ids) > limits.max_tokens:
            raise NlakitError(f"the text has {len(ids)} tokens; the viewer explains at most {limits.max_tokens}")
        # the same default as NLA.explain: every position but 0 (an attention sink)
        positions = list(range(1 if len(ids) > 1 else 0, len(ids))) if req.positions is None else req.positions
        positions = list(dict.fromkeys(positions))
        check_positions(positions, len(ids))
        if len(positions) > limits.max_positions:
            raise NlakitError(f"{len(positions)} positions; explain at most {limits.max_positions} per request")
        text, size, new_tokens = req.text, req.batch_size, req.max_new_tokens

        def events() -> Iterator[str]:
            yield _line(ExplainEvent(type="tokens", tokens=tokens, positions=positions))
            start, done = time.perf_counter(), 0
            for i in range(0, len(positions), size):
                try:
                    with lock:  # released between batches so a click or a steering run is served meanwhile
                        rows = nla.explain(text, positions[i : i + size], max_new_tokens=new_tokens)
                except NlakitError as e:
                    yield _line(ExplainEvent(type="error", message=str(e)))
                    return
                for r in rows:
                    done += 1
                    yield _line(ExplainEvent(type="explanation", explanation=ExplanationOut(**r.to_dict())))
            yield _line(ExplainEvent(type="done", count=done, seconds=round(time.perf_counter() - start, 3)))

        return NDJSONResponse(events(), headers={"Cache-Control": "no-store"})

    @app.post("/api/topk", response_model=TopkOut, responses=errors, tags=["api"])
    def topk(req: TopkIn) -> TopkOut:
        """The full target's top-k next tokens after each position (log-probs from the LM head), and the rank of
        the token that actually follows."""
        ids, tokens = tokenize(req.text)
        positions = list(dict.fromkeys(req.positions))
        check_positions(positions, len(ids))
        rows = []
        with lock:
            model, tok = nla.target_lm(), nla.target_tokenizer()
            for p in positions:
                # one position per call: the batched form materialises [n, T, V] logits, large for a long text
                logp = next_token_logprobs(model, ids, [p], nla.layer)[0]
                k = min(req.k, logp.shape[-1])
                values, idx = logp.topk(k)
                top = [
                    NextToken(id=int(j), token=tok.decode([int(j)]), logprob=float(v), rank=r + 1)
                    for r, (v, j) in enumerate(zip(values.tolist(), idx.tolist(), strict=True))
                ]
                actual = None
                if p + 1 < len(ids):
                    nxt = ids[p + 1]
                    rank = int((logp > logp[nxt]).sum()) + 1
                    actual = NextToken(id=nxt, token=tok.decode([nxt]), logprob=float(logp[nxt]), rank=rank)
                rows.append(TopkRow(position=p, token=tokens[p].token, top=top, actual=actual))
        return TopkOut(rows=rows)

    @app.post("/api/steer", response_model=SteerOut, responses=errors, tags=["api"])
    def steer_route(req: SteerIn) -> SteerOut:
        """Steer the target by an explanation edit (`steer.steer`): add alpha * (AR(edited) - AR(original)) at
        `position` and continue greedily; the untouched continuation comes back beside it."""
        with lock:
            r = steer(
                nla,
                req.prompt,
                req.original,
                req.edited,
                position=req.position,
                alpha=req.alpha,
                max_new_tokens=req.max_new_tokens,
            )
        return SteerOut(
            original=r.original, steered=r.steered, delta_norm=r.delta_norm, position=r.position, alpha=req.alpha
        )

    def continuation_ids(text: str, max_new_tokens: int) -> tuple[list[int], Any]:
        tok = nla.target_tokenizer()
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) + max_new_tokens > limits.max_tokens:
            raise NlakitError(
                f"the text has {len(ids)} tokens; with {max_new_tokens} more it would pass the viewer's "
                f"{limits.max_tokens}-token limit"
            )
        return greedy_continuation(nla, ids, max_new_tokens), tok

    @app.post("/api/continue", response_model=ContinueOut, responses=errors, tags=["api"])
    def continue_route(req: ContinueIn) -> ContinueOut:
        """Append the target's greedy continuation to the text."""
        if not req.text.strip():
            raise NlakitError("the text is empty; type something for the model to continue")
        with lock:
            new, tok = continuation_ids(req.text, req.max_new_tokens)
            continuation = tok.decode(new, skip_special_tokens=True)
        return ContinueOut(text=req.text + continuation, continuation=continuation)

    @app.post("/api/chat", response_model=ChatOut, responses=errors, tags=["api"])
    def chat(req: ChatIn) -> ChatOut:
        """Chat with the target: render the messages with its chat template, generate the assistant's reply
        greedily, and return the whole rendered conversation (reply included) for explaining."""
        with lock:
            tok = nla.target_tokenizer()
            if not getattr(tok, "chat_template", None):
                raise NlakitError(f"{nla.target}'s tokenizer has no chat template; use /api/continue instead")
            messages = [m.model_dump() for m in req.messages]
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            new, _ = continuation_ids(rendered, req.max_new_tokens)
            # the conversation keeps the end-of-turn token so the next turn renders the same way
            full = rendered + tok.decode(new, skip_special_tokens=False)
            reply = tok.decode(new, skip_special_tokens=True).strip()
        return ChatOut(text=full, reply=reply)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI labels every response of a streaming route with the stream's media type; the 400 is JSON
        if app.openapi_schema is None:
            schema = base_openapi()
            responses = schema["paths"]["/api/explain"]["post"]["responses"]
            responses["200"]["content"] = {NDJSON: {"schema": {"$ref": "#/components/schemas/ExplainEvent"}}}
            responses["400"]["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        return app.openapi_schema

    app.openapi = openapi

    headers = {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    def send_file(filename: str) -> Response:
        path = static.get(filename)
        if path is None:
            raise HTTPException(status_code=404, detail="Not Found")
        media = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return Response(path.read_bytes(), media_type=media, headers=headers)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return send_file("index.html")

    @app.get("/static/{filename}", include_in_schema=False)
    def static_file(filename: str) -> Response:
        return send_file(filename)

    return app


def _clean(x: Any) -> Any:
    # an unknown key may be a lone surrogate, which no UTF-8 response can carry
    return x.encode("utf-8", "replace").decode("utf-8") if isinstance(x, str) else x


def _line(event: ExplainEvent) -> str:
    return json.dumps(event.model_dump(exclude_none=True), ensure_ascii=False) + "\n"


def _version() -> str:
    from nlakit import __version__

    return __version__


def _check_port(host: str, port: int) -> None:
    """Fail with a clear message before loading anything when the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise NlakitError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise NlakitError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None


def allowed_hosts_for(host: str) -> list[str] | None:
    """Host names a browser may use for a server bound to `host`: loopback names for a loopback bind (the DNS
    rebinding guard), anything otherwise (the user chose to expose it)."""
    return [*LOOPBACK, "[::1]"] if host in LOOPBACK or host.startswith("127.") else None


def serve(
    nla: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    dtype: str = "auto",
    log_level: str = "info",
) -> None:
    """Load an NLA (a folder or a shipped name) and serve the viewer until interrupted."""
    _check_port(host, port)
    import uvicorn

    from nlakit.nla import NLA

    model = NLA.from_pretrained(nla, device=device, dtype=dtype)
    # load the target once up front, so the first click does not wait for it
    model.target_tokenizer()
    model.target_backbone()
    model.target_lm()
    app = create_app(model, name=str(nla), allowed_hosts=allowed_hosts_for(host))
    shown = f"[{host}]" if ":" in host else host
    print(f"nla serve: {nla} ({model.target}, layer {model.layer}) on http://{shown}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
