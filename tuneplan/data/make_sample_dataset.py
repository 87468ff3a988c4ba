"""Generate `sample_chat.jsonl`: short chat examples written for tuneplan's tests and demo.

Run from the repository root:  python -m tuneplan.data.make_sample_dataset
The output is deterministic (fixed seed), so re-running it reproduces the committed file.
Each line is `{"messages": [...]}` with an optional system turn, one user turn and one
assistant turn: small arithmetic and word tasks a tiny model can learn a little of in a
few dozen steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("sample_chat.jsonl")
COUNT = 400
SEED = 7

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "table", "music", "bread", "house",
         "water", "paper", "tiger", "plant", "smile", "train", "chair", "ocean", "lemon", "night",
         "sugar", "tower", "field", "glass", "horse", "candle", "garden", "window", "pencil", "silver",
         "forest", "rocket", "yellow", "bridge", "winter", "summer", "planet", "dragon", "basket", "button"]
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
             "open": "closed", "early": "late", "full": "empty", "old": "new", "high": "low", "hard": "soft",
             "wet": "dry", "long": "short", "loud": "quiet", "rich": "poor", "strong": "weak", "thick": "thin"}
SYSTEM = "You are a concise assistant. Answer with the result only."


def _example(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return f"What is {a} plus {b}?", str(a + b)
    if kind == 1:
        a = rng.randint(0, 30)
        b = rng.randint(0, a)
        return f"What is {a} minus {b}?", str(a - b)
    if kind == 2:
        a = rng.randint(1, 25)
        return f"Double {a}.", str(2 * a)
    word = rng.choice(WORDS)
    if kind == 3:
        return f"Reverse the word '{word}'.", word[::-1]
    if kind == 4:
        return f"Write '{word}' in capital letters.", word.upper()
    if kind == 5:
        return f"How many letters are in '{word}'?", str(len(word))
    key = rng.choice(sorted(OPPOSITES))
    return f"What is the opposite of {key}?", OPPOSITES[key]


def generate(count: int = COUNT, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        question, answer = _example(rng)
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def main() -> None:
    with open(OUT, "w", encoding="utf-8") as f:
        for row in generate():
            f.write(json.dumps(row) + "\n")
    print(f"wrote {COUNT} examples to {OUT}")


if __name__ == "__main__":
    main()
