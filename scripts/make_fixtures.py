#!/usr/bin/env python3
"""Generate tiny random HF checkpoints + reference outputs for strata's tests.

Writes, under fixtures/models/ (relative to the repo root, or --out):
  tiny-llama/  LlamaForCausalLM, GQA, llama3 rope scaling, bf16, sharded safetensors
  tiny-qwen2/  Qwen2ForCausalLM, qkv biases, tied embeddings, f32 single file
  tiny-qwen3/  Qwen3ForCausalLM, head_dim != hidden/heads, q_norm/k_norm, f16 single file

Each dir gets config.json, generation_config.json, tokenizer.json,
tokenizer_config.json, the weights, and reference.safetensors + reference.json
(prefill logits, greedy ids and per-step decode logits computed in float32 by
HF transformers from the exact weights on disk).

The script is deterministic: running it twice yields byte-identical files.
Run it through scripts/make_fixtures.sh, which sets up the pinned venv.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

# Determinism knobs must be set before tokenizers / torch are imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# --------------------------------------------------------------------------
# Tokenizer training corpus (original text, embedded so the script is hermetic)
# --------------------------------------------------------------------------
CORPUS = """\
Once upon a time, in a small town by the sea, there lived a little robot named Pip.
Pip loved to read books about the ocean, the stars, and the people who sailed between them.
Every morning Pip walked to the harbor, counted the boats, and said hello to the fishermen.
"Good morning, Pip!" they would say. "What are you reading today?"
Pip would hold up a book and answer: "Today I am reading about whales. Did you know that
a blue whale's heart is as big as a small car?" The fishermen laughed and went back to work.

The quick brown fox jumps over the lazy dog. The lazy dog did not mind at all.
A language model predicts the next token given the previous tokens. It reads the prompt,
computes attention over every position, and then samples or picks the most likely token.
Greedy decoding always picks the token with the highest probability. Sampling draws a token
at random, shaped by the temperature, top-k, and top-p settings. A key-value cache stores the
keys and values of earlier positions so that each new token costs only one forward step.

In the winter the town was quiet. Snow covered the roofs and the boats stayed in the harbor.
Pip spent the long evenings in the library, where the old librarian, Mrs. Hall, kept a warm
fire burning. She told Pip stories about her grandmother, who had been the first woman in the
town to captain a ship. "She was brave," said Mrs. Hall, "and she was kind. Those two things
together are rarer than you think." Pip wrote that down in a small notebook.

Numbers matter too: 1, 2, 3, 10, 42, 100, 256, 512, 1024, 2048, 4096 and 3.14159.
The year 2024 came after 2023, and the meeting was at 10:30 on the 5th of June.
Prices rose by 12% while the budget stayed at $1,500 per month for the whole team.

def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

Some words from other languages appear in English text as well: café, naïve, résumé,
jalapeño, façade, über, smörgåsbord, and the Japanese word 日本 (Nihon) which means Japan.
Tokyo is the capital of 日本. Emoji like 🙂 and symbols like © and € are also common.

