"""`synth`: the built-in synthetic benchmark, MOSI-shaped, with a cross-modal signal a model has to combine.

Every sample has a latent sentiment s (its label plus annotation noise). Each modality sees s its own way:
text through a polarity direction, faint on every token and strong on a few sentiment words; audio through
the intensity |s| (hardly its sign); vision through a weak polarity burst on a window of frames. Some
samples have one modality contradicting the others: in "sarcasm" the text's polarity is flipped and a cue in
vision says so (the model must multiply the text by the cue), in "misleading vision" the face shows the
opposite polarity with no cue.
No single modality, and no linear model, reaches the best score. data/README.md documents the process and
the scores simple models reach on it.

Everything is drawn from one seed with float32 arrays, vectorised over samples (in chunks, to bound memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from msmix_cli.data.cache import SplitArrays
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput
from msmix_cli.types import MODALITIES

SPEC = DATASETS.get("synth")
SPLITS = tuple(SPEC.splits)
DEFAULT_SAMPLES = sum(SPEC.splits.values())
DEFAULT_SEQ_LEN = SPEC.seq_lens["aligned"]["text"]
MIN_PER_SPLIT = 4
MIN_DIM = 2  # vision needs two directions (polarity and the sarcasm cue)
# Bumped whenever the process below changes, so caches of an older process are never reused.
GENERATOR_VERSION = 1

LABEL_STEP = 1.0 / 3.0
ZERO_RATE = 0.04  # exact-zero labels (MOSI: 30 of 686 test segments)
NEGATIVE_RATE = 0.55  # MOSI leans slightly negative
ANNOTATION_NOISE = 0.45  # sd of s around the label: the part no model can recover
SARCASM_RATE = 0.12
MISLEADING_VISION_RATE = 0.06

TOPICS = 8  # a low-rank, high-variance nuisance shared by the tokens of a sample (what it is about)
TOPIC_SCALE = 1.0
INFORMATIVE_TOKEN_RATE = 0.25
TEXT_CONTEXT = 0.6  # every token carries a little of the sentence's polarity (contextual embeddings)
TEXT_SIGNAL = 1.2  # an informative (sentiment) word carries much more

AUDIO_INTENSITY = 1.5
AUDIO_POLARITY = 0.15
SPEAKER_SCALE = 0.3

VISION_WINDOW = (0.25, 0.6)  # fraction of the valid frames an expression (or the cue) spans
VISION_SIGNAL = 0.4
CUE_SIGNAL = 2.5
FACE_SCALE = 0.3

CHUNK = 256  # samples generated at a time: bounds the (chunk, L, 768) temporaries


@dataclass(frozen=True)
class _World:
    """The fixed directions of one benchmark: what polarity, intensity and the cue look like per modality."""

    text_polarity: np.ndarray  # (D_T,)
    topics: np.ndarray  # (TOPICS, D_T)
    audio_mixing: np.ndarray  # (D_A, D_A) rotation: COVAREP-like features are not one per concept
    vision_polarity: np.ndarray  # (D_V,)
    vision_cue: np.ndarray  # (D_V,) orthogonal to the polarity


@dataclass(frozen=True)
class _Samples:
    label: np.ndarray  # (N,) on the 1/3 grid
    sentiment: np.ndarray  # (N,) latent s
    length: np.ndarray  # (N,) valid steps, shared by the aligned modalities
    sarcastic: np.ndarray  # (N,) bool
    misleading_vision: np.ndarray  # (N,) bool


def generate_synth(*, samples: int | None = None, seed: int = 0, dims: Mapping[str, int] | None = None,
                   seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, SplitArrays]:
    """The synthetic benchmark for `seed`: train/valid/test in MOSI's proportions (1284:229:686 by default)."""
    total = DEFAULT_SAMPLES if samples is None else samples
    widths = {**SPEC.dims, **(dims or {})}
    _check(total, widths, seq_len)
    streams = np.random.default_rng(seed).spawn(5)
    world = _make_world(streams[0], widths)
    drawn = _draw_samples(streams[1], total, seq_len)
    features = {
        "text": _text(streams[2], world, drawn, seq_len),
        "audio": _audio(streams[3], world, drawn, seq_len),
        "vision": _vision(streams[4], world, drawn, seq_len),
    }
    ids = [f"synth{seed}_{row:05d}" for row in range(total)]
    return _split(features, drawn, ids, split_sizes(total))


