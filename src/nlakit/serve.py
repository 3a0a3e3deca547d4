"""`nla serve`: a local, offline web viewer for one NLA (FastAPI + one static page).

The page sends text, gets every token coloured by reconstruction fidelity, reads a token's explanation next to the
target's top next tokens, and steers the target by editing an explanation. All model work goes through the same
library calls as the CLI and eval (`NLA.activations`, `NLA.explain`, `steer.next_token_logprobs`, `steer.steer`);
this module only validates, serialises and streams.

One NLA per process; torch calls are serialised by one lock (a CPU box has few cores, and the models are shared).
Explanations stream as NDJSON in large batches (up to `Limits.max_batch` positions in one `NLA.explain` call, as the
CLI does: batched generation is several times faster per position than small batches), and other requests (a token
click, a steering run) get the models between batches. Every request that uses the models waits in a bounded queue:
explain requests in one, the other model requests (topk, steer, continue, chat) in another, each in arrival order
behind the one that runs. When `Limits.max_waiting` already wait in a queue, the next request for it is refused at
once with a 429, a Retry-After header and a one-line JSON `detail`; a waiting request is a coroutine, not a thread,
so a burst cannot pile up threads.
"""

import asyncio
import copy
import json
import math
import mimetypes
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from nlakit.config import DEFAULT_NLA, ServeConfig
from nlakit.errors import NlakitError

if TYPE_CHECKING:  # torch loads only when a server starts: `nla serve` checks its port before that
    from nlakit.nla import NLA

