"""MovieLens-like synthetic samples (SAMPLE_SCHEMA rows) for tests, benchmarks and demos.

Titles look like ml-100k's (``"Word Word (1995)"``), histories hold 10 titles, and prompts follow
the BIGRec/TALLRec wording of METHOD.md §7, so token lengths match the real SeqRec/CTR pools.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from goracs_ray.data.samples import seqrec_output
from goracs_ray.data.schema import SAMPLE_SCHEMA, Task

__all__ = ["synthetic_samples", "synthetic_titles"]

_WORDS = (
    "Star Wars Return Jedi Toy Story Heat Fargo Contact Scream Liar English Patient Air Force One "
    "Godfather Titanic Twelve Monkeys Babe Dead Man Walking Usual Suspects Mission Impossible Rock "
    "Independence Day Men Black Jerry Maguire Evita Birdcage Braveheart Apollo Pulp Fiction Alien "
    "Silence Lambs Terminator Raiders Lost Ark Empire Strikes Back Casablanca Vertigo Shining "
    "Dances Wolves Forrest Gump Lion King Aladdin Beauty Beast Cinderella Princess Bride "
    "Blues Brothers"
).split()

_SEQ_INSTRUCTION = (
    "Given a list of movies the user has watched before, please recommend a new movie that the "
    "user likes to the user."
)
_CTR_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target "
    'movie by answering "Yes." or "No.".'
)


def synthetic_titles(n_items: int, *, seed: int = 0) -> list[str]:
    """``n_items`` distinct-ish titles like ``"Heat Jedi (1995)"`` (1–4 words + year)."""
    rng = np.random.default_rng(seed)
    titles = []
    for i in range(n_items):
        words = rng.choice(_WORDS, size=int(rng.integers(1, 5)))
        titles.append(f"{' '.join(words)} {i % 7 or ''}".strip() + f" ({1950 + i % 48})")
    return titles


def synthetic_samples(
    n: int,
    *,
    task: Task | str = Task.SEQREC,
    split: str = "train",
    seed: int = 0,
    n_items: int = 1682,
) -> pa.Table:
    """``n`` samples in SAMPLE_SCHEMA with ids ``"{split}-{i}"``.

    Parameters
    ----------
    n : int
        Number of rows.
    task : Task or str
        ``"seqrec"`` (output: quoted title) or ``"ctr"`` (output "Yes"/"No", label 1/0).
    split : str
        Value of the ``split`` column and id prefix.
    seed : int
        Seeds titles, histories and labels.
    n_items : int
        Catalog size (ml-100k has 1682 movies).
    """
    task = Task(task)
    rng = np.random.default_rng([seed, len(split)])
    titles = synthetic_titles(n_items, seed=seed)
    hist = rng.integers(0, n_items, size=(n, 11))
    labels = rng.integers(0, 2, size=n)
    rows: dict[str, list] = {f.name: [] for f in SAMPLE_SCHEMA}
    for i in range(n):
        h_titles = [titles[j] for j in hist[i, :10]]
        target = titles[hist[i, 10]]
        if task is Task.SEQREC:
            instruction = _SEQ_INSTRUCTION
            text_in = "The user has watched the following movies before: " + ", ".join(
                f'"{t}"' for t in h_titles
            )
            output, label = seqrec_output(target), None
        else:
            instruction = _CTR_INSTRUCTION
            like = ", ".join(f'"{t}"' for t in h_titles[:6])
            dislike = ", ".join(f'"{t}"' for t in h_titles[6:])
            text_in = (
                f"User Preference: {like}\nUser Unpreference: {dislike}\n"
                f'Whether the user will like the target movie "{target}"?'
            )
            output, label = ("Yes" if labels[i] else "No"), int(labels[i])
        values = {
            "sample_id": f"{split}-{i}",
            "task": task.value,
            "split": split,
            "user": str(i % 943),
            "target_item": str(hist[i, 10]),
            "target_title": target,
            "history_items": [str(j) for j in hist[i, :10]],
            "history_titles": h_titles,
            "instruction": instruction,
            "input": text_in,
            "output": output,
            "label": label,
            "timestamp": 880000000 + i,
            "negatives": [],
        }
        for key, value in values.items():
            rows[key].append(value)
    return pa.table(rows, schema=SAMPLE_SCHEMA)
