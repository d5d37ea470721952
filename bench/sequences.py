"""Tokens computed to train multi-turn conversations: trainerd's shared sequences vs one
sequence per assistant turn, per chat-template family (docs/FORMATS.md).

    .venv/bin/python bench/sequences.py [--turns 4] [--n 50]

Both ways train exactly the same tokens (each turn after its exact inference prompt; the
script checks that the trained token multisets agree); what differs is how many tokens the
model must run forward and backward. "per turn" renders each assistant turn i as
prompt_i + target_i, its own sequence; "shared" is trainerd's: one sequence for the whole
conversation wherever the template is prefix-stable, plus one per turn the template
rewrites later (Qwen3, DeepSeek-R1). Printed per family: sequences and tokens computed,
and the ratio per-turn / shared. No training, no model: the tiny model's tokenizer dressed
as each family (tests/worker/templates.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.worker import templates as T  # noqa: E402
from trainerd.formats import parse  # noqa: E402
from trainerd.worker.chat import ChatEncoder  # noqa: E402
from trainerd.worker.tiny import build_tiny_model  # noqa: E402

FAMILIES = ("qwen2_5", "llama3", "gemma3", "qwen3", "deepseek_r1")


def conversations(n: int, turns: int, reasoning: bool) -> list[dict]:
    out = []
    for k in range(n):
        msgs = [{"role": "system", "content": "You answer arithmetic questions."}]
        for t in range(turns):
            a, b = k + t, 2 * t + 1
            think = f"<think>\nadd {a} and {b}\n</think>\n\n" if reasoning else ""
            msgs += [{"role": "user", "content": f"What is {a} plus {b}? Explain briefly."},
                     {"role": "assistant", "content": f"{think}{a} plus {b} is {a + b}."}]
        out.append({"messages": msgs})
    return out


def per_turn(enc: ChatEncoder, ex) -> list[tuple[list[int], list[int]]]:
    msgs = enc._prepare(ex)
    seqs = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            prompt = enc.render(msgs[:i], ex.tools, True)
            target = enc.target(prompt, enc.render(msgs[: i + 1], ex.tools, False), m)
            p, t = enc.ids(prompt), enc.ids(target)
            seqs.append((p + t, [0] * len(p) + [1] * len(t)))
    return seqs


def trained(seqs) -> Counter:
    return Counter(i for ids, mask in seqs for i, m in zip(ids, mask, strict=True) if m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "tiny"
        build_tiny_model(model, warm_steps=0)
        print(f"{args.n} conversations of {args.turns} assistant turns (system prompt, short turns)")
        print(f"{'family':<14}{'data':<11}{'per-turn seqs':>14}{'tokens':>9}{'shared seqs':>13}{'tokens':>9}"
              f"{'per-turn/shared':>17}")
        for fam in FAMILIES:
            enc = ChatEncoder(T.make_tokenizer(fam, model))
            for reasoning in (False, True):
                rows = [parse(r) for r in conversations(args.n, args.turns, reasoning)]
                a = [s for ex in rows for s in per_turn(enc, ex)]
                b = [s for ex in rows for s in enc.encode(ex)]
                assert trained(a) == trained(b), f"{fam}: shared sequences train other tokens"
                ta, tb = sum(len(x) for x, _ in a), sum(len(x) for x, _ in b)
                print(f"{fam:<14}{'reasoning' if reasoning else 'plain':<11}{len(a):>14}{ta:>9}{len(b):>13}"
                      f"{tb:>9}{ta / tb:>16.2f}x")


if __name__ == "__main__":
    main()
