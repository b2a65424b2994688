"""Query a distil-platform student: the task's prompt, the request and the answer's parsing, exactly
as the platform's evaluation does them.

This file is shipped in every student bundle as ``client.py`` and reads the task's prompt pieces from
``task.json`` beside it. It uses the Python standard library only: it imports nothing from
``distil_platform`` (nor ``openai``), so it runs wherever the bundle is copied.

Command line (the server started with the bundle's ``serve.sh``)::

    python client.py "How many orders were placed in May?" --context "$(cat schema.sql)"
    python client.py --jsonl rows.jsonl > answers.jsonl   # rows: {"id", "question", "context"}

From Python::

    from client import Student
    student = Student("http://127.0.0.1:8000/v1")
    answer = student.ask("How many orders were placed in May?", context=schema)
    answer.text, answer.value   # the reply, and what it means (label / tool call / SQL / text)

The answer rules per task type (``parse_answer``), the platform's own:

- ``classification``: the reply's label, normalised (first code fence; first ``<answer>`` tag; the
  string under ``label``/``class``/``category``/``intent``/``answer``/``prediction`` of a JSON
  object; surrounding whitespace, quotes, backticks and trailing periods stripped; case-folded;
  inner whitespace collapsed) and matched against the task's labels: the label, or None.
- ``tool_calling``: the first tool call in the reply as ``{"name": str, "parameters": dict}`` (a
  bare JSON object, a fenced block, JSON inside text, the OpenAI ``tool_calls`` / ``function``
  shapes, ``arguments`` as a JSON string), or None.
- ``text2sql``: the first SQL statement (a ```sql fence first; from the first line that starts with
  a statement keyword, upper case preferred; up to the first top-level ``;``; trailing paragraphs
  of prose dropped when the rest does not parse), or None. Whether a statement parses is asked of
  ``sqlglot`` when it is installed (what the platform uses), else of SQLite's own parser.
- ``open_book_qa`` and ``generation``: the reply as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_FILE = Path(__file__).resolve().with_name("task.json")
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def load_task(path: str | Path | None = None) -> dict[str, Any]:
    """The task's prompt pieces, answer rule and generation settings (``task.json``)."""
    return json.loads(Path(path or TASK_FILE).read_text(encoding="utf-8"))


# -- the prompt -------------------------------------------------------------------------------------
def _history(question: str) -> list[dict[str, Any]] | None:
    """A multi-turn question is a JSON-encoded chat history."""
    text = question.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def _flatten_message(message: dict[str, Any]) -> dict[str, str]:
    """A prior assistant tool call becomes the same JSON the model is asked to emit."""
    content = message.get("content") or ""
    if message.get("role") == "assistant" and message.get("tool_calls"):
        call = message["tool_calls"][0].get("function", {})
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        content = json.dumps({"name": call.get("name"), "parameters": args}, separators=(", ", ": "))
    return {"role": str(message["role"]), "content": str(content)}


def render_user_prompt(task: dict[str, Any], question: str, context: str | None = "") -> str:
    return task["prompt_template"].format(question=question, context=context or "")


def render_messages(task: dict[str, Any], question: Any, context: str | None = "") -> list[dict[str, str]]:
    """The chat messages the student was trained and evaluated on: the task's system prompt, then the
    question in the task's template (tool-calling tasks: a JSON chat history is replayed, its last user
    turn templated)."""
    messages = [{"role": "system", "content": task["system_prompt"]}]
    history = _history(str(question)) if task["type"] == "tool_calling" else None
    if history:
        flat = [_flatten_message(m) for m in history]
        last = flat[-1]
        if last["role"] == "user":
            last["content"] = render_user_prompt(task, last["content"], context)
        messages.extend(flat)
    else:
        messages.append({"role": "user", "content": render_user_prompt(task, str(question), context)})
    return messages


# -- text helpers -----------------------------------------------------------------------------------
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_WS_RE = re.compile(r"\s+")


def as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every Markdown code fence; an unclosed fence runs to the end."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]


# -- classification ---------------------------------------------------------------------------------
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_LABEL_KEYS = ("label", "class", "category", "intent", "answer", "prediction")
_QUOTES = "\"'`"


def _unwrap_json_label(text: str) -> str | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    lowered = {str(k).lower(): v for k, v in value.items()}
    for key in _LABEL_KEYS:
        if isinstance(lowered.get(key), str):
            return lowered[key]
    return None