When spring came, Pip built a small boat of its own. It was not a fast boat, and it was not
a big boat, but it floated, and that was enough. Pip sailed it around the harbor while the
fishermen cheered. "Where will you go?" they asked. "Everywhere," said Pip, "one wave at a time."
The end.
"""

# Regexes used by the real Qwen2 and Llama 3 tokenizers (they differ only in \\p{N}{1,3}).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BPE_VOCAB_SIZE = 448  # before special tokens

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Prompts: raw text prompts are tokenized with the tokenizer's default special-token
# handling (BOS prepended for llama); the chat prompt is rendered with the chat template
# and tokenized with add_special_tokens=False (the template already contains BOS for llama).
RAW_PROMPTS = [
    "The cat sat",
    "Once upon a time, there was a little robot who loved to read books about the sea.",
    "café naïve 日本 — über straße",
]
CHAT_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me a story about a robot."},
]

TOKENIZER_CHECK_TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nnewlines\n\n",
    "Numbers: 1234567 and 3.14159, 42%",
    "café naïve 日本 🙂 €",
    "<|im_start|>user\nhi<|im_end|>",
    "<|begin_of_text|>text<|eot_id|>",
    "I'm sure they'll say it's DON'T",
]

NUM_NEW_TOKENS = 12
LINEAR_STD = 0.1
LM_HEAD_STD = 0.5
SEED = 1234


def build_tokenizer(family: str) -> Tokenizer:
    split = QWEN_SPLIT if family == "qwen" else LLAMA_SPLIT
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if family == "qwen":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = CORPUS.splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    specials = QWEN_SPECIALS if family == "qwen" else LLAMA_SPECIALS
    tok.add_special_tokens(
        [AddedToken(s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True) for s in specials]
    )
    if family == "qwen":
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    else:
        bos = "<|begin_of_text|>"
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
                processors.TemplateProcessing(
                    single=f"{bos}:0 $A:0",
                    pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                    special_tokens=[(bos, bos_id)],
                ),
            ]
        )
    return tok


def tokenizer_config(family: str, tok: Tokenizer) -> dict:
    specials = QWEN_SPECIALS if family == "qwen" else LLAMA_SPECIALS
    added = {}
    for s in specials:
        added[str(tok.token_to_id(s))] = {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    if family == "qwen":
        return {
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": QWEN_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 512,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        }
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "chat_template": LLAMA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


@torch.no_grad()
def rerandomize(model: torch.nn.Module, seed: int) -> None:
    """Replace HF's init (std 0.02, zero biases, unit norms) with a peakier one.

    Parameters are visited in sorted-name order from one seeded generator, so the
    result does not depend on module registration order.
    """
    g = torch.Generator().manual_seed(seed)
    tied = bool(model.config.tie_word_embeddings)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name == "model.norm.weight" and tied:
            # Tied embeddings: the unembedding has the embedding's small scale, so put the
            # logit scale into the final norm instead (same effect as a larger lm_head std).
            p.copy_(LM_HEAD_STD / LINEAR_STD * (1.0 + 0.1 * noise))
        elif name.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, norm, q_norm, k_norm
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith(".bias"):
            p.copy_(0.1 * noise)
        elif name == "lm_head.weight":
            # Larger unembedding scale => logits std ~4, so top-1/top-2 margins sit far
            # above float32 noise and greedy comparisons are stable.
            p.copy_(LM_HEAD_STD * noise)
        else:  # embedding + linear weights
            p.copy_(LINEAR_STD * noise)


def family_of(kind: str) -> str:
    return "llama" if kind == "llama" else "qwen"


def make_config(kind: str, vocab: int, ids: dict):
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        hidden_act="silu",
        initializer_range=0.02,
        use_cache=True,
        attention_dropout=0.0,
    )
    if kind == "llama":
        return LlamaConfig(
            **common,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=ids["<|eot_id|>"],
            pretraining_tp=1,
            torch_dtype=torch.bfloat16,
        )
    if kind == "qwen2":
        return Qwen2Config(
            **common,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            torch_dtype=torch.float32,
        )
    if kind == "qwen3":
        return Qwen3Config(
            **common,
            head_dim=32,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            attention_bias=False,
            tie_word_embeddings=False,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            torch_dtype=torch.float16,
        )
    raise ValueError(kind)


MODEL_CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}
DTYPES = {"llama": torch.bfloat16, "qwen2": torch.float32, "qwen3": torch.float16}
DIRNAMES = {"llama": "tiny-llama", "qwen2": "tiny-qwen2", "qwen3": "tiny-qwen3"}
SEEDS = {"llama": SEED + 1, "qwen2": SEED + 2, "qwen3": SEED + 3}


def fix_config_json(path: Path, dtype: torch.dtype) -> None:
    """Normalise config.json to the classic on-hub layout (torch_dtype key, sorted keys)."""
    cfg = json.loads(path.read_text())
    dname = str(dtype).replace("torch.", "")
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = dname
    write_json(path, dict(sorted(cfg.items())))


@torch.no_grad()
def reference(model, tok_hf, prompts):
    tensors = {}
    cases = []
    for i, (text, add_special, messages) in enumerate(prompts):
        ids = tok_hf(text, add_special_tokens=add_special)["input_ids"]
        # Cross-check against the raw `tokenizers` library (what strata mirrors).
        raw = tok_hf.backend_tokenizer.encode(text, add_special_tokens=add_special).ids
        assert raw == ids, (raw, ids)
        x = torch.tensor([ids], dtype=torch.long)
        prefill = model(x, use_cache=False).logits[0].float()
        out = model(x, use_cache=True)
        past = out.past_key_values
        last = out.logits[0, -1].float()
        assert torch.allclose(last, prefill[-1], atol=1e-5, rtol=1e-5)
        greedy, rows, margins = [], [], []
        for _ in range(NUM_NEW_TOKENS):
            rows.append(last.clone())
            top2 = torch.topk(last, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(last))
            greedy.append(nxt)
            out = model(torch.tensor([[nxt]], dtype=torch.long), past_key_values=past, use_cache=True)
            past = out.past_key_values
            last = out.logits[0, -1].float()
        # Sanity: a full no-cache forward over prompt+generated reproduces the decode rows.
        full = model(torch.tensor([ids + greedy[:-1]], dtype=torch.long), use_cache=False).logits[0].float()
        max_cache_diff = float((full[len(ids) - 1 :] - torch.stack(rows)).abs().max())
        assert max_cache_diff < 1e-4, max_cache_diff
        tensors[f"case{i}.prompt_ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"case{i}.prefill_logits"] = prefill.contiguous()
        tensors[f"case{i}.greedy_ids"] = torch.tensor(greedy, dtype=torch.int64)
        tensors[f"case{i}.decode_logits"] = torch.stack(rows).contiguous()
        case = {
            "prompt": text,
            "num_prompt_tokens": len(ids),
            "add_special_tokens": add_special,
            "prompt_ids": ids,
            "greedy_ids": greedy,
            "greedy_text": tok_hf.decode(greedy, skip_special_tokens=False),
            "min_top1_top2_logit_margin": round(min(margins), 6),
        }
        if messages is not None:
            case["chat_messages"] = messages
            case["add_generation_prompt"] = True
        cases.append(case)
    return tensors, cases


def make_model(kind: str, root: Path, tok: Tokenizer) -> None:
    fam = family_of(kind)
    out = root / DIRNAMES[kind]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ids = {t: tok.token_to_id(t) for t in (QWEN_SPECIALS if fam == "qwen" else LLAMA_SPECIALS)}
    vocab = tok.get_vocab_size(with_added_tokens=True)

    # --- tokenizer files ---
    tok.save(str(out / "tokenizer.json"), pretty=True)
    write_json(out / "tokenizer_config.json", tokenizer_config(fam, tok))

    # --- model ---
    cfg = make_config(kind, vocab, ids)
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEEDS[kind])
    model = MODEL_CLASSES[kind](cfg).eval()
    rerandomize(model, SEEDS[kind])
    dtype = DTYPES[kind]
    model = model.to(dtype)
    shard = "100KB" if kind == "llama" else "100MB"
    model.save_pretrained(out, safe_serialization=True, max_shard_size=shard)
    fix_config_json(out / "config.json", dtype)

    # generation_config.json (written by hand: deterministic, classic layout)
    if kind == "llama":
        gen = {"bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]]}
    elif kind == "qwen2":
        gen = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
               "pad_token_id": ids["<|endoftext|>"]}
    else:
        gen = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
               "pad_token_id": ids["<|endoftext|>"]}
    gen.update({"do_sample": False, "transformers_version": transformers.__version__})
    write_json(out / "generation_config.json", gen)

    # --- reference, from the weights exactly as stored on disk ---
    loaded = MODEL_CLASSES[kind].from_pretrained(out, torch_dtype=dtype, attn_implementation="eager")
    loaded = loaded.float().eval()
    # Check the reload is bit-identical to what we saved.
    sd_saved = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd_saved[k].float()), k
    tok_hf = PreTrainedTokenizerFast.from_pretrained(out)
    prompts = [(p, True, None) for p in RAW_PROMPTS]
    chat_text = tok_hf.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    prompts.append((chat_text, False, CHAT_MESSAGES))
    tensors, cases = reference(loaded, tok_hf, prompts)
    save_file(tensors, str(out / "reference.safetensors"))

    tok_checks = []
    for t in TOKENIZER_CHECK_TEXTS:
        enc = tok_hf(t)["input_ids"]
        tok_checks.append({"text": t, "ids_with_special_tokens": enc,
                           "decoded": tok_hf.decode(enc, skip_special_tokens=False)})

    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "model_class": MODEL_CLASSES[kind].__name__,
        "dtype_on_disk": str(dtype).replace("torch.", ""),
        "reference_dtype": "float32",
        "vocab_size": vocab,
        "num_new_tokens": NUM_NEW_TOKENS,
        "cases": cases,
        "tokenizer_checks": tok_checks,
        "note": (
            "Computed by scripts/make_fixtures.py with HF transformers (attn_implementation=eager) in float32 "
            "after loading the on-disk weights and upcasting with .float(). Tensors in reference.safetensors: "
            "case{i}.prompt_ids int64[P], case{i}.prefill_logits f32[P,V] (one forward over the prompt), "
            "case{i}.greedy_ids int64[N] (argmax loop, EOS not honoured), case{i}.decode_logits f32[N,V] "
            "(row 0 = last prefill position, row j = logits after feeding greedy token j-1 with the KV cache). "
            "Chat case: prompt is the rendered chat template, tokenized with add_special_tokens=false."
        ),
    }
    write_json(out / "reference.json", meta)
    print(f"{out}: vocab={vocab} params={sum(p.numel() for p in model.parameters())} "
          f"cases={[c['num_prompt_tokens'] for c in cases]} "
          f"min_margin={min(c['min_top1_top2_logit_margin'] for c in cases):.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "fixtures" / "models"))
    ap.add_argument("--only", choices=sorted(MODEL_CLASSES), action="append")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    toks = {"llama": build_tokenizer("llama"), "qwen": build_tokenizer("qwen")}
    for kind in args.only or ["llama", "qwen2", "qwen3"]:
        make_model(kind, root, toks[family_of(kind)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