def split_sizes(total: int) -> dict[str, int]:
    """`total` shared in the published proportions (largest remainders), every split at least MIN_PER_SPLIT."""
    weights = np.array([SPEC.splits[s] for s in SPLITS], dtype=np.float64)
    exact = total * weights / weights.sum()
    sizes = np.floor(exact).astype(int)
    sizes[np.argsort(sizes - exact)[: total - sizes.sum()]] += 1
    for small in np.flatnonzero(sizes < MIN_PER_SPLIT):
        missing = MIN_PER_SPLIT - sizes[small]
        sizes[small] += missing
        sizes[np.argmax(sizes)] -= missing
    return dict(zip(SPLITS, sizes.tolist()))


def _check(total: int, widths: Mapping[str, int], seq_len: int) -> None:
    if total < MIN_PER_SPLIT * len(SPLITS):
        least = MIN_PER_SPLIT * len(SPLITS)
        raise BadInput(f"--samples must be at least {least} ({MIN_PER_SPLIT} per split); got {total}")
    unknown = sorted(set(widths) - set(MODALITIES))
    if unknown:
        raise BadInput(f"synth has no modality {', '.join(unknown)}; its modalities: {', '.join(MODALITIES)}")
    narrow = {m: d for m, d in widths.items() if d < MIN_DIM}
    if narrow:
        raise BadInput(f"synth feature widths must be at least {MIN_DIM}; got {narrow}")
    if seq_len < 1:
        raise BadInput(f"synth sequence length must be at least 1; got {seq_len}")


def _unit(rng: np.random.Generator, width: int) -> np.ndarray:
    vector = rng.standard_normal(width)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _make_world(rng: np.random.Generator, widths: Mapping[str, int]) -> _World:
    polarity, cue = np.linalg.qr(rng.standard_normal((widths["vision"], 2)))[0].T
    rotation = np.linalg.qr(rng.standard_normal((widths["audio"], widths["audio"])))[0]
    return _World(
        text_polarity=_unit(rng, widths["text"]),
        topics=(rng.standard_normal((TOPICS, widths["text"])) * TOPIC_SCALE / np.sqrt(TOPICS)).astype(np.float32),
        audio_mixing=rotation.astype(np.float32),
        vision_polarity=polarity.astype(np.float32),
        vision_cue=cue.astype(np.float32),
    )


def _draw_labels(rng: np.random.Generator, total: int) -> np.ndarray:
    """MOSI-like: two modes near ±1, most mass on ±0.3..±2, a few exact zeros, on the 1/3 grid."""
    magnitude = LABEL_STEP + rng.gamma(shape=2.0, scale=0.6, size=total)
    sign = np.where(rng.random(total) < NEGATIVE_RATE, -1.0, 1.0)
    label = np.clip(np.round(sign * magnitude / LABEL_STEP) * LABEL_STEP, -3.0, 3.0)
    label[rng.random(total) < ZERO_RATE] = 0.0
    return label.astype(np.float32)


def _draw_samples(rng: np.random.Generator, total: int, seq_len: int) -> _Samples:
    label = _draw_labels(rng, total)
    sentiment = (label + rng.normal(0.0, ANNOTATION_NOISE, total)).astype(np.float32)
    # utterance lengths: short ones are common, a few fill the window
    length = np.clip(np.rint(rng.lognormal(np.log(14.0), 0.6, total) * seq_len / 50.0), 1, seq_len).astype(np.int32)
    kind = rng.random(total)
    sarcastic = kind < SARCASM_RATE
    misleading = (kind >= SARCASM_RATE) & (kind < SARCASM_RATE + MISLEADING_VISION_RATE)
    return _Samples(label, sentiment, length, sarcastic, misleading)


def _valid(length: np.ndarray, seq_len: int) -> np.ndarray:
    return np.arange(seq_len)[None, :] < length[:, None]


