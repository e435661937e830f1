"""MMSA's feature pickles (`aligned_50.pkl`, `unaligned_50.pkl`, `unaligned_39.pkl`), read safely and strictly.

A pickle can run any code when loaded, so it is read with an unpickler that admits only what numpy needs to
rebuild arrays, dtypes and scalars; plain containers (dict, list, str, numbers) need no global at all.

Lengths. Unaligned files carry `audio_lengths` and `vision_lengths`; no file carries text lengths and
aligned files carry none. Text length = the sum of BERT's input mask (`text_bert[:, 1]`) when present,
else the index of the last non-zero step + 1 (a zero step inside a sequence, e.g. a word without frames,
does not end it). In an aligned file every modality shares the text's steps, so audio and vision take the
text length, as MMSA's own aligned models do. Every length is clipped to [1, L]: a packed RNN cannot take
an empty sequence, and an all-zero sample stays all zero.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from msmix_cli.data.cache import SplitArrays
from msmix_cli.data.sims import ClipLabels
from msmix_cli.data.specs import DatasetSpec
from msmix_cli.errors import BadInput
from msmix_cli.types import MODALITIES

SPLITS = ("train", "valid", "test")
UNIMODAL = ("T", "A", "V")
CHUNK = 1024  # samples per step when scanning features: bounds the boolean temporaries for MOSEI-sized splits


def _numpy_internal(submodule: str, name: str) -> Callable[..., Any]:
    """numpy 2 moved `numpy.core` to `numpy._core`; pickles name either, whichever numpy wrote them."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, name)


class _Refused(Exception):
    """A pickle that builds numpy objects the way numpy never pickles them (the message says how)."""


class _NdarrayName:
    """What the name `numpy.ndarray` resolves to: `_reconstruct` takes it as the type to build, but calling it
    (`ndarray(shape, dtype, buffer)`) would build an array over the file's bytes; numpy never pickles that way,
    and with an object dtype those bytes become pointers that crash the interpreter."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("the pickle calls numpy.ndarray directly (an array over raw bytes), which numpy never writes")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NdarrayName:
        raise _Refused("the pickle rebuilds an array of a type other than numpy.ndarray")
    return _numpy_internal("multiarray", "_reconstruct")(np.ndarray, shape, dtype)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("the pickle builds an array of Python objects from raw bytes")
    return _numpy_internal("numeric", "_frombuffer")(buffer, dtype, shape, order)


def _scalar(dtype: Any, *data: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("the pickle builds a numpy scalar holding Python objects")
    return _numpy_internal("multiarray", "scalar")(dtype, *data)


# Exactly the globals numpy's own reduce uses for ndarrays (protocol <= 4: _reconstruct; protocol 5:
# _frombuffer), dtypes and numpy scalars, under both package names; each guarded against raw memory.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): np.dtype,
    **{(f"{package}.multiarray", "_reconstruct"): _reconstruct for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.multiarray", "scalar"): _scalar for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _frombuffer for package in ("numpy.core", "numpy._core")},
}


def _check_dtype_state(dtype: np.dtype) -> None:
    """A dtype's pickled state carries its flags, which numpy takes as given: flags that deny the objects in
    its fields make an array's bytes become object pointers. Refuse any dtype unlike the one numpy builds."""
    try:
        if dtype.fields is not None:
            names = list(dtype.names or ())
            fresh = np.dtype({"names": names, "formats": [dtype.fields[n][0] for n in names],
                              "offsets": [dtype.fields[n][1] for n in names], "itemsize": dtype.itemsize},
                             align=dtype.isalignedstruct)
        elif dtype.subdtype is not None:
            fresh = np.dtype(dtype.subdtype)
        else:
            fresh = np.dtype(dtype.str)
    except (TypeError, ValueError) as error:  # overlapping object fields, say
        raise _Refused(f"the pickle holds an impossible dtype ({error})") from None
    if dtype.flags != fresh.flags or dtype.hasobject != fresh.hasobject:
        raise _Refused(f"the pickle holds a dtype whose flags contradict its fields ({fresh})")


