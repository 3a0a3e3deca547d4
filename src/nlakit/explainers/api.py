"""Warm-start explainers that ask a chat API (OpenAI-compatible or Anthropic) to explain each context.

Both providers share one request loop (`_ChatExplainer`): bounded concurrency, retries with exponential
backoff and jitter, `Retry-After` on 429/503. Transient failures (429, 5xx, timeouts, dropped connections,
unreadable bodies) are retried and, if they outlast the retries, drop the row. Any other 4xx (bad key, unknown
model) stops the run with an NlakitError, as does a run where no request has succeeded at all (server down,
wrong base_url), so a misconfiguration never turns into a dataset of silently dropped rows.
"""

from __future__ import annotations

import abc
import http.client
import json
import os
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import NoReturn

from nlakit import __version__
from nlakit.errors import NlakitError
from nlakit.explainers.base import INSTRUCTION_PROMPT, Explainer

MAX_BACKOFF_S = 60.0
# Honour the server's Retry-After, but a huge or bogus value must not stall a run for hours.
MAX_RETRY_AFTER_S = 300.0
_EXCERPT_CHARS = 200


class _Transient(Exception):
    """A failure worth retrying; `stat` names the counter it bumps, `retry_after` is the server's hint (s)."""

    def __init__(self, stat: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.stat, self.retry_after = stat, retry_after


class _ChatExplainer(Explainer):
    """Shared request machinery; subclasses describe their API's URL, headers, request and reply shape."""

    official_host: str  # the vendor's own host, where an API key is mandatory
    # what a subclass fills in when the caller does not say
    default_model: str | None = None
    default_base_url: str
    default_key_env: str

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_tokens: int = 300,
        temperature: float = 1.0,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff: float = 1.0,
    ):
        super().__init__()
        model = model or self.default_model
        base_url, api_key_env = base_url or self.default_base_url, api_key_env or self.default_key_env
        if not model:
            raise NlakitError(f"{self.name} explainer needs a model name; pass model=...")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0 or max_tokens < 1:
            raise NlakitError(
                f"{self.name} explainer options out of range (concurrency>=1, max_retries>=0, "
                f"timeout>0, backoff>=0, max_tokens>=1); fix the values passed"
            )
        self.model, self.base_url = model, base_url.rstrip("/")
        self.api_key_env, self.max_tokens, self.temperature = api_key_env, max_tokens, temperature
        self.concurrency, self.max_retries = concurrency, max_retries
        self.timeout, self.backoff = timeout, backoff
        # Local OpenAI-compatible servers (llama.cpp, vLLM, Ollama) usually take no key: optional there.
        self._api_key = os.environ.get(api_key_env) or None
        if self._api_key is None and urllib.parse.urlparse(self.base_url).hostname == self.official_host:
            raise NlakitError(f"{self.name} explainer needs an API key: set the {api_key_env} environment variable")
        self._stop = threading.Event()
        # Set once any request succeeds; from then on, exhausted retries drop only that row.
        self._reached = False
        self._rng = random.Random()

    @abc.abstractmethod
    def _endpoint(self) -> str: ...

    @abc.abstractmethod
    def _headers(self) -> dict[str, str]: ...

    @abc.abstractmethod
    def _body(self, prompt: str) -> dict: ...

    @abc.abstractmethod
    def _reply(self, data: dict) -> tuple[str, bool]:
        """(text, refused) from a decoded response; a lookup error on the way means a malformed body."""

    def settings(self) -> dict:
        return {
            "provider": self.name,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "base_url": self.base_url,
            "instruction_prompt": INSTRUCTION_PROMPT,
        }

    def explain(self, contexts: list[str], progress: Callable[[int], None] | None = None) -> list[str | None]:
        results: list[str | None] = [None] * len(contexts)
        pending: dict[Future, int] = {}

        def collect() -> None:
            for future in wait(pending, return_when=FIRST_COMPLETED).done:
                results[pending.pop(future)] = future.result()
                if progress is not None:
                    progress(1)

        self._stop.clear()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"nlakit-{self.name}") as pool:
            try:
                for i, context in enumerate(contexts):
                    # A small window of queued rows keeps memory flat on large datasets and lets a fatal
                    # error stop the run before thousands of requests are queued behind it.
                    if len(pending) >= 2 * self.concurrency:
                        collect()
                    pending[pool.submit(self._explain_one, context)] = i
                while pending:
                    collect()
            except BaseException:
                # A fatal error (or Ctrl-C) ends the run: drop queued rows, stop in-flight ones retrying.
                self._stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return results

    def _explain_one(self, context: str) -> str | None:
        reply = self._send(INSTRUCTION_PROMPT.format(text=context))
        if reply is None:
            self._count("dropped_transient")
            return None
        text, refused = reply
        if refused:
            self._count("dropped_refusal")
            return None
        return self._finish(text)

    def _send(self, prompt: str) -> tuple[str, bool] | None:
        """POST one prompt, retrying transient failures; None once the retries are used up."""
        url = self._endpoint()
        payload = json.dumps(self._body(prompt)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"nlakit/{__version__}", **self._headers()}
        for attempt in range(self.max_retries + 1):
            try:
                request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
                reply = self._attempt(request)
                self._reached = True
                return reply
            except _Transient as err:
                self._count(err.stat)
                last = err
            if attempt == self.max_retries or self._stop.is_set():
                break
            self._count("retries")
            if self._stop.wait(self._delay(attempt, last.retry_after)):
                break
        if not self._reached and not self._stop.is_set():
            raise NlakitError(
                f"{self.name} explainer got no usable reply from {url} in {attempt + 1} "
                f"attempts (last: {last}); check that the server is up and base_url is right"
            )
        return None

    def _attempt(self, request: urllib.request.Request) -> tuple[str, bool]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            self._raise_for_status(err)
        except TimeoutError as err:
            raise _Transient("timeouts", f"timed out after {self.timeout:g} s") from err
        except urllib.error.URLError as err:  # connect failures arrive wrapped, timeouts included
            stat = "timeouts" if isinstance(err.reason, TimeoutError) else "connection_errors"
            raise _Transient(stat, f"connection failed: {err.reason}") from err
        except (OSError, http.client.HTTPException) as err:  # reset or cut-off response mid-read
            raise _Transient("connection_errors", f"connection failed: {err!r}") from err
        try:
            return self._reply(json.loads(raw))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise _Transient("bad_json", f"malformed response body: {_excerpt(raw)}") from err

    def _raise_for_status(self, err: urllib.error.HTTPError) -> NoReturn:
        with err:
            try:
                body = err.read()
            except (OSError, http.client.HTTPException):
                body = b""
        code = err.code
        if code == 429 or code == 408 or code >= 500:  # 408: the server gave up waiting, a timeout
            retry_after = _retry_after(err.headers.get("Retry-After")) if code in (429, 503) else None
            stat = "http_429" if code == 429 else "timeouts" if code == 408 else "http_5xx"
            raise _Transient(stat, f"HTTP {code}: {_excerpt(body)}", retry_after) from err
        raise NlakitError(
            f"{self.name} API returned HTTP {code} from {self._endpoint()}: {_excerpt(body)}; "
            f"check {self.api_key_env}, the model name and base_url"
        ) from err

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        # Exponential with jitter in [0.5, 1] of the step, so concurrent workers do not retry in lockstep.
        return min(self.backoff * 2**attempt, MAX_BACKOFF_S) * self._rng.uniform(0.5, 1.0)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is rare for these APIs and falls back to backoff."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())  # one line, whatever the server sent
    return (text[:_EXCERPT_CHARS] + "...") if len(text) > _EXCERPT_CHARS else text or "(empty body)"


