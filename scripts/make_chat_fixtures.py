#!/usr/bin/env python3
"""Generate fixtures/chat_templates/: chat templates rendered by HF transformers.

For strata's byte-for-byte check of its chat template renderer against
transformers' `apply_chat_template(..., tokenize=False)`:

* `fixtures/chat_templates/<name>.json`, one per template in
  `fixtures/chat_templates/templates/<name>.jinja` (templates written for
  strata, modelled closely on the Llama 3.1, Qwen2.5, Qwen3, Mistral v0.3 and
  Gemma 3 templates, plus one that exercises Jinja features and Python
  behaviours): the template, the special tokens transformers passes to it,
  the content format vLLM detects for it, and cases. Each case holds a
  request's chat fields (OpenAI messages, tools, documents,
  add_generation_prompt, continue_final_message, chat_template_kwargs), the
  messages as the template sees them (vLLM's preparation, see
  `vllm_messages`), and transformers' output, or its error.
* `fixtures/chat_templates/dirs/<case>/`: tokenizer directories whose chat
  template lives in different places (`chat_template.jinja`, the config's
  string or list, `additional_chat_templates/*.jinja`), and `dirs.json`: which template
  transformers' `AutoTokenizer` uses for each, with and without tools, and
  its special tokens map.

`strftime_now` returns the current date: an output that holds the date the
template asked for has it replaced by `⟦strftime_now(FORMAT)⟧`, which the Rust
test replaces with strata's own `strftime_now(FORMAT)`, so the files do not
change from day to day and the date is still compared.

Deterministic: running it twice yields byte-identical files. Run it through
scripts/make_chat_fixtures.sh, which sets up the pinned venv (no torch).
"""

import copy
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jinja2  # noqa: E402
import jinja2.exceptions  # noqa: E402
import jinja2.nodes  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from transformers.utils import chat_template_utils  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "chat_templates"
TEMPLATES = OUT / "templates"

# ---------------------------------------------------------------------------
# vLLM's preparation of a request's messages (vllm/entrypoints/chat_utils.py:
# _parse_chat_message_content, _postprocess_messages; and the "auto" content
# format detection of vllm/renderers/hf.py), as strata implements it.

TEXT_FIELDS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "thinking": "thinking",
}


def tool_call_for_template(call):
    out = {}
    if "id" in call and call["id"] is not None:
        out["id"] = call["id"]
    out["type"] = call.get("type") or "function"
    args = call["function"].get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = {}
    elif not isinstance(args, (dict, list)):
        args = {}
    out["function"] = {"name": call["function"]["name"], "arguments": args}
    return out


def vllm_messages(messages, content_format):
    out = []
    for m in messages:
        role = m["role"]
        content = m.get("content")
        parts = [] if content is None else ([content] if isinstance(content, str) else content)
        texts = []
        for p in parts:
            if isinstance(p, str):
                texts.append(p)
                continue
            value = p.get(TEXT_FIELDS[p["type"]])
            if value is not None:
                texts.append(value)
        if content_format == "openai" and role != "tool":
            msg = {"role": role, "content": [{"type": "text", "text": t} for t in texts]}
        else:
            msg = {"role": role, "content": "\n".join(texts)}
        if role == "assistant":
            if m.get("tool_calls"):
                msg["tool_calls"] = [tool_call_for_template(c) for c in m["tool_calls"]]
            reasoning = m.get("reasoning")
            if reasoning is None:
                reasoning = m.get("reasoning_content")
            if reasoning is not None:
                msg["reasoning"] = reasoning
                msg["reasoning_content"] = reasoning
        if role == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        if role == "developer":
            msg["tools"] = None
        out.append(msg)
    return out


def _is_var_access(node, varname):
    return isinstance(node, jinja2.nodes.Name) and node.ctx == "load" and node.name == varname


def _is_attr_access(node, varname, key):
    if isinstance(node, jinja2.nodes.Getitem):
        return (
            _is_var_access(node.node, varname)
            and isinstance(node.arg, jinja2.nodes.Const)
            and node.arg.value == key
        )
    if isinstance(node, jinja2.nodes.Getattr):
        return _is_var_access(node.node, varname) and node.attr == key
    return False


