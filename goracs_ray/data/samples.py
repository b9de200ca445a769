"""BIGRec (SeqRec) and TALLRec (CTR) samples, temporal split and negatives (METHOD.md §7).

Pure numpy/pandas/pyarrow: no Ray. Samples are one row per (user, position): the user's events
sorted by time (ties: file order), position i from ``min(L, len-1)`` to ``len-1``, history = the
previous ≤ L items, target = item i. ``sample_id = "<task>:<user>:<i>"`` is stable across runs.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from goracs_ray.data.config import Domain
from goracs_ray.data.schema import SAMPLE_SCHEMA, Task

__all__ = [
    "WORDING",
    "Wording",
    "assign_splits",
    "build_samples",
    "cap_samples",
    "cap_users",
    "ctr_text",
    "draw_negatives",
    "samples_to_table",
    "seqrec_output",
    "seqrec_text",
    "split_sizes",
]

SPLITS = ("train", "valid", "test", "early_stop")


@dataclasses.dataclass(frozen=True)
class Wording:
    """How prompts name the items of a domain and what the user did with them."""

    noun: str
    plural: str
    verb: str


WORDING = {
    Domain.MOVIES: Wording("movie", "movies", "watched"),
    Domain.GAMES: Wording("video game", "video games", "played"),
    Domain.FOOD: Wording("food", "food", "purchased"),
    Domain.GENERIC: Wording("item", "items", "interacted with"),
}


def _quoted(titles: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


def seqrec_output(title: str) -> str:
    """The SeqRec answer text (the ``output`` column) for an item title: the title in quotes.

    The one place this format is defined: fine-tuning targets (:func:`seqrec_text`) and the
    candidate answers scored by likelihood evaluation both use it.
    """
    return f'"{title}"'


def seqrec_text(history: list[str], target: str, domain: Domain) -> tuple[str, str, str]:
    """(instruction, input, output) of a BIGRec sample; output is the quoted target title."""
    w = WORDING[domain]
    instruction = (
        f"Given a list of {w.plural} the user has {w.verb} before, please recommend a new "
        f"{w.noun} that the user likes to the user."
    )
    text = f"The user has {w.verb} the following {w.plural} before: {_quoted(history)}"
    return instruction, text, seqrec_output(target)


def ctr_text(
    history: list[str], liked: list[bool], target: str, label: bool, domain: Domain
) -> tuple[str, str, str]:
    """(instruction, input, output) of a TALLRec sample; output ``"Yes"``/``"No"``."""
    w = WORDING[domain]
    instruction = (
        "Given the user's preference and unpreference, identify whether the user will like the "
        f'target {w.noun} by answering "Yes" or "No".'
    )
    pref = _quoted([t for t, ok in zip(history, liked) if ok])
    unpref = _quoted([t for t, ok in zip(history, liked) if not ok])
    text = (
        f"User Preference: {pref}\nUser Unpreference: {unpref}\n"
        f'Whether the user will like the target {w.noun} "{target}"?'
    )
    return instruction, text, "Yes" if label else "No"


def cap_users(events: pd.DataFrame, max_users: int | None, *, seed: int) -> pd.DataFrame:
    """Keep the events of a seeded random subset of ``max_users`` users (all if ``None``)."""
    users = np.sort(events["user"].unique())
    if max_users is None or max_users >= len(users):
        return events
    keep = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return events[events["user"].isin(keep)]


def cap_samples(samples: pd.DataFrame, max_samples: int | None, *, seed: int) -> pd.DataFrame:
    """Keep a seeded random subset of ``max_samples`` samples (all if ``None``), order kept."""
    if max_samples is None or max_samples >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng([seed, 1]).choice(len(samples), max_samples, replace=False))
    return samples.iloc[idx]


def build_samples(
    events: pd.DataFrame,
    titles: pd.Series,
    *,
    task: Task,
    domain: Domain = Domain.MOVIES,
    history_length: int = 10,
    min_history: int = 1,
    rating_threshold: float = 3.0,
    progress: bool | None = None,
) -> pd.DataFrame:
    """One sample per (user, position); the columns of SAMPLE_SCHEMA except split and negatives.

    Parameters
    ----------
    events : DataFrame
        ``user`` str, ``item`` str, ``rating`` float64, ``timestamp`` int64, ``line`` int64.
    titles : Series
        Title (str) by item id; covers every item in ``events``.
    progress : bool, optional
        tqdm bar over users (``None``: only on a TTY).
    """
    user_codes, _ = pd.factorize(events["user"], sort=True)
    order = np.lexsort((events["line"].to_numpy(), events["timestamp"].to_numpy(), user_codes))
    ev = events.iloc[order]
    users = ev["user"].to_numpy()
    items = ev["item"].to_numpy()
    names = titles.reindex(items).to_numpy()
    liked = (ev["rating"].to_numpy() > rating_threshold).tolist()
    stamps = ev["timestamp"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    rows: dict[str, list] = {f.name: [] for f in SAMPLE_SCHEMA if f.name not in ("split",)}
    for lo, hi in tqdm(
        zip(starts.tolist(), ends.tolist()),
        total=len(starts),
        disable=None if progress is None else not progress,
        desc="samples",
        unit="user",
    ):
        for i in range(lo + min(history_length, hi - lo - 1), hi):
            st = max(i - history_length, lo)
            if i - st < min_history:
                continue
            hist = names[st:i].tolist()
            if task is Task.SEQREC:
                text = seqrec_text(hist, names[i], domain)
                label = None
            else:
                text = ctr_text(hist, liked[st:i], names[i], liked[i], domain)
                label = int(liked[i])
            _append(rows, task, users[i], i - lo, items, names, st, i, text, label, stamps[i])
    return pd.DataFrame(rows)


def _append(rows, task, user, pos, items, names, st, i, text, label, stamp) -> None:
    rows["sample_id"].append(f"{task.value}:{user}:{pos}")
    rows["task"].append(task.value)
    rows["user"].append(user)
    rows["target_item"].append(items[i])
    rows["target_title"].append(names[i])
    rows["history_items"].append(items[st:i].tolist())
    rows["history_titles"].append(names[st:i].tolist())
    rows["instruction"].append(text[0])
    rows["input"].append(text[1])
    rows["output"].append(text[2])
    rows["label"].append(label)
    rows["timestamp"].append(int(stamp))
    rows["negatives"].append([])


def _count(size: int | float, n: int) -> int:
    """A size as a count: an int as is, a fraction of ``n`` rounded, but to ≥ 1 when > 0."""
    if isinstance(size, float):
        return max(1, round(size * n)) if size > 0 else 0
    return size


def split_sizes(n: int, valid_size: int | float, test_size: int | float) -> tuple[int, int, int]:
    """(train, valid, test) counts; a fraction rounds, but to at least 1 when it is > 0.

    Raises
    ------
    ValueError
        If nothing is left for train.
    """

    valid, test = _count(valid_size, n), _count(test_size, n)
    if valid + test >= n:
        raise ValueError(
            f"`valid_size`={valid_size} and `test_size`={test_size} take {valid + test} of the "
            f"{n} samples, leaving none for train; lower them or use more data"
        )
    return n - valid - test, valid, test


def assign_splits(
    samples: pd.DataFrame,
    valid_size: int | float,
    test_size: int | float,
    *,
    mode: str = "temporal",
    seed: int = 0,
    early_stop_size: int | float = 0,
) -> pd.DataFrame:
    """Global temporal split: sort by (target timestamp, sample_id); the rest → train, then the
    most recent ``valid_size + test_size`` samples are held out.

    ``mode="temporal"`` (the reference): the most recent block → test, the block before → valid.
    ``mode="final_block"``: the held-out block is split at random (seeded) into valid and test,
    so both are drawn from the same period and users (train still precedes both). Use it when
    the held-out period is short or holds few users, e.g. on a small user slice, where the
    reference split gives valid and test samples from different users.

    ``early_stop_size`` > 0 (a count, or a fraction of valid): that many valid samples, drawn at
    random (seeded), become ``early_stop`` instead, a validation set disjoint from valid.

    Returns ``samples`` in time order with a ``split`` column.

    Raises
    ------
    ValueError
        ``early_stop_size`` takes the whole valid split.
    """
    ordered = samples.sort_values(["timestamp", "sample_id"], kind="stable")
    n_train, n_valid, n_test = split_sizes(len(ordered), valid_size, test_size)
    split = np.repeat(np.array(SPLITS[:3], dtype=object), [n_train, n_valid, n_test])
    if mode == "final_block":
        held = split[n_train:]
        np.random.default_rng(seed).shuffle(held)
        split[n_train:] = held
    elif mode != "temporal":
        raise ValueError(f"`split` must be 'temporal' or 'final_block', got {mode!r}")
    if early_stop_size:
        n_stop = _count(early_stop_size, n_valid)
        if n_stop >= n_valid:
            raise ValueError(
                f"`early_stop_size`={early_stop_size} takes {n_stop} of the {n_valid} valid "
                "samples, leaving none for the valid split that selection matches; lower it or "
                "raise `valid_size`"
            )
        valid_rows = np.flatnonzero(split == "valid")
        stop_rows = np.random.default_rng([seed, 1]).choice(valid_rows, n_stop, replace=False)
        split[stop_rows] = "early_stop"
    return ordered.assign(split=split).reset_index(drop=True)


def draw_negatives(
    samples: pd.DataFrame, events: pd.DataFrame, catalog: np.ndarray, k: int, *, seed: int
) -> list[list[str]]:
    """``k`` items outside each sample's user's whole history, seeded by (seed, sample_id).

    Parameters
    ----------
    samples : DataFrame
        ``sample_id`` and ``user`` of the samples that get negatives.
    events : DataFrame
        Every event kept (defines each user's whole history).
    catalog : (I,) object array of str
        Sorted item ids to draw from.

    Memory: O(I) per user at a time.
    """
    history = events.groupby("user")["item"].unique()
    out: list[list[str]] = []
    pools: dict[str, np.ndarray] = {}
    for sid, user in zip(samples["sample_id"].tolist(), samples["user"].tolist()):
        pool = pools.get(user)
        if pool is None:
            pool = pools[user] = np.setdiff1d(catalog, history[user], assume_unique=True)
            if len(pool) < k:
                raise ValueError(
                    f"`num_negatives`={k} but user `{user}` has only {len(pool)} of the "
                    f"{len(catalog)} items outside their history; lower `num_negatives`"
                )
        rng = np.random.default_rng([seed, zlib.crc32(sid.encode())])
        out.append(rng.choice(pool, size=k, replace=False).tolist())
    return out


def samples_to_table(samples: pd.DataFrame) -> pa.Table:
    """DataFrame with every SAMPLE_SCHEMA column → pyarrow Table with exactly that schema."""
    return pa.Table.from_pydict(
        {f.name: samples[f.name].tolist() for f in SAMPLE_SCHEMA}, schema=SAMPLE_SCHEMA
    )