class _ArraysOnly(pickle._Unpickler):  # the Python unpickler: the C one gives no hook where a dtype gets its state
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, handle: Any, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise BadInput(f"{self.path}: refused to load: the pickle asks for {module}.{name}, which is not part "
                           "of a numpy array (only arrays and plain containers are read)")
        return allowed

    def load_build(self) -> None:
        target = self.stack[-2]
        if not isinstance(target, (np.dtype, np.ndarray)):
            raise _Refused(f"the pickle sets the state of a {type(target).__name__}")
        super().load_build()
        if isinstance(target, np.dtype):
            _check_dtype_state(target)

    dispatch[pickle.BUILD[0]] = load_build


def load_pickle(path: Path) -> Any:
    """Unpickle `path` admitting numpy arrays, dtypes, numpy scalars and plain containers, nothing else."""
    try:
        with open(path, "rb") as handle:
            return _ArraysOnly(handle, path).load()
    except BadInput:
        raise
    except _Refused as error:
        raise BadInput(f"{path}: refused to load: {error}") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot read it ({error.strerror or error})") from None
    except Exception as error:  # a truncated or corrupt pickle raises anything from EOFError to ValueError
        raise BadInput(f"{path}: not a readable pickle, perhaps truncated ({type(error).__name__}: {error})") from None