def _window(rng: np.random.Generator, length: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, L) bool: one contiguous run of frames inside each sample's valid steps."""
    width = np.maximum(1, np.rint(length * rng.uniform(*VISION_WINDOW, size=length.shape))).astype(int)
    start = np.floor(rng.random(length.shape) * (length - width + 1)).astype(int)
    steps = np.arange(seq_len)[None, :]
    return (steps >= start[:, None]) & (steps < (start + width)[:, None])


def _chunks(total: int) -> Iterator[slice]:
    for start in range(0, total, CHUNK):
        yield slice(start, min(start + CHUNK, total))


def _text(rng: np.random.Generator, world: _World, drawn: _Samples, seq_len: int) -> np.ndarray:
    """Token features: noise + the sample's topic + the polarity direction times s, strongest on sentiment words."""
    total, width = len(drawn.label), world.text_polarity.shape[0]
    polarity = np.where(drawn.sarcastic, -drawn.sentiment, drawn.sentiment).astype(np.float32)
    out = np.empty((total, seq_len, width), np.float32)
    for rows in _chunks(total):
        n = rows.stop - rows.start
        valid = _valid(drawn.length[rows], seq_len)
        informative = valid & (rng.random((n, seq_len)) < INFORMATIVE_TOKEN_RATE)
        topic = rng.standard_normal((n, TOPICS), dtype=np.float32) @ world.topics
        block = rng.standard_normal((n, seq_len, width), dtype=np.float32)
        block += topic[:, None, :]
        strength = polarity[rows, None] * (TEXT_CONTEXT * valid + TEXT_SIGNAL * informative)
        block += strength[:, :, None] * world.text_polarity
        block *= valid[:, :, None]
        out[rows] = block
    return out


def _audio(rng: np.random.Generator, world: _World, drawn: _Samples, seq_len: int) -> np.ndarray:
    """Frames of a loudness-like intensity tanh|s| and a faint polarity, seen through a speaker offset and noise."""
    total, width = len(drawn.label), world.audio_mixing.shape[0]
    clean = np.zeros((total, width), np.float32)
    clean[:, 0] = AUDIO_INTENSITY * np.tanh(np.abs(drawn.sentiment) / 1.5)
    clean[:, 1] = AUDIO_POLARITY * drawn.sentiment
    speaker = SPEAKER_SCALE * rng.standard_normal((total, width), dtype=np.float32)
    frames = (clean + speaker)[:, None, :] + rng.standard_normal((total, seq_len, width), dtype=np.float32)
    frames = frames @ world.audio_mixing
    return frames * _valid(drawn.length, seq_len)[:, :, None]


def _vision(rng: np.random.Generator, world: _World, drawn: _Samples, seq_len: int) -> np.ndarray:
    """Face features: an expression burst of polarity s on some frames; a sarcasm cue on others."""
    total, width = len(drawn.label), world.vision_polarity.shape[0]
    shown = np.where(drawn.misleading_vision, -drawn.sentiment, drawn.sentiment).astype(np.float32)
    expression = _window(rng, drawn.length, seq_len) * (VISION_SIGNAL * shown)[:, None]
    cue = _window(rng, drawn.length, seq_len) * (CUE_SIGNAL * drawn.sarcastic)[:, None]
    face = FACE_SCALE * rng.standard_normal((total, 1, width), dtype=np.float32)
    frames = face + rng.standard_normal((total, seq_len, width), dtype=np.float32)
    frames += expression[:, :, None] * world.vision_polarity
    frames += cue[:, :, None] * world.vision_cue
    return frames * _valid(drawn.length, seq_len)[:, :, None]


def _split(features: Mapping[str, np.ndarray], drawn: _Samples, ids: list[str],
           sizes: Mapping[str, int]) -> dict[str, SplitArrays]:
    out, start = {}, 0
    for name, size in sizes.items():
        rows = slice(start, start + size)
        out[name] = SplitArrays(
            features={m: features[m][rows] for m in MODALITIES},
            lengths={m: drawn.length[rows].copy() for m in MODALITIES},
            label=drawn.label[rows].copy(),
            ids=ids[rows],
        )
        start += size
    return out