def normalize_label(text: object) -> str:
    """The canonical form of a label (the module docstring's classification rule)."""
    text = as_text(text)
    blocks = fenced_blocks(text)
    text = (blocks[0][1] if blocks else text).strip()
    tag = _ANSWER_TAG_RE.search(text)
    if tag:
        text = tag.group(1).strip()
    unwrapped = _unwrap_json_label(text)
    if unwrapped is not None:
        text = unwrapped
    while True:
        before = text
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
            text = text[1:-1]
        text = text.rstrip(".")
        if text == before:
            break
    return _WS_RE.sub(" ", text.casefold()).strip()


def parse_label(text: object, labels: list[str]) -> str | None:
    """The task label the reply names, or None when it names none."""
    wanted = normalize_label(text)
    return next((label for label in labels if normalize_label(label) == wanted), None)


# -- tool calls -------------------------------------------------------------------------------------
_MAX_SCAN_CHARS = 20_000
_MAX_SCAN_STARTS = 200
_JSON_START_RE = re.compile(r"[\{\[]")
_DECODER = json.JSONDecoder()


def _as_call(value: Any) -> dict[str, Any] | None:
    if isinstance(value, list):
        return _as_call(value[0]) if value else None
    if not isinstance(value, dict):
        return None
    if "tool_calls" in value:
        return _as_call(value["tool_calls"])
    for wrapper in ("function", "function_call"):
        if isinstance(value.get(wrapper), dict):
            return _as_call(value[wrapper])
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = value["parameters"] if "parameters" in value else value.get("arguments", {})
    if isinstance(args, str):
        if not args.strip():
            args = {}
        else:
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return {"name": name, "parameters": args}


def _json_values(text: str):
    for candidate in [text] + [body.strip() for _, body in fenced_blocks(text)]:
        try:
            yield json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            pass
    scan = text[:_MAX_SCAN_CHARS]
    position, starts = 0, 0
    while starts < _MAX_SCAN_STARTS:
        match = _JSON_START_RE.search(scan, position)
        if not match:
            return
        starts += 1
        try:
            value, end = _DECODER.raw_decode(scan, match.start())
        except (json.JSONDecodeError, RecursionError):
            position = match.start() + 1
            continue
        yield value
        position = end


def parse_tool_call(text: Any) -> dict[str, Any] | None:
    """The first tool call in the reply as ``{"name", "parameters"}``, or None."""
    if isinstance(text, (dict, list)):
        return _as_call(text)
    text = as_text(text).strip()
    if not text:
        return None
    for value in _json_values(text):
        call = _as_call(value)
        if call is not None:
            return call
    return None