def id_text(value: Any, where: str, errors: str = "strict") -> str:
    """A sample id as text. Only text and whole numbers are ids: str() of any other element of an object array
    from a file would run whatever that element's type does when printed."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8", errors)
        except UnicodeDecodeError:
            raise BadInput(f"{where} holds {value!r}, which is not UTF-8 text") from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    raise BadInput(f"{where} holds a {type(value).__name__}, expected text ids")


@dataclass(frozen=True)
class MmsaData:
    splits: dict[str, SplitArrays]
    replaced_nonfinite: dict[str, int]  # modality -> number of NaN/inf values set to 0
    clipped_lengths: int  # lengths beyond the padded size, cut to it


def read_mmsa(path: Path, spec: DatasetSpec, setting: str,
              label_table: Mapping[str, ClipLabels] | None = None) -> MmsaData:
    """Validate every key and shape of an MMSA pickle against `spec` and return float32 splits for the cache.

    `label_table` (CH-SIMS' label.csv) supplies T/A/V labels when the dataset has them but the pickle does not.
    """
    return read_mmsa_content(load_pickle(path), path, spec, setting, label_table)


def read_mmsa_content(content: Any, path: Path, spec: DatasetSpec, setting: str,
                      label_table: Mapping[str, ClipLabels] | None = None) -> MmsaData:
    """`read_mmsa` on a pickle already loaded from `path` (the splits are taken out of `content`)."""
    if not isinstance(content, dict) or any(s not in content for s in SPLITS):
        found = [str(k) for k in content] if isinstance(content, dict) else type(content).__name__
        raise BadInput(f"{path}: expected a dict with splits {', '.join(SPLITS)}; found {found}")
    reader = _SplitReader(path, spec, setting, label_table)
    splits = {name: reader.read(name, content.pop(name)) for name in SPLITS}  # pop: free the float64 originals early
    return MmsaData(splits, reader.replaced, reader.clipped)


class _SplitReader:
    """Checks one split's arrays against the dataset's shapes and converts them; keeps the counts it reports."""

    def __init__(self, path: Path, spec: DatasetSpec, setting: str, label_table: Mapping[str, ClipLabels] | None):
        self.path, self.spec, self.setting, self.label_table = path, spec, setting, label_table
        self.seq_lens = spec.seq_lens[setting]
        self.replaced = {m: 0 for m in MODALITIES}
        self.clipped = 0

    def read(self, name: str, split: Any) -> SplitArrays:
        if not isinstance(split, dict):
            raise BadInput(f"{self.path}: split {name!r} is a {type(split).__name__}, expected a dict of arrays")
        labels = self._vector(name, split, "regression_labels", np.float32)
        n = labels.shape[0]
        ids = self._ids(name, split, n)
        features = {m: self._features(name, split, m, n) for m in MODALITIES}
        text_ids = self._text_ids(name, split, n)
        lengths = self._lengths(name, split, features, text_ids)
        self._check_labels(name, "regression_labels", labels)
        return SplitArrays(features=features, lengths=lengths, label=labels, ids=ids,
                           extra_labels=self._unimodal(name, split, ids, n), text_ids=text_ids)

    def _ids(self, split_name: str, split: dict, n: int) -> list[str]:
        where = self._where(split_name, "id")
        return [id_text(value, where) for value in self._vector(split_name, split, "id", None, n)]

    def _where(self, split: str, key: str) -> str:
        return f"{self.path}: {split}/{key}"

    def _array(self, split_name: str, split: dict, key: str) -> np.ndarray:
        if key not in split:
            raise BadInput(f"{self.path}: split {split_name!r} has no {key!r}; an MMSA pickle holds "
                           "text, audio, vision, regression_labels and id (and *_lengths when unaligned)")
        value = split[key]
        if not isinstance(value, np.ndarray):
            raise BadInput(f"{self._where(split_name, key)} is a {type(value).__name__}, expected a numpy array")
        return value

    def _vector(self, split_name: str, split: dict, key: str, dtype: Any, n: int | None = None) -> np.ndarray:
        array = self._array(split_name, split, key)
        if array.ndim != 1 or (n is not None and array.shape[0] != n):
            expected = f"({n},)" if n is not None else "(N,)"
            raise BadInput(f"{self._where(split_name, key)} has shape {array.shape}, expected {expected}")
        if dtype is None:
            return array
        if array.dtype.kind not in "biuf":
            raise BadInput(f"{self._where(split_name, key)} holds {array.dtype}, expected numbers")
        if np.dtype(dtype).kind == "i" and array.dtype.kind in "fu" and not np.all(np.abs(array) < 2**62):
            raise BadInput(f"{self._where(split_name, key)} holds NaN, inf or values beyond 2**62, expected counts")
        with np.errstate(over="ignore"):  # a label beyond float32 becomes inf, which the label check refuses
            return array.astype(dtype)

    def _features(self, split_name: str, split: dict, modality: str, n: int) -> np.ndarray:
        array = self._array(split_name, split, modality)
        expected = (n, self.seq_lens[modality], self.spec.dims[modality])
        if array.shape != expected:
            own = "; other features: msmix preprocess --from FILE.pkl --name NAME" if self.spec.sources else ""
            raise BadInput(f"{self._where(split_name, modality)} has shape {array.shape}, expected {expected} "
                           f"(N, L, D) for {self.spec.name} {self.setting}{own}")
        if array.dtype.kind not in "biuf":
            raise BadInput(f"{self._where(split_name, modality)} holds {array.dtype}, expected numbers")
        # the unpickled arrays are ours alone: a float32 one is cleaned in place, saving a copy of GBs for MOSEI
        with np.errstate(over="ignore"):  # values beyond float32 become inf, counted and zeroed below
            features = np.require(array, dtype=np.float32, requirements=["C", "W"])
        for start in range(0, n, CHUNK):
            block = features[start:start + CHUNK]
            nonfinite = ~np.isfinite(block)
            self.replaced[modality] += int(np.count_nonzero(nonfinite))
            block[nonfinite] = 0.0
        return features

    def _text_ids(self, split_name: str, split: dict, n: int) -> np.ndarray | None:
        if "text_bert" not in split:
            return None
        array = self._array(split_name, split, "text_bert")
        expected = (n, 3, self.seq_lens["text"])
        if array.shape != expected:
            raise BadInput(f"{self._where(split_name, 'text_bert')} has shape {array.shape}, expected {expected} "
                           "(input_ids, input_mask, segment_ids)")
        if array.dtype.kind not in "biuf" or not np.all(np.abs(array) < 2**62):
            raise BadInput(f"{self._where(split_name, 'text_bert')} must hold finite token numbers")
        return np.rint(array).astype(np.int64)

    def _lengths(self, split_name: str, split: dict, features: dict[str, np.ndarray],
                 text_ids: np.ndarray | None) -> dict[str, np.ndarray]:
        n = features["text"].shape[0]
        text = text_ids[:, 1, :].sum(axis=1) if text_ids is not None else last_nonzero_step(features["text"])
        lengths = {"text": text}
        for modality in ("audio", "vision"):
            key = f"{modality}_lengths"
            if key in split:
                lengths[modality] = self._vector(split_name, split, key, np.int64, n)
                if np.any(lengths[modality] < 0):
                    raise BadInput(f"{self._where(split_name, key)} holds negative lengths")
            elif self.setting == "aligned":
                lengths[modality] = text
            else:
                raise BadInput(f"{self.path}: split {split_name!r} has no {key!r}, which an unaligned MMSA pickle holds")
        return {m: self._clip(lengths[m], features[m].shape[1]) for m in MODALITIES}

    def _clip(self, lengths: np.ndarray, size: int) -> np.ndarray:
        self.clipped += int(np.count_nonzero(lengths > size))
        return np.clip(lengths, 1, size).astype(np.int32)

    def _check_labels(self, split_name: str, key: str, labels: np.ndarray) -> None:
        bound = self.spec.label_range
        nonfinite = np.count_nonzero(~np.isfinite(labels))
        if nonfinite:
            raise BadInput(f"{self._where(split_name, key)} holds {nonfinite} NaN or inf value(s)")
        if np.any(np.abs(labels) > bound + 1e-6):
            raise BadInput(f"{self._where(split_name, key)} has values outside [-{bound:g}, {bound:g}] "
                           f"(min {labels.min():g}, max {labels.max():g})")

    def _unimodal(self, split_name: str, split: dict, ids: list[str], n: int) -> dict[str, np.ndarray]:
        if not self.spec.unimodal_labels:
            return {}
        keys = [f"regression_labels_{m}" for m in UNIMODAL]
        if all(k in split for k in keys):
            extra = {m: self._vector(split_name, split, k, np.float32, n) for m, k in zip(UNIMODAL, keys)}
        elif self.label_table is not None:
            extra = self._from_table(split_name, ids)
        else:
            raise BadInput(f"{self.path}: split {split_name!r} has no {'/'.join(keys)}; put CH-SIMS' label.csv "
                           "beside it to take the unimodal labels from there")
        for m, k in zip(UNIMODAL, keys):
            self._check_labels(split_name, k, extra[m])
        return extra

    def _from_table(self, split_name: str, ids: list[str]) -> dict[str, np.ndarray]:
        assert self.label_table is not None
        unknown = [i for i in ids if i not in self.label_table]
        if unknown:
            raise BadInput(f"{self.path}: {len(unknown)} {split_name} id(s) are not in label.csv, e.g. {unknown[0]!r}")
        return {m: np.array([self.label_table[i].unimodal[m] for i in ids], dtype=np.float32) for m in UNIMODAL}


def last_nonzero_step(features: np.ndarray) -> np.ndarray:
    """(N,) index of the last step with any non-zero value, + 1; 0 for an all-zero sample."""
    lengths = np.zeros(features.shape[0], dtype=np.int64)
    steps = features.shape[1]
    for start in range(0, features.shape[0], CHUNK):
        nonzero = np.any(features[start:start + CHUNK] != 0, axis=2)
        lengths[start:start + CHUNK] = np.where(nonzero.any(axis=1), steps - np.argmax(nonzero[:, ::-1], axis=1), 0)
    return lengths