WEB = Path(__file__).parent / "web"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for; they also appear in the OpenAPI schema (pydantic constraints)."""

    max_text_chars: int = 4000
    max_tokens: int = 1024  # the tokenised text; NLA.activations reads at most 1024 tokens
    max_positions: int = 1024  # positions explained by one /api/explain request
    # positions verbalised in one batched generation (one lock hold); 64 keeps a 1024-token text's KV cache small
    max_batch: int = 64
    # requests that may wait behind the running one, per queue (explain; the other model requests); the next: 429
    max_waiting: int = 4
    max_explanation_tokens: int = 200
    max_best_of: int = 16  # candidates per position (each one more generation)
    max_new_tokens: int = 200  # continuation / steering length
    max_topk_positions: int = 16
    max_k: int = 50
    max_alpha: float = 16.0
    max_messages: int = 32


class NDJSONResponse(StreamingResponse):
    """A streamed NDJSON body that calls `on_close` however the response ends (done, error, client gone), so a
    queue slot can never leak."""

    media_type = NDJSON

    def __init__(self, content: Any, *, on_close: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()


@dataclass(eq=False)
class _Ticket:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    started: float | None = None  # when it reached the head of the queue


class RequestQueue:
    """Requests in arrival order: the head runs, up to `waiting` more wait, and the rest are refused. The viewer has
    two: one for explain streams, one for the other model requests (`what` names them in the 429's message).

    Lives on the event loop (admit, wait and release all run there), so it needs no lock; a client that goes away
    while waiting for an explanation leaves at once (its stream is cancelled and `release` runs)."""

    def __init__(self, waiting: int, what: str = "explain", seconds: float = 10.0) -> None:
        self.capacity = waiting + 1
        self.what = what
        self.tickets: list[_Ticket] = []
        self.seconds = seconds  # running mean of one request's time at the head; seeds Retry-After

    @property
    def waiting(self) -> int:
        return max(0, len(self.tickets) - 1)

    def admit(self) -> _Ticket | None:
        if len(self.tickets) >= self.capacity:
            return None
        ticket = _Ticket()
        self.tickets.append(ticket)
        return ticket

    async def wait(self, ticket: _Ticket) -> AsyncIterator[int]:
        """Yield how many requests are ahead each time that changes, and return once `ticket` is at the head."""
        last = None
        while True:
            ticket.event.clear()  # before looking, so a release between the look and the wait is not missed
            ahead = self.tickets.index(ticket)
            if ahead == 0:
                ticket.started = time.monotonic()
                return
            if ahead != last:
                last = ahead
                yield ahead
            await ticket.event.wait()

    def release(self, ticket: _Ticket) -> None:
        if ticket not in self.tickets:
            return
        if ticket.started is not None:
            self.seconds = 0.7 * self.seconds + 0.3 * (time.monotonic() - ticket.started)
        self.tickets.remove(ticket)
        for t in self.tickets:
            t.event.set()

    def retry_after(self) -> int:
        """Seconds until a place is likely to free: about one request's time (the head's), at least 1."""
        return max(1, min(600, math.ceil(self.seconds)))

    def refuse(self) -> JSONResponse:
        """The 429 for a full queue: one line saying what runs, what waits, and when to retry."""
        wait = self.retry_after()
        return JSONResponse(
            {
                "detail": f"the viewer is busy: 1 {self.what} request running and {self.waiting} waiting (the most "
                f"it queues); retry in about {wait} s"
            },
            status_code=429,
            headers={"Retry-After": str(wait), "Cache-Control": "no-store"},
        )


def batches(positions: list[int], size: int) -> list[list[int]]:
    """`positions` in as few batches of at most `size` as possible, of near-equal length (39 at 32 -> 20 + 19, not
    32 + 7: a small trailing batch costs nearly as much time as a full one)."""
    if not positions:
        return []
    n = math.ceil(len(positions) / size)
    step = math.ceil(len(positions) / n)
    return [positions[i : i + step] for i in range(0, len(positions), step)]


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
    """One line of the /api/explain stream: `tokens` first, `queued` while earlier requests run (with how many are
    `ahead`), then one `explanation` per position as each batch finishes, then `done` (or `error`, after which the
    stream ends)."""

    type: Literal["tokens", "queued", "explanation", "done", "error"]
    tokens: list[TokenOut] | None = None
    positions: list[int] | None = None
    batches: int | None = Field(default=None, description="How many batched generations the positions take.")
    ahead: int | None = None
    explanation: ExplanationOut | None = None
    count: int | None = None
    seconds: float | None = Field(default=None, description="Explaining time, after the wait in the queue.")
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
    steered: str = Field(
        description="The same with alpha |h| delta/|delta| (delta = AR(edited) - AR(original)) added at `position`."
    )
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
    limits: dict[str, int | float] = Field(description="Request limits: counts are integers, max_alpha a float.")


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
        batch_size: int = Field(
            default=limits.max_batch,
            ge=1,
            le=limits.max_batch,
            description="At most this many positions per batched generation (batches are split evenly).",
        )
        max_new_tokens: int | None = Field(
            default=None,
            ge=1,
            le=limits.max_explanation_tokens,
            description="Longest explanation, in tokens; default: the AV's training cap (as `nla explain`).",
        )
        best_of: int = Field(
            default=1,
            ge=1,
            le=limits.max_best_of,
            description="Candidates per position: the greedy text and best_of - 1 samples; the AR keeps the best.",
        )

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
    nla: "NLA",
    *,
    name: str | None = None,
    limits: Limits | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The viewer's app around one loaded `NLA`. `allowed_hosts` (Host header check) guards a loopback server
    against DNS rebinding: a web page elsewhere cannot make the browser talk to it under another name."""
    from nlakit.nla import NLA
    from nlakit.steer import greedy_continuation, next_token_logprobs, steer

    limits = limits or Limits()
    models = _request_models(limits)
    TextIn, ExplainIn, TopkIn = models["TextIn"], models["ExplainIn"], models["TopkIn"]
    SteerIn, ContinueIn, ChatIn = models["SteerIn"], models["ContinueIn"], models["ChatIn"]
    lock = threading.Lock()  # the models: one torch call at a time
    queue = RequestQueue(limits.max_waiting)
    # topk, steer, continue and chat: short calls, each one lock hold; they wait here (not behind whole explanations,
    # whose streams give the lock up between batches)
    model_queue = RequestQueue(limits.max_waiting, what="model", seconds=2.0)
    # the server's own tokenizer copy: the models' lock is held for a whole batch, and a Rust fast tokenizer shared
    # across threads can fail ("Already borrowed"); tokenizing (and a 429) never waits for the models this way
    tok_lock = threading.Lock()
    tokenizer = copy.deepcopy(nla.target_tokenizer())
    tok_view = SimpleNamespace(target_tokenizer=lambda: tokenizer)
    app_state = SimpleNamespace(lock=lock, queue=queue, model_queue=model_queue)
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
    app.state.viewer = app_state  # the models' lock and the two queues, for tests and diagnostics
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
        """Token ids exactly as the NLA reads them (`NLA.tokenize`'s own code, run on the server's tokenizer copy),
        so positions mean the same everywhere."""
        with tok_lock:
            ids = NLA.tokenize(tok_view, text)  # type: ignore[arg-type]  # only target_tokenizer is used
            return ids, [TokenOut(position=i, id=t, token=tokenizer.decode([t])) for i, t in enumerate(ids)]

    def check_positions(positions: list[int], n: int) -> None:
        bad = [p for p in positions if not 0 <= p < n]
        if bad:
            raise NlakitError(f"position {bad[0]} is outside the text's {n} tokens (0..{n - 1})")

    async def with_models(work: Callable[[], Any]) -> Any:
        """Run `work` under the models' lock once this request reaches the head of the model queue; a 429 when the
        queue is full. The slot is freed however the request ends (an answer, an error, a cancelled task)."""
        ticket = model_queue.admit()
        if ticket is None:
            return model_queue.refuse()

        def locked() -> Any:
            with lock:
                return work()

        try:
            async for _ahead in model_queue.wait(ticket):
                pass
            return await run_in_threadpool(locked)
        finally:
            model_queue.release(ticket)

    @app.get("/api/info", response_model=InfoOut, tags=["api"])
    def info() -> InfoOut:
        """What this server explains: the NLA, its target model and layer, and the request limits."""
        chat = bool(getattr(tokenizer, "chat_template", None))
        return InfoOut(
            name=name or f"{nla.target} L{nla.layer}",
            target=str(nla.target),
            layer=nla.layer,
            d_model=nla.d_model,
            fidelity="fve_nrm" if nla.rawvar else "cos",
            can_explain=nla.av is not None and nla.ar is not None,
            can_steer=nla.ar is not None,
            chat=chat,
            limits=asdict(limits),
        )

    @app.post("/api/tokenize", response_model=TokenizeOut, responses=errors, tags=["api"])
    def tokenize_route(req: TextIn) -> TokenizeOut:
        """The text's tokens as the NLA sees them (position, id, decoded string)."""
        return TokenizeOut(tokens=tokenize(req.text)[1])

    busy = {"model": ErrorOut, "description": "The explain queue is full; retry after Retry-After seconds."}
    model_busy = {"model": ErrorOut, "description": "The model queue is full; retry after Retry-After seconds."}
    model_errors = {**errors, 429: model_busy}

    @app.post(
        "/api/explain",
        response_class=NDJSONResponse,
        status_code=200,  # FastAPI reads it from the class's __init__ default otherwise, and this __init__ has none
        responses={
            200: {
                "model": ExplainEvent,
                "description": "NDJSON: one ExplainEvent per line (tokens, queued, explanations as ready, then done).",
            },
            **errors,
            429: busy,
        },
        tags=["api"],
    )
    async def explain(req: ExplainIn) -> Response:
        """Per-token explanations, streamed batch by batch (`NLA.explain` on up to `batch_size` positions at once,
        as the CLI explains a whole text in one call).

        Bad input (empty text, positions past the end) fails before the stream starts, with a 400. Requests run one
        at a time in arrival order; when `max_waiting` already wait, the answer is a 429 with Retry-After."""
        ids, tokens = await run_in_threadpool(tokenize, req.text)
        if len(ids) > limits.max_tokens:
            raise NlakitError(f"the text has {len(ids)} tokens; the viewer explains at most {limits.max_tokens}")
        # the same default as NLA.explain: every position but 0 (an attention sink)
        positions = list(range(1 if len(ids) > 1 else 0, len(ids))) if req.positions is None else req.positions
        positions = list(dict.fromkeys(positions))
        check_positions(positions, len(ids))
        if len(positions) > limits.max_positions:
            raise NlakitError(f"{len(positions)} positions; explain at most {limits.max_positions} per request")
        ticket = queue.admit()
        if ticket is None:
            return queue.refuse()
        text, new_tokens, best_of = req.text, req.max_new_tokens, req.best_of
        plan = batches(positions, req.batch_size)

        def run(batch: list[int]) -> list[Any]:
            with lock:  # released between batches so a click or a steering run is served meanwhile
                return nla.explain(text, batch, max_new_tokens=new_tokens, best_of=best_of)

        async def events() -> AsyncIterator[str]:
            yield _line(ExplainEvent(type="tokens", tokens=tokens, positions=positions, batches=len(plan)))
            async for ahead in queue.wait(ticket):
                yield _line(ExplainEvent(type="queued", ahead=ahead))
            start, done = time.perf_counter(), 0
            for batch in plan:
                try:
                    rows = await run_in_threadpool(run, batch)
                except NlakitError as e:
                    yield _line(ExplainEvent(type="error", message=str(e)))
                    return
                for r in rows:
                    done += 1
                    yield _line(ExplainEvent(type="explanation", explanation=ExplanationOut(**r.to_dict())))
            yield _line(ExplainEvent(type="done", count=done, seconds=round(time.perf_counter() - start, 3)))

        return NDJSONResponse(events(), on_close=lambda: queue.release(ticket), headers={"Cache-Control": "no-store"})

    @app.post("/api/topk", response_model=TopkOut, responses=model_errors, tags=["api"])
    async def topk(req: TopkIn) -> Any:
        """The full target's top-k next tokens after each position (log-probs from the LM head), and the rank of
        the token that actually follows. A 429 with Retry-After when `max_waiting` model requests already wait."""
        ids, tokens = await run_in_threadpool(tokenize, req.text)
        positions = list(dict.fromkeys(req.positions))
        check_positions(positions, len(ids))

        def work() -> TopkOut:
            model, tok = nla.target_lm(), nla.target_tokenizer()
            rows = []
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

        return await with_models(work)

    @app.post("/api/steer", response_model=SteerOut, responses=model_errors, tags=["api"])
    async def steer_route(req: SteerIn) -> Any:
        """Steer the target by an explanation edit (`steer.steer`): add alpha * |h| * delta / |delta| (delta =
        AR(edited) - AR(original); alpha is a fraction of the activation's norm, about 0.25 works best on the shipped
        NLA) at `position` and continue greedily; the untouched continuation comes back beside it. A 429 with
        Retry-After when `max_waiting` model requests already wait."""

        def work() -> SteerOut:
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

        return await with_models(work)

    def continuation_ids(text: str, max_new_tokens: int) -> tuple[list[int], Any]:
        tok = nla.target_tokenizer()
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) + max_new_tokens > limits.max_tokens:
            raise NlakitError(
                f"the text has {len(ids)} tokens; with {max_new_tokens} more it would pass the viewer's "
                f"{limits.max_tokens}-token limit"
            )
        return greedy_continuation(nla, ids, max_new_tokens), tok

    @app.post("/api/continue", response_model=ContinueOut, responses=model_errors, tags=["api"])
    async def continue_route(req: ContinueIn) -> Any:
        """Append the target's greedy continuation to the text. A 429 with Retry-After when `max_waiting` model
        requests already wait."""
        if not req.text.strip():
            raise NlakitError("the text is empty; type something for the model to continue")

        def work() -> ContinueOut:
            new, tok = continuation_ids(req.text, req.max_new_tokens)
            continuation = tok.decode(new, skip_special_tokens=True)
            return ContinueOut(text=req.text + continuation, continuation=continuation)

        return await with_models(work)

    @app.post("/api/chat", response_model=ChatOut, responses=model_errors, tags=["api"])
    async def chat(req: ChatIn) -> Any:
        """Chat with the target: render the messages with its chat template, generate the assistant's reply
        greedily, and return the whole rendered conversation (reply included) for explaining. A 429 with Retry-After
        when `max_waiting` model requests already wait."""
        if not getattr(tokenizer, "chat_template", None):  # the server's copy: the same template, no lock needed
            raise NlakitError(f"{nla.target}'s tokenizer has no chat template; use /api/continue instead")
        messages = [m.model_dump() for m in req.messages]

        def work() -> ChatOut:
            tok = nla.target_tokenizer()
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            new, _ = continuation_ids(rendered, req.max_new_tokens)
            # the conversation keeps the end-of-turn token so the next turn renders the same way
            full = rendered + tok.decode(new, skip_special_tokens=False)
            reply = tok.decode(new, skip_special_tokens=True).strip()
            return ChatOut(text=full, reply=reply)

        return await with_models(work)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI labels every response of a streaming route with the stream's media type; the 400 is JSON
        if app.openapi_schema is None:
            schema = base_openapi()
            responses = schema["paths"]["/api/explain"]["post"]["responses"]
            responses["200"]["content"] = {NDJSON: {"schema": {"$ref": "#/components/schemas/ExplainEvent"}}}
            for status in ("400", "429"):
                responses[status]["content"] = {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                }
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


def serve(cfg: ServeConfig, log_level: str = "info") -> None:
    """Load the NLA `cfg` names and serve the viewer until interrupted. `cfg.max_waiting` requests may wait behind
    the running one in each queue (explain; the other model requests) before the next gets a 429; 0 refuses any
    request while one runs."""
    host, port = cfg.host, cfg.port  # cfg checked its own values (ServeConfig.__post_init__)
    _check_port(host, port)
    import uvicorn

    from nlakit.nla import NLA

    model = NLA.from_config(cfg)
    # load the target once up front, so the first click does not wait for it
    model.target_tokenizer()
    model.target_backbone()
    model.target_lm()
    name = str(cfg.nla or cfg.av or cfg.ar or DEFAULT_NLA)
    app = create_app(
        model, name=name, limits=Limits(max_waiting=cfg.max_waiting), allowed_hosts=allowed_hosts_for(host)
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"nla serve: {name} ({model.target}, layer {model.layer}) on http://{shown}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
