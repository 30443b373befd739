"""lm-evaluation-harness on transformers (torch, float32, CPU) for the
committed strata_tiny task and each fixture checkpoint; writes
fixtures/lm_eval/reference-<model>.json with every request's
loglikelihood, whether it was greedy, and the accuracy. Run by
scripts/make_lm_eval_fixtures.sh (which makes the venv)."""
import json
import os
import sys
from importlib import metadata

import lm_eval
from lm_eval.tasks import TaskManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, "fixtures", "lm_eval", "tasks")
MODELS = ["tiny-llama", "tiny-qwen2", "tiny-qwen3"]


def main():
    # The task's data file is relative to its folder.
    os.chdir(os.path.join(TASKS, "strata_tiny"))
    for name in MODELS:
        model_dir = os.path.join(ROOT, "fixtures", "models", name)
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
            tasks=["strata_tiny"],
            task_manager=TaskManager(include_path=TASKS),
            log_samples=True,
            batch_size=1,
        )
        samples = sorted(out["samples"]["strata_tiny"], key=lambda s: s["doc_id"])
        ref = {
            "note": "lm_eval --model hf (transformers, float32, CPU) on fixtures/lm_eval/tasks/strata_tiny; "
            "made by scripts/make_lm_eval_fixtures.sh",
            "lm_eval": metadata.version("lm-eval"),
            "transformers": metadata.version("transformers"),
            "torch": metadata.version("torch"),
            "acc": out["results"]["strata_tiny"]["acc,none"],
            "samples": [
                {
                    "doc_id": s["doc_id"],
                    "loglikelihoods": [float(r[0][0]) for r in s["resps"]],
                    "is_greedy": [str(r[0][1]) == "True" for r in s["resps"]],
                }
                for s in samples
            ],
        }
        path = os.path.join(ROOT, "fixtures", "lm_eval", f"reference-{name}.json")
        with open(path, "w") as f:
            json.dump(ref, f, indent=1)
            f.write("\n")
        print(f"wrote {path}: acc {ref['acc']}", file=sys.stderr)


if __name__ == "__main__":
    main()
