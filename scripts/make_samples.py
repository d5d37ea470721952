"""Regenerate src/trainerd/samples/*.jsonl (the demo's data). Deterministic; commit the output.

Three small files, one per accepted format, templated so that even a tiny model's loss
falls visibly within one epoch.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "trainerd" / "samples"

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa",
    "Egypt": "Cairo", "Norway": "Oslo", "Chile": "Santiago", "India": "New Delhi", "Spain": "Madrid",
    "Italy": "Rome", "Ghana": "Accra", "Cuba": "Havana", "Nepal": "Kathmandu", "Poland": "Warsaw",
    "Greece": "Athens", "Mexico": "Mexico City", "Brazil": "Brasilia", "Sweden": "Stockholm",
    "Turkey": "Ankara", "Vietnam": "Hanoi", "Ireland": "Dublin", "Portugal": "Lisbon", "Austria": "Vienna",
}
ASK = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}.",
       "Tell me the capital of {c}.", "{c}: what is its capital?"]
WORDS = ["amber", "cobalt", "violet", "saffron", "jade", "ivory", "scarlet", "teal", "indigo", "olive",
         "coral", "azure", "crimson", "lilac", "ochre", "silver"]


def capitals(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(240):
        c = rng.choice(list(CAPITALS))
        rows.append({"messages": [
            {"role": "system", "content": "You answer geography questions in one sentence."},
            {"role": "user", "content": rng.choice(ASK).format(c=c)},
            {"role": "assistant", "content": f"The capital of {c} is {CAPITALS[c]}."},
        ], "metadata": {"source": "samples/capitals"}})
    return rows


def arithmetic(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(240):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append({"prompt": f"Question: what is {a} plus {b}?\nAnswer:", "completion": f" {a} plus {b} is {a + b}."})
    return rows


def memory(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(160):
        w = rng.choice(WORDS)
        rows.append({"messages": [
            {"role": "user", "content": f"Remember this word: {w}."},
            {"role": "assistant", "content": f"Got it, I will remember {w}."},
            {"role": "user", "content": "Which word did I ask you to remember?"},
            {"role": "assistant", "content": f"You asked me to remember {w}."},
        ]})
    return rows


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, fn) in enumerate([("capitals", capitals), ("arithmetic", arithmetic), ("memory", memory)]):
        rows = fn(random.Random(i))
        with open(OUT / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{name}.jsonl: {len(rows)} examples")


if __name__ == "__main__":
    main()