class OpenAIExplainer(_ChatExplainer):
    """Chat Completions at `{base_url}/chat/completions`: api.openai.com or any OpenAI-compatible server."""

    name = "openai"
    official_host = "api.openai.com"
    default_base_url = "https://api.openai.com/v1"
    default_key_env = "OPENAI_API_KEY"

    def _endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _body(self, prompt: str) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _reply(self, data: dict) -> tuple[str, bool]:
        choice = data["choices"][0]
        message = choice["message"]
        # OpenAI reports a refusal in `message.refusal` (content null) or as a content-filter stop.
        if message.get("refusal") or choice.get("finish_reason") == "content_filter":
            return "", True
        content = message["content"]
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
        return content, False


class AnthropicExplainer(_ChatExplainer):
    """The Messages API at `{base_url}/v1/messages`."""

    name = "anthropic"
    official_host = "api.anthropic.com"
    api_version = "2023-06-01"
    default_model = "claude-haiku-4-5-20251001"
    default_base_url = "https://api.anthropic.com"
    default_key_env = "ANTHROPIC_API_KEY"

    def _endpoint(self) -> str:
        return f"{self.base_url}/v1/messages"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.api_version}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def _body(self, prompt: str) -> dict:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }

    def _reply(self, data: dict) -> tuple[str, bool]:
        if data.get("stop_reason") == "refusal":
            return "", True
        return "".join(block["text"] for block in data["content"] if block["type"] == "text"), False
