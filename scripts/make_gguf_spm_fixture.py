#!/usr/bin/env python3
"""Write fixtures/gguf/tiny-spm-llama-q8_0.gguf: a tiny llama model whose tokenizer is a
SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`), as llama.cpp's convert_hf_to_gguf.py
writes Llama-2 / Mistral-7B-v0.1 / TinyLlama checkpoints, and add its entry to
fixtures/gguf/manifest.json (run it after scripts/make_gguf_fixtures.sh, which rewrites the
manifest with its own files only).

1. Trains a SentencePiece BPE model (pinned sentencepiece, scripts/requirements-gguf-spm.txt) on
   the text below, with Llama 2's trainer settings: byte_fallback, split_digits, add_dummy_prefix,
   identity normalization, extra whitespace kept, whitespace-only pieces allowed, unk/bos/eos =
   0/1/2, no pad; vocab 600 = 3 specials + 256 byte pieces <0x00>..<0xFF> + 341 learned pieces
   and characters. One thread, fixed input order: deterministic. The .model only lives in a
   temp dir, next to a Llama-2-style HF tokenizer_config.json (add_bos_token true,
   add_eos_token false, no add_prefix_space, the TinyLlama-1.1B-Chat chat template),
   tokenizer.json `added_tokens` (<unk>, <s>, </s>) and config.json.
2. Converts like `convert_hf_to_gguf.py --outtype q8_0`: the model part (metadata, llama Q/K
   permutation, tensor names/order/types) is make_gguf_fixtures.py's transcription; the vocab is
   TextModel._set_vocab_sentencepiece / _create_vocab_sentencepiece (LlamaModel.set_vocab tries
   it first): tokenizer.ggml.{model="llama", pre="default", tokens, scores (f32), token_type
   (NORMAL 1, UNKNOWN 2, CONTROL 3, BYTE 6)}, then gguf.SpecialVocab(n_vocab): bos 1, eos 2,
   unknown 0, add_bos_token true, add_eos_token false, chat_template. No
   tokenizer.ggml.add_space_prefix: LlamaModel.set_vocab writes it only when tokenizer_config.json
   has add_prefix_space, which Llama-2's does not (llama.cpp then defaults to true for SPM).

Weights: seeded random (make_gguf_fixtures.random_hf_checkpoint), hidden 256, 4 heads x 64
(2 KV heads), intermediate 384, 2 layers, rope_theta 10000, no rope scaling, untied lm_head.

Usage: .venv-gguf/bin/python scripts/make_gguf_spm_fixture.py [--out DIR]
(needs .venv-gguf plus `pip install -r scripts/requirements-gguf-spm.txt`).
Deterministic: two runs give identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).parent))
import make_gguf_fixtures as fx  # noqa: E402

import gguf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILE = "tiny-spm-llama-q8_0.gguf"
VOCAB_SIZE = 600

# Training text (one sentence per line; SentencePiece never sees a newline inside a piece).
# English prose, accented Latin, a little CJK / Cyrillic / Greek, emoji, digits, code with
# indentation and runs of spaces. Not in it (byte fallback): e.g. U+A66E "ꙮ", "🦀", Arabic,
# Korean.
TEXT = """\
The cat sat on the mat, and the dog sat on the log.
Once upon a time, there was a little robot who loved to read books about the sea.
The robot read every book in the library, from the first shelf to the last.
When the sun went down, the robot walked to the harbour and watched the boats.
She said that the weather would be better tomorrow, but nobody believed her.
They were walking along the river when they saw a small boat drifting by.
It is not what you say, it is how you say it that matters most of the time.
I'm sure they'll say it's fine, but we've seen what happens when you don't check.
Hello, world! Hello again, world. Goodbye, world?
The quick brown fox jumps over the lazy dog; the lazy dog does not care.
A journey of a thousand miles begins with a single step.
All that glitters is not gold, and not all those who wander are lost.
Numbers: 1234567 and 3.14159, 42% of 100 is 42, and 2024 comes after 2023.
Call 555-0199 before 10:30 on 12/05, or send 250 dollars to account 8675309.
The year 1969 saw the first landing on the moon; 384400 km is the distance.
Temperatures ranged from -5 to 38 degrees, with 70% humidity in July.
Café, naïve, façade, résumé, crème brûlée and jalapeño are borrowed words.
Ünïcödé façade São Paulo Ångström Zürich Kraków Málaga Reykjavík.
Les enfants jouent dans le jardin pendant que leurs parents préparent le dîner.
Der schnelle braune Fuchs springt über den faulen Hund, sagte der Lehrer in der Straße.
El niño comió una manzana y después salió a jugar con sus amigos en la plaza.
A menina está lendo um livro na varanda enquanto chove lá fora.
Ça va très bien, merci beaucoup, et vous? Où est la gare, s'il vous plaît?
Jag älskar att läsa böcker på söndagar när det regnar ute.
Привет, мир! Как дела? Всё хорошо, спасибо.
Καλημέρα κόσμε, τι κάνεις σήμερα;
日本語のテキストです。東京は日本の首都です。
中文测试。我们今天去公园散步。
今日はいい天気ですね。
I love pizza 🍕 and coffee ☕ in the morning 🙂 and tea in the evening 😀.
Great job 👍 see you soon 🙂 thanks ❤️ happy birthday 🎉
Prices: 5 € for bread, 3 £ for milk, 10 $ for cheese, 100 ¥ for rice.
def square(x):
    return x ** 2  # square the number
