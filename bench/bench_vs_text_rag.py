"""CLaRa vs text RAG: the same base decoder, the same top-5 chunks, compressed (CLaRa) or as raw text.

For each question the generator gets five chunks of 256 tokens: CLaRa puts 5 x 17 memory slots in the prompt
(compression 16: 16 vectors + ``<SEP>``), text RAG puts the chunks' 5 x ~256 tokens of text, in the same ANSWER
template. Chunks are compressed once at indexing time (as in a store), so the timed part is generation only:

- TTFT: time to the first token (prefill + one step: ``max_new_tokens=1``);
- whole answer: a fixed number of new tokens for both (``min_new_tokens = max_new_tokens``), so EOS cannot end
  one side early.

The ideal speed-up is the ratio of the prompt lengths (text / CLaRa); the table prints the achieved speed-up and its
fraction of the ideal (goal: >= 80 %). Models: the bundled trained tiny model and a Mistral-shaped random model of
about 100M parameters (as in bench/bench_model.py). Medians over ``--repeats`` runs after one warm-up.

    python bench/bench_vs_text_rag.py --threads 1                                  # both models, batch 1 and 4
    python bench/bench_vs_text_rag.py --models tiny --batch-sizes 1 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import SHAPES, build, timed

from clara_plugins.baselines import TextRAG
from clara_plugins.model import ClaraModel


def demo_texts() -> tuple[list[str], list[str]]:
    """Passages and held-out questions of the bundled demo corpus."""
    assets = importlib.resources.files("clara_plugins.assets")
    corpus = [json.loads(line) for line in (assets / "demo_corpus.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] for r in corpus], [r["question"] for r in corpus]


def full_chunks(model: ClaraModel, passages: list[str], n: int) -> list[str]:
    """``n`` chunks of (nearly) ``doc_max_length`` tokens, cut from the passages run together."""
    chunks: list[str] = []
    text = ""
    for p in passages:
        text += p + "\n"
        if len(text) > 4000:
            pieces = [c.text for c in model.chunk(text)]
            chunks += pieces[:-1]
            text = pieces[-1]
        if len(chunks) >= n:
            break
    return chunks[:n]


def clara_generate(model: ClaraModel, questions: list[str], memories: torch.Tensor, new_tokens: int) -> None:
    """CLaRa generation with exactly ``new_tokens`` new tokens (what ``ClaraModel.generate`` runs, length fixed)."""
    batch = model.build_prompts(questions, [memories.shape[1]] * len(questions))
    embeds = model.embed_with_memories(batch["input_ids"], memories.flatten(0, 1))
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=model.special_token_ids.eos,
        pad_token_id=model.special_token_ids.pad,
    )
    with torch.inference_mode(), model.use_role("generator"):
        model.base_lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], generation_config=config)


def measure(
    model: ClaraModel, text: TextRAG, qs: list[str], mem: torch.Tensor, docs: list[list[str]], n: int, repeats: int
) -> tuple[float, float]:
    """Median seconds to generate ``n`` tokens per question: CLaRa from memories, text RAG from the raw text."""
    clara = timed(lambda: clara_generate(model, qs, mem, n), repeats)
    plain = timed(lambda: text.generate(qs, docs, max_new_tokens=n, min_new_tokens=n, batch_size=len(qs)), repeats)
    return clara, plain


def bench_one(name: str, model: ClaraModel, args: argparse.Namespace) -> list[dict]:
    passages, questions = demo_texts()
    chunks = full_chunks(model, passages, 5 * max(args.batch_sizes))
    memories = model.compress(chunks).reshape(-1, 5, model.n_mem, model.hidden_size)  # (Q, 5, n, H)
    text = TextRAG.from_clara(model)
    params = sum(p.numel() for n, p in model.base_lm.named_parameters() if "lora_" not in n) / 1e6
    rows = []
    for bs in args.batch_sizes:
        qs, mem = questions[:bs], memories[:bs]
        docs = [chunks[5 * i : 5 * i + 5] for i in range(bs)]
        clara_len = model.build_prompts(qs, [5] * bs)["attention_mask"].sum(1).float().mean().item()
        text_len = statistics.mean(text.prompt_lengths(qs, docs))
        result = {"model": name, "params_M": params, "batch": bs, "clara_prompt": clara_len, "text_prompt": text_len}
        for label, n in (("ttft", 1), ("answer", args.new_tokens)):
            result[f"clara_{label}"], result[f"text_{label}"] = measure(model, text, qs, mem, docs, n, args.repeats)
        rows.append(result)
    return rows


def load_model(name: str, tiny: str) -> ClaraModel:
    if name == "tiny":
        return ClaraModel.from_pretrained(tiny, device="cpu", dtype="fp32")
    passages, _ = demo_texts()
    return build(SHAPES[name], passages)


def print_table(rows: list[dict], new_tokens: int) -> None:
    print(
        f"{'model':5} {'params':>7} {'batch':>5} {'prompt text/clara':>17} {'ideal':>6} | "
        f"{'TTFT text':>9} {'TTFT clara':>10} {'speed-up':>8} {'of ideal':>8} | "
        f"{f'{new_tokens} tok text':>11} {f'{new_tokens} tok clara':>12} {'speed-up':>8} {'of ideal':>8}"
    )
    for r in rows:
        ideal = r["text_prompt"] / r["clara_prompt"]
        s_ttft = r["text_ttft"] / r["clara_ttft"]
        s_ans = r["text_answer"] / r["clara_answer"]
        print(
            f"{r['model']:5} {r['params_M']:>6.1f}M {r['batch']:>5} "
            f"{r['text_prompt']:>8.0f}/{r['clara_prompt']:<8.0f} {ideal:>5.1f}x | "
            f"{1000 * r['text_ttft']:>7.1f}ms {1000 * r['clara_ttft']:>8.1f}ms {s_ttft:>7.2f}x "
            f"{100 * s_ttft / ideal:>7.0f}% | "
            f"{1000 * r['text_answer']:>9.0f}ms {1000 * r['clara_answer']:>10.0f}ms {s_ans:>7.2f}x "
            f"{100 * s_ans / ideal:>7.0f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "100M"], choices=["tiny", "100M"])
    parser.add_argument("--tiny", default="tiny", help="the tiny model (default: the bundled one)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=32, help="fixed answer length for the whole-answer time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        rows += bench_one(name, load_model(name, args.tiny), args)
    print(f"device: cpu, {torch.get_num_threads()} threads, torch {torch.__version__}; medians of {args.repeats}")
    print("same base decoder, same 5 chunks of <= 256 tokens per question; CLaRa: 16 vectors + <SEP> per chunk")
    print_table(rows, args.new_tokens)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
