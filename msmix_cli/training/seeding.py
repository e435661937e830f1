"""Seeds and random-generator states: everything a run needs to be repeated, or resumed, exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the run's own generator (data order and mixing draws)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def capture_rng(rng: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_global": _numpy_state_as_plain(np.random.get_state(legacy=False)),
        "run": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], rng: np.random.Generator) -> None:
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy_global"]))
    rng.bit_generator.state = state["run"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_as_plain(state: dict[str, Any]) -> dict[str, Any]:
    """The MT19937 key as a list: checkpoints load with weights_only=True, which refuses numpy arrays."""
    inner = state["state"]
    return {**state, "state": {**inner, "key": inner["key"].tolist()}}


def _numpy_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    inner = state["state"]
    return {**state, "state": {**inner, "key": np.asarray(inner["key"], dtype=np.uint32)}}


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value