for i in range(10):
    if i % 2 == 0:
        print(i, "is even")
    else:
        print(i, "is odd")
class Node:
    def __init__(self, value, next=None):
        self.value = value
        self.next = next
if (a && b) { printf("%d\\n", a[0]); return 0; }
int main(int argc, char **argv) { return argc > 1 ? atoi(argv[1]) : 0; }
let x = vec![1, 2, 3]; let y: Vec<i32> = x.iter().map(|v| v * 2).collect();
fn main() { println!("hello world"); }
SELECT name, count(*) FROM users WHERE age > 30 GROUP BY name ORDER BY name;
<html><body><p>Hello</p></body></html>
https://example.com/path/to/page?query=value&other=1
user@example.com wrote: please see the attached file report_2024.pdf
hello   world		end
  leading spaces and	tabs
    four spaces of indentation, then text
        eight spaces of indentation, then more text
The end. The end. The end.
The meeting is scheduled for Monday morning at nine o'clock in the main room.
Please remember to bring your notebook, a pen, and the report from last week.
The scientists measured the temperature of the water every hour for three days.
Children learn languages quickly when they hear them spoken every day at home.
The old lighthouse keeper climbed the stairs each night to light the great lamp.
Trains leave the central station every fifteen minutes during the rush hour.
We should plant more trees in the city to keep the streets cool in summer.
The committee will announce the results of the competition next Friday.
My grandmother used to tell stories about the village where she grew up.
The library is open from eight in the morning until ten in the evening.
After the storm, the villagers gathered on the beach to repair their nets.
Reading is to the mind what exercise is to the body.
Knowledge speaks, but wisdom listens.
"""

# Llama-2 style tokenizer files (what the converter reads besides tokenizer.model).
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "chat_template": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"
    ),
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "legacy": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
}

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 256,
    "initializer_range": 0.02, "intermediate_size": 384, "max_position_embeddings": 512,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
    "use_cache": True, "vocab_size": VOCAB_SIZE,
}


def train_sentencepiece() -> bytes:
    """The serialized ModelProto (trainer settings as in Llama 2's tokenizer.model)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_writer=out,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=0.99995,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_number=True,
        split_by_whitespace=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        max_sentencepiece_length=16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def create_vocab_sentencepiece(model_file: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """TextModel._create_vocab_sentencepiece (no added_tokens.json, no added_tokens_decoder)."""
    tokenizer = spm.SentencePieceProcessor()
    tokenizer.LoadFromFile(str(model_file))
    tokens = [f"[PAD{i}]".encode("utf-8") for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    toktypes = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token_id in range(tokenizer.vocab_size()):
        assert token_id < vocab_size
        toktype = gguf.TokenType.NORMAL
        if tokenizer.IsUnknown(token_id):
            toktype = gguf.TokenType.UNKNOWN
        elif tokenizer.IsControl(token_id):
            toktype = gguf.TokenType.CONTROL
        elif tokenizer.IsUnused(token_id):
            toktype = gguf.TokenType.UNUSED
        elif tokenizer.IsByte(token_id):
            toktype = gguf.TokenType.BYTE
        tokens[token_id] = tokenizer.IdToPiece(token_id).encode("utf-8")
        scores[token_id] = tokenizer.GetScore(token_id)
        toktypes[token_id] = int(toktype)
    return tokens, scores, toktypes


def set_vocab_sentencepiece(w: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """TextModel._set_vocab_sentencepiece."""
    tokens, scores, toktypes = create_vocab_sentencepiece(model_dir / "tokenizer.model", vocab_size)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    special_vocab.add_to_gguf(w, quiet=True)


def make_model_dir(tmp: Path) -> Path:
    d = tmp / "tiny-spm-llama"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(train_sentencepiece())
    (d / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in enumerate(("<unk>", "<s>", "</s>"))]
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "added_tokens": added}, indent=2) + "\n")
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    return d


def convert(model_dir: Path) -> fx.Converted:
    """make_gguf_fixtures.convert_hf_to_gguf for everything but the vocab, which it writes as
    gpt2 (last in the KV list); that part is replaced by the SentencePiece path."""
    get_vocab_base = fx.get_vocab_base
    fx.get_vocab_base = lambda _d, n: ([f"[PAD{i}]" for i in range(n)], [1] * n)
    vocab_log = logging.getLogger("gguf.vocab")
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)  # (its gpt2 SpecialVocab finds no merges)
    try:
        conv = fx.convert_hf_to_gguf(model_dir, fx.random_hf_checkpoint(CONFIG, seed=20254), "q8_0")
    finally:
        fx.get_vocab_base = get_vocab_base
        vocab_log.setLevel(level)
    kv = conv.writer.kv_data[0]
    for k in [k for k in kv if k.startswith("tokenizer.")]:
        del kv[k]
    set_vocab_sentencepiece(conv.writer, model_dir, CONFIG["vocab_size"])
    return conv


