"""A loopback OpenAI-compatible chat server for fault-injection tests (docs/reliability.md).

Faults are injected from outside the platform, as they happen in life: the server answers 429 or
503 for a share of calls during a time window (a storm), answers slowly, or counts every call per
prompt so a test can prove a rerun did not ask again. The platform's own code is never patched.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class FakeOpenAI:
    """``/v1/chat/completions`` answering ``"answer: <prompt>"`` with usage.

    storm(share, seconds, statuses): for the next ``seconds``, each call fails with probability
    ``share`` (status drawn from ``statuses``, with ``Retry-After: 0.05``); after it, every call
    succeeds. ``delay_s``: seconds before each answer. ``calls``: prompt -> number of calls seen. ``respond``:
    request body -> the answer's text (default ``"answer: <prompt>"``).
    """

    def __init__(self, delay_s: float = 0.0, seed: int = 0, respond=None):
        self.delay_s = delay_s
        self.respond = respond or (lambda body: f"answer: {body['messages'][-1]['content']}")
        self.calls: dict[str, int] = {}
        self.answered_at: dict[str, float] = {}  # prompt -> time.monotonic() its answer was sent
        self.failures = 0
        self.answered = 0
        self._storm_until = 0.0
        self._storm_share = 0.0
        self._storm_statuses: tuple[int, ...] = (429, 503)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with fake._lock:
                    fake.calls[prompt] = fake.calls.get(prompt, 0) + 1
                    fail = time.monotonic() < fake._storm_until and fake._rng.random() < fake._storm_share
                    status = fake._rng.choice(fake._storm_statuses) if fail else 200
                    if fail:
                        fake.failures += 1
                if fail:
                    return self._send(status, {"error": {"message": "overloaded"}}, {"Retry-After": "0.05"})
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                sent = self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": fake.respond(body)}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                })
                if sent:
                    with fake._lock:
                        fake.answered += 1
                        fake.answered_at[prompt] = time.monotonic()

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return False
                return True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def storm(self, share: float, seconds: float, statuses: tuple[int, ...] = (429, 503)) -> None:
        with self._lock:
            self._storm_share, self._storm_statuses = share, statuses
            self._storm_until = time.monotonic() + seconds

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