def _is_var_or_elems_access(node, varname, key=None):
    if isinstance(node, jinja2.nodes.Filter):
        return node.node is not None and _is_var_or_elems_access(node.node, varname, key)
    if isinstance(node, jinja2.nodes.Test):
        return _is_var_or_elems_access(node.node, varname, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return _is_var_or_elems_access(node.node, varname, key)
    return _is_attr_access(node, varname, key) if key else _is_var_access(node, varname)


def detect_content_format(template):
    """vLLM's _detect_content_format (default "string")."""
    try:
        env = chat_template_utils._compile_jinja_template(template).environment
        root = env.parse(template)
        messages_vars = ["messages"]
        queue = ["messages"]
        while queue:
            related = queue.pop(0)
            for assign in root.find_all(jinja2.nodes.Assign):
                if _is_var_or_elems_access(assign.node, related):
                    assert isinstance(assign.target, jinja2.nodes.Name)
                    if assign.target.name not in messages_vars:
                        messages_vars.append(assign.target.name)
                        queue.append(assign.target.name)
        message_vars = []
        for loop in root.find_all(jinja2.nodes.For):
            if any(_is_var_or_elems_access(loop.iter, v) for v in messages_vars):
                assert isinstance(loop.target, jinja2.nodes.Name)
                message_vars.append(loop.target.name)
        for loop in root.find_all(jinja2.nodes.For):
            if any(_is_var_or_elems_access(loop.iter, v, "content") for v in message_vars):
                assert isinstance(loop.target, jinja2.nodes.Name)
                return "openai"
        return "string"
    except Exception:
        return "string"


# ---------------------------------------------------------------------------
# Inputs

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
                "days": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1.5e-7},
            },
            "required": ["location"],
        },
        "return": {"type": "object", "description": "temperature and sky"},
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Recherche d'informations — «web» 🔎, \"quoted\" \\ back\tslash",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "number", "default": 2.0}},
            "required": ["query", "limit"],
        },
    },
}
TOOLS = [WEATHER, SEARCH]

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
HELLO = {"role": "user", "content": "Hello, how are you?"}
FINE = {"role": "assistant", "content": "I'm fine, thanks! And you?"}
QUESTION = {"role": "user", "content": "  What's the weather like in Paris today?\n"}
PARTS = {
    "role": "user",
    "content": [
        {"type": "text", "text": "First part."},
        "A bare string part.",
        {"type": "input_text", "text": "Last part: ünïcödé ✓"},
    ],
}
CALL_ID = "call12345"
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": CALL_ID,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris, France", "unit": "celsius", "days": 2}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": CALL_ID, "name": "get_weather", "content": '{"temperature": 21.5, "sky": "clear"}'}
ANSWER = {"role": "assistant", "content": "It is 21.5 °C and clear in Paris."}
TWO_CALLS = {
    "role": "assistant",
    "content": "Let me check both.",
    "tool_calls": [
        {"id": "callAAAAA", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Rome", "unit": "fahrenheit"}}},
        {"id": "callBBBBB", "type": "function", "function": {"name": "search", "arguments": "not json {"}},
    ],
}
TWO_RESULTS = [
    {"role": "tool", "tool_call_id": "callAAAAA", "content": "75 F"},
    {"role": "tool", "tool_call_id": "callBBBBB", "content": [{"type": "text", "text": "no results"}, {"type": "text", "text": "try again"}]},
]
THINKING_ANSWER = {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello! All good."}
REASONED = {"role": "assistant", "content": "Paris is sunny.", "reasoning_content": "\nLook up the weather first.\n"}
PREFILL = {"role": "assistant", "content": "Sure, the answer is "}
PREFILL_TRIMMED = {"role": "assistant", "content": "Well   "}


def case(name, messages, **kw):
    return {"name": name, "request": {"messages": messages, **kw}}


COMMON = [
    case("single_user", [HELLO]),
    case("system_and_user", [SYSTEM, HELLO]),
    case("multi_turn", [SYSTEM, HELLO, FINE, QUESTION]),
    case("no_generation_prompt", [HELLO, FINE], add_generation_prompt=False),
    case("content_parts", [SYSTEM, PARTS]),
    case("continue_final_message", [HELLO, PREFILL], continue_final_message=True),
    case("continue_final_message_explicit_flag", [SYSTEM, HELLO, PREFILL], add_generation_prompt=False, continue_final_message=True),
    case("kwargs_unused_by_template", [HELLO], chat_template_kwargs={"enable_thinking": False, "extra": {"nested": [1, 2]}}),
]

CASES = {
    "llama31_tools": COMMON + [
        case("tools_in_user_message", [SYSTEM, QUESTION], tools=TOOLS),
        case("tools_in_system_message", [SYSTEM, QUESTION], tools=TOOLS, chat_template_kwargs={"tools_in_user_message": False}),
        case("tool_call_and_result", [SYSTEM, QUESTION, CALL, RESULT, ANSWER, HELLO], tools=[WEATHER]),
        case("tool_result_awaiting_answer", [QUESTION, CALL, RESULT], tools=[WEATHER]),
        case("fixed_date", [HELLO], chat_template_kwargs={"date_string": "01 Jan 2030"}),
        case("builtin_tools", [QUESTION, {"role": "assistant", "content": None, "tool_calls": [{"id": "x", "type": "function", "function": {"name": "brave_search", "arguments": '{"query": "Paris weather"}'}}]}, {"role": "ipython", "content": "sunny"}], chat_template_kwargs={"builtin_tools": ["brave_search", "code_interpreter"]}),
        case("two_tool_calls_raise", [QUESTION, TWO_CALLS], tools=TOOLS),
        case("tools_without_user_message_raise", [SYSTEM], tools=TOOLS),
    ],
    "qwen25_tools": COMMON + [
        case("tools_default_system", [QUESTION], tools=TOOLS),
        case("tools_with_system", [SYSTEM, QUESTION], tools=TOOLS),
        case("tool_calls_and_results", [SYSTEM, QUESTION, TWO_CALLS] + TWO_RESULTS + [ANSWER], tools=TOOLS),
        case("tool_call_no_content", [QUESTION, CALL, RESULT], tools=[WEATHER]),
        case("named_messages", [{"role": "user", "content": "Hi", "name": "alice"}, {"role": "assistant", "content": "Hello alice", "name": "bot"}]),
        case("late_system_message", [HELLO, FINE, {"role": "system", "content": "Be brief."}, QUESTION]),
    ],
    "qwen3_thinking": COMMON + [
        case("thinking_disabled", [SYSTEM, HELLO], chat_template_kwargs={"enable_thinking": False}),
        case("thinking_enabled", [SYSTEM, HELLO], chat_template_kwargs={"enable_thinking": True}),
        case("think_in_history_dropped", [HELLO, THINKING_ANSWER, QUESTION]),
        case("think_in_last_turn_kept", [HELLO, THINKING_ANSWER], add_generation_prompt=False),
        case("reasoning_content_after_query", [QUESTION, REASONED], add_generation_prompt=False),
        case("reasoning_field", [QUESTION, {"role": "assistant", "content": "Sunny.", "reasoning": "Check the sky."}], add_generation_prompt=False),
        case("tools_multi_step", [SYSTEM, QUESTION, TWO_CALLS] + TWO_RESULTS, tools=TOOLS),
        case("tools_then_answer_with_reasoning", [QUESTION, dict(CALL, reasoning_content="I need the weather."), RESULT, REASONED], tools=[WEATHER], add_generation_prompt=False),
        case("tool_response_looking_user_message", [HELLO, {"role": "user", "content": "<tool_response>fake</tool_response>"}]),
        case("continue_thinking_prefill", [HELLO, {"role": "assistant", "content": "<think>\nHmm"}], continue_final_message=True),
    ],
    "mistral_tools": COMMON + [
        case("tools_before_last_user", [SYSTEM, HELLO, FINE, QUESTION], tools=TOOLS),
        case("tool_call_and_result", [QUESTION, CALL, RESULT, ANSWER, HELLO], tools=[WEATHER]),
        case("two_tool_calls", [QUESTION, TWO_CALLS] + TWO_RESULTS, tools=TOOLS),
        case("roles_not_alternating_raise", [HELLO, HELLO]),
        case("assistant_first_raise", [FINE, HELLO]),
        case("bad_tool_call_id_raise", [QUESTION, dict(CALL, tool_calls=[dict(CALL["tool_calls"][0], id="short")])], tools=[WEATHER]),
        case("unknown_role_raise", [HELLO, {"role": "narrator", "content": "Meanwhile..."}]),
    ],
    "gemma3": COMMON + [
        case("system_folded_into_first_user", [SYSTEM, HELLO, FINE, QUESTION]),
        case("system_parts_folded", [{"role": "system", "content": [{"type": "text", "text": "Be nice."}]}, PARTS]),
        case("roles_not_alternating_raise", [SYSTEM, HELLO, HELLO]),
        case("continue_trimmed_prefill", [HELLO, PREFILL_TRIMMED], continue_final_message=True),
        case("empty_content", [{"role": "user", "content": None}]),
    ],
    "features": COMMON + [
        case("tools_and_documents", [SYSTEM, HELLO], tools=TOOLS, documents=[{"title": "first doc", "text": "Short."}, {"title": "second DOC", "text": "A much longer text that goes\non and on past forty characters."}]),
        case("tool_calls_rendered", [HELLO, TWO_CALLS] + TWO_RESULTS + [{"role": "assistant", "content": "<think>hidden</think>  Done.", "reasoning_content": "  reasons  "}], add_generation_prompt=False),
        case("loop_controls", [HELLO, {"role": "skip", "content": "never shown"}, FINE, {"role": "stop", "content": "stop here"}, QUESTION]),
        case("kwargs_values", [{"role": "user", "content": "Numbers 1, 2, 3?", "name": "bob"}], chat_template_kwargs={"mode": "fast", "custom": {"level": 3.0, "flags": [True, None]}, "bos_token": "<override>"}),
        case("developer_role", [{"role": "developer", "content": "Dev note."}, HELLO]),
        case("late_system_raise", [HELLO, SYSTEM]),
        case("no_user_raise", [SYSTEM, FINE]),
        case("continue_parts", [HELLO, {"role": "assistant", "content": [{"type": "text", "text": "Partial "}]}], continue_final_message=True),
        case("whitespace_content", [{"role": "user", "content": "\t Hello, world? \n\n second line\r\nthird "}]),
    ],
}

SPECIAL_TOKENS = {
    "llama31_tools": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen25_tools": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen3_thinking": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "mistral_tools": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "features": {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "additional_special_tokens": ["<|header|>", "<|tool|>"],
    },
}

# Longest first: the placeholders replace the values in this order.
STRFTIME_FORMATS = {"llama31_tools": ["%d %b %Y"], "features": ["%d %B %Y", "%A", "%-d %b"]}


def tiny_tokenizer(special_tokens):
    """A word-level tokenizer: apply_chat_template needs a tokenizer object,
    not a vocabulary worth the name."""
    vocab = {"[UNK]": 0}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def effective_inputs(request):
    """strata's (and vLLM's) request fields -> apply_chat_template arguments."""
    kwargs = dict(request.get("chat_template_kwargs") or {})
    cfm = kwargs.pop("continue_final_message", request.get("continue_final_message", False))
    agp = kwargs.pop("add_generation_prompt", request.get("add_generation_prompt", not cfm))
    documents = kwargs.pop("documents", request.get("documents"))
    return {
        "tools": request.get("tools"),
        "documents": documents,
        "add_generation_prompt": agp,
        "continue_final_message": cfm,
        "kwargs": kwargs,
    }


def render_case(tok, template, content_format, request, formats):
    inputs = effective_inputs(request)
    messages = vllm_messages(request["messages"], content_format)
    for _ in range(3):
        before = {f: datetime.now().strftime(f) for f in formats}
        try:
            out = {
                "output": tok.apply_chat_template(
                    copy.deepcopy(messages),
                    tools=copy.deepcopy(inputs["tools"]),
                    documents=copy.deepcopy(inputs["documents"]),
                    chat_template=template,
                    add_generation_prompt=inputs["add_generation_prompt"],
                    continue_final_message=inputs["continue_final_message"],
                    tokenize=False,
                    **copy.deepcopy(inputs["kwargs"]),
                )
            }
        except jinja2.exceptions.TemplateError as e:
            # raise_exception raises the base class; its subclasses are the
            # template's own failures (syntax, undefined, ...).
            kind = "raised" if type(e) is jinja2.exceptions.TemplateError else "template"
            out = {"error": {"kind": kind, "message": str(e)}}
        except ValueError as e:
            out = {"error": {"kind": "invalid", "message": str(e)}}
        after = {f: datetime.now().strftime(f) for f in formats}
        if before == after:
            break
    else:
        sys.exit("the date kept changing while rendering")
    if "output" in out:
        for f in formats:
            out["output"] = out["output"].replace(before[f], f"⟦strftime_now({f})⟧")
    return messages, out


def template_fixtures():
    for path in sorted(TEMPLATES.glob("*.jinja")):
        name = path.stem
        with open(path, encoding="utf-8") as f:
            template = f.read()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tiny_tokenizer(SPECIAL_TOKENS[name]), **SPECIAL_TOKENS[name]
        )
        special = {k: v for k, v in tok.special_tokens_map.items()}
        content_format = detect_content_format(template)
        formats = STRFTIME_FORMATS.get(name, [])
        cases = []
        for c in CASES[name]:
            messages, out = render_case(tok, template, content_format, c["request"], formats)
            cases.append({**c, "template_messages": messages, **out})
        doc = {
            "generated_by": "scripts/make_chat_fixtures.py",
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "template_file": f"templates/{path.name}",
            "template": template,
            "special_tokens": special,
            "content_format": content_format,
            "strftime_formats": formats,
            "cases": cases,
        }
        write_json(OUT / f"{name}.json", doc)
        errors = sum(1 for c in cases if "error" in c)
        print(f"{name}: {len(cases)} cases ({errors} errors), content format {content_format}")


# ---------------------------------------------------------------------------
# Where the template comes from: tokenizer directories

PROBE = "{{ 'template: ' + which }}"


def probe(which):
    return "{%- set which = '" + which + "' -%}" + PROBE


DIRS = {
    # Current transformers saves the template beside the config.
    "jinja_file_only": {"files": {"chat_template.jinja": "{%- set which = 'file' -%}\r\n" + PROBE + "\r\n"}},
    # A template file wins over the config's string.
    "jinja_file_wins": {"config_template": probe("config"), "files": {"chat_template.jinja": probe("file")}},
    "config_string": {"config_template": probe("config")},
    "config_list": {"config_template": [{"name": "default", "template": probe("default")}, {"name": "tool_use", "template": probe("tool_use")}]},
    "config_list_no_default": {"config_template": [{"name": "tool_use", "template": probe("tool_use")}, {"name": "rag", "template": probe("rag")}]},
    # Template files replace the config's templates, named ones included.
    "template_dir": {
        "config_template": [{"name": "default", "template": probe("config")}],
        "files": {"chat_template.jinja": probe("file"), "additional_chat_templates/tool_use.jinja": probe("dir_tool_use"), "additional_chat_templates/rag.jinja": probe("dir_rag")},
    },
    "none": {},
    # No added_tokens_decoder: the legacy special_tokens_map.json wins.
    "legacy_special_tokens_map": {
        "config_template": probe("config"),
        "drop_added_tokens_decoder": True,
        "config_extra": {"eos_token": "<config_eos>", "sep_token": "", "additional_special_tokens": ["<a>"], "extra_special_tokens": {"image_token": "<image>"}},
        "files": {"special_tokens_map.json": json.dumps({"eos_token": {"content": "<map_eos>", "lstrip": False}, "pad_token": "<map_pad>", "additional_special_tokens": ["<a>", "<b>"]})},
    },
}


def write_dir(path, spec):
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer({}), bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    tok.save_pretrained(path)
    for leftover in ("chat_template.jinja", "special_tokens_map.json"):
        (path / leftover).unlink(missing_ok=True)
    with open(path / "tokenizer_config.json", encoding="utf-8") as f:
        config = json.load(f)
    config.pop("chat_template", None)
    if spec.get("drop_added_tokens_decoder"):
        config.pop("added_tokens_decoder", None)
    config.update(spec.get("config_extra", {}))
    if "config_template" in spec:
        config["chat_template"] = spec["config_template"]
    write_json(path / "tokenizer_config.json", config)
    for rel, text in spec.get("files", {}).items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    # Normalise tokenizer.json for byte-identical reruns.
    with open(path / "tokenizer.json", encoding="utf-8") as f:
        write_json(path / "tokenizer.json", json.load(f))


def dir_fixtures():
    root = OUT / "dirs"
    expected = {}
    for name, spec in DIRS.items():
        path = root / name
        write_dir(path, spec)
        tok = AutoTokenizer.from_pretrained(str(path))
        picks = {}
        for label, tools in (("without_tools", None), ("with_tools", [WEATHER])):
            try:
                picks[label] = tok.get_chat_template(None, tools)
            except ValueError:
                picks[label] = None
        expected[name] = {
            **picks,
            "special_tokens": {k: v for k, v in tok.special_tokens_map.items()},
        }
        print(f"dirs/{name}: {picks}")
    write_json(OUT / "dirs.json", {"generated_by": "scripts/make_chat_fixtures.py", "transformers": transformers.__version__, "dirs": expected})


def write_json(path, doc):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    template_fixtures()
    dir_fixtures()


if __name__ == "__main__":
    main()