# -- SQL --------------------------------------------------------------------------------------------
_STATEMENT_KEYWORDS = (
    "SELECT|WITH|VALUES|INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|PRAGMA|ATTACH|DETACH|REPLACE|"
    "EXPLAIN|VACUUM|REINDEX|ANALYZE|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE"
)
_LINE_START_UPPER = re.compile(rf"^[ \t]*\(*[ \t]*(?:{_STATEMENT_KEYWORDS})\b", re.MULTILINE)
_LINE_START_ANY = re.compile(rf"^[ \t]*\(*[ \t]*(?:{_STATEMENT_KEYWORDS})\b", re.MULTILINE | re.IGNORECASE)
_ANYWHERE_UPPER = re.compile(r"\b(?:SELECT|WITH)\b")
_ANYWHERE_ANY = re.compile(r"\bselect\b", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SQL_FENCE_LANGS = {"sql", "sqlite", "postgresql", "mysql", ""}
_SQLITE_SYNTAX = ("syntax error", "incomplete input", "unrecognized token")
# Set to False to check SQL with SQLite's parser even where sqlglot is installed.
USE_SQLGLOT = True


def _first_statement(sql: str) -> str:
    """``sql`` up to its first top-level semicolon, skipping quoted text and comments."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif ch == ";":
            return sql[:i]
        else:
            i += 1
    return sql


def sql_parses(sql: str) -> bool:
    """Whether ``sql`` is one statement that parses (sqlglot's SQLite dialect where installed)."""
    if USE_SQLGLOT:
        try:
            import sqlglot
        except ImportError:
            pass
        else:
            try:
                return sqlglot.parse_one(sql, read="sqlite") is not None
            except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
                return False
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("EXPLAIN " + sql)  # compiled, never run, on an empty in-memory database
    except sqlite3.Error as exc:  # unknown tables and columns are no syntax errors
        return not any(marker in str(exc) for marker in _SQLITE_SYNTAX)
    finally:
        connection.close()
    return True


def extract_sql(text: Any) -> str | None:
    """The first SQL statement in the reply, without fences, prose or the semicolon; None if none."""
    text = as_text(text)
    if not text.strip():
        return None
    blocks = fenced_blocks(text)
    if blocks:
        sql_blocks = [body for lang, body in blocks if lang in _SQL_FENCE_LANGS and body.strip()]
        text = sql_blocks[0] if sql_blocks else blocks[0][1]
    start = None
    for pattern in (_LINE_START_UPPER, _LINE_START_ANY, _ANYWHERE_UPPER, _ANYWHERE_ANY):
        match = pattern.search(text)
        if match:
            start = match.start()
            break
    if start is None:
        return None
    sql = _first_statement(text[start:]).strip()
    if sql and not sql_parses(sql):
        cuts = [m.start() for m in _BLANK_LINE.finditer(sql)]
        for cut in reversed(cuts):
            if sql_parses(sql[:cut]):
                sql = sql[:cut].strip()
                break
    sql = sql.strip().rstrip("`").strip()
    return sql or None


# -- the answer -------------------------------------------------------------------------------------
def parse_answer(task: dict[str, Any], text: Any) -> Any:
    """What the reply means under the task's answer rule (module docstring)."""
    rule = task["answer_rule"]
    if rule == "label":
        return parse_label(text, task["labels"])
    if rule == "tool_call":
        return parse_tool_call(text)
    if rule == "sql":
        return extract_sql(text)
    if rule == "text":
        return text
    raise ValueError(f"unknown answer rule {rule!r} in task.json")


@dataclass
class Answer:
    text: str | None  # the reply as the server sent it
    value: Any  # what it means: label / tool call / SQL / text (None: nothing the task accepts)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class Student:
    """The served student, over its OpenAI-compatible chat-completions endpoint."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, task: dict[str, Any] | None = None,
                 model: str | None = None, api_key: str | None = None, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.task = task or load_task()
        self.model = model or self.task["served_name"]
        self.api_key = api_key
        self.timeout_s = timeout_s

    def messages(self, question: Any, context: str | None = "") -> list[dict[str, str]]:
        return render_messages(self.task, question, context)

    def complete(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """One chat completion with the task's generation settings (greedy, the eval's max tokens)."""
        body = {"model": self.model, "messages": messages, **self.task["generation"]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"HTTP {exc.code} from {self.base_url}: {exc.read()[-500:].decode('utf-8', 'replace')}") from exc

    def ask(self, question: Any, context: str | None = "") -> Answer:
        data = self.complete(self.messages(question, context))
        choice = data["choices"][0]
        text = choice["message"].get("content")
        return Answer(text=text, value=parse_answer(self.task, text), finish_reason=choice.get("finish_reason"),
                      usage=data.get("usage") or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ask the served student (see the bundle's README.md).")
    parser.add_argument("question", nargs="?", help="the question (tool-calling tasks: text or a JSON chat history)")
    parser.add_argument("--context", default="", help="the row's context (text2sql: the schema DDL)")
    parser.add_argument("--jsonl", help="answer every row of this JSON-lines file ({id, question, context})")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"the server's /v1 URL ({DEFAULT_BASE_URL})")
    parser.add_argument("--model", help="served model name (default: task.json's served_name)")
    parser.add_argument("--task-file", help="task.json to use (default: the one beside this file)")
    parser.add_argument("--messages", action="store_true", help="print the rendered messages; send nothing")
    args = parser.parse_args(argv)
    student = Student(args.base_url, task=load_task(args.task_file), model=args.model)
    if args.jsonl:
        with open(args.jsonl, encoding="utf-8") as rows:
            for line in rows:
                if not line.strip():
                    continue
                row = json.loads(line)
                answer = student.ask(row["question"], row.get("context"))
                print(json.dumps({"id": row.get("id"), "prediction": answer.text, "value": answer.value,
                                  "finish_reason": answer.finish_reason}, ensure_ascii=False), flush=True)
        return 0
    if args.question is None:
        parser.error("give a question or --jsonl")
    if args.messages:
        print(json.dumps(student.messages(args.question, args.context), indent=1, ensure_ascii=False))
        return 0
    answer = student.ask(args.question, args.context)
    print(json.dumps({"prediction": answer.text, "value": answer.value, "finish_reason": answer.finish_reason},
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