def manifest_entry(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    ft = r.get_field(gguf.Keys.General.FILE_TYPE)
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
        "file_type": int(ft.contents()) if ft is not None else None,
        "kv_keys": [f.name for f in r.fields.values() if not f.name.startswith("GGUF.")],
        "tensors": {t.name: {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape]} for t in r.tensors},
    }


def self_check(path: Path, model_dir: Path) -> None:
    """The GGUF's vocab equals the trained model's; a few encodings for the log."""
    r = gguf.GGUFReader(path)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    toks = r.get_field("tokenizer.ggml.tokens").contents()
    assert toks == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    types = Counter(r.get_field("tokenizer.ggml.token_type").contents())
    assert types == {1: VOCAB_SIZE - 259, 2: 1, 3: 2, 6: 256}, types
    assert toks[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    for s in ("Hello, world!", "  double  spaces", "12345", "ꙮ🦀"):
        print(f"  sentencepiece {s!r}: {sp.EncodeAsIds(s)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures" / "gguf")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    with tempfile.TemporaryDirectory() as tmp:
        d = make_model_dir(Path(tmp))
        conv = convert(d)
        fx.write_writer(conv.writer, path)
        worst = max(fx.check_roundtrip(n, q, data, v) for n, q, data, v in conv.tensors)
        self_check(path, d)

    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[FILE] = manifest_entry(path)  # replaced in place, or appended
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    types = Counter(t["type"] for t in manifest[FILE]["tensors"].values())
    print(f"{FILE}  {path.stat().st_size} bytes  {', '.join(f'{k}:{v}' for k, v in sorted(types.items()))}  "
          f"(round-trip worst error / bound {worst:.3f}); manifest.json updated")


if __name__ == "__main__":
    sys.exit(main())
