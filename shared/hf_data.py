"""Hugging Face datasets in and out, with the `datasets` library (`pip install 'sparring[datasets]'`).

In: `open_dataset(path, split)` opens what a `prompts: {source: hf, path: ...}` names: a `save_to_disk`
directory (a Dataset, or a DatasetDict and its `split`), a directory of data files, parquet / arrow /
jsonl / json / csv files (a glob is expanded), or a hub id (`load_dataset(path, split=split)`). Parquet and
arrow files are read straight into memory (no copy in the `datasets` cache), so an API upload is read by
this same code when it is checked and when a run reads it. What the rows must hold is checked by
`shared/prompts.py::parse_dataset_prompts`, with the row and column of every problem.

Out: `write_pairs(rows, out, fmt)` writes TRL preference rows (`prompt` / `chosen` / `rejected`, standard or
conversational) as a parquet file or a `save_to_disk` directory that `datasets.load_from_disk` opens and
TRL's DPOTrainer takes as its train_dataset.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

INSTALL = "pip install 'sparring[datasets]'"
PARQUET_MAGIC = b"PAR1"


HF_DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")


def hf_dataset_is_local(path: str) -> bool:
    """A `prompts.path` of source hf that names local files or a directory (else: a hub id)."""
    p = Path(path).expanduser()
    return (
        path.startswith(("/", "./", "../", "~")) or p.exists() or any(ch in path for ch in "*?[")
        or p.suffix in HF_DATA_SUFFIXES
    )  # fmt: skip


def hf_local_files(path: str) -> list[Path]:
    """The directory or the files (a glob is expanded) a local hf `path` names; empty when none exist."""
    import glob

    p = Path(path).expanduser()
    if p.exists():
        return [p]
    return sorted(Path(m) for m in glob.glob(str(p)))


class DatasetError(ValueError):
    """A dataset that cannot be opened (missing library, file, split or a hub error); the message says which."""


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"Hugging Face datasets need the `datasets` library: {INSTALL}") from None
    return datasets


def _files_dataset(datasets: Any, files: list[Path], where: str) -> Any:
    suffixes = {f.suffix for f in files}
    if len(suffixes) != 1 or (suffix := suffixes.pop()) not in HF_DATA_SUFFIXES:
        raise DatasetError(f"{where}: expected files of one kind ({', '.join(HF_DATA_SUFFIXES)}), got {', '.join(sorted(f.name for f in files)[:5])}")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        return datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files]))
    if suffix == ".arrow":
        return datasets.concatenate_datasets([datasets.Dataset.from_file(str(f), in_memory=True) for f in files])
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv"}[suffix]
    return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")


def open_dataset(path: str, split: str = "train") -> Any:
    """The `datasets.Dataset` that `path` names (module docstring); raises `DatasetError`."""
    datasets = _datasets()
    try:
        if not hf_dataset_is_local(path):
            return datasets.load_dataset(path, split=split)
        files = hf_local_files(path)
        if not files:
            raise DatasetError(f"{path}: no such file or directory")
        if len(files) == 1 and files[0].is_dir():
            d = files[0]
            if (d / "dataset_dict.json").is_file() or (d / "state.json").is_file():
                ds = datasets.load_from_disk(str(d))
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise DatasetError(f"{path}: no split {split!r} (splits: {', '.join(ds)})")
                    ds = ds[split]
                return ds
            return datasets.load_dataset(str(d), split=split)
        return _files_dataset(datasets, [f for f in files if f.is_file()], path)
    except DatasetError:
        raise
    except Exception as err:  # the library's own errors (bad parquet, unknown split, hub unreachable)
        text = " ".join(str(err).split())[:500]
        raise DatasetError(f"{path}: cannot open as a dataset: {type(err).__name__}: {text}") from None


def is_parquet(data: bytes) -> bool:
    """Parquet files start and end with the magic bytes PAR1 (a JSONL file never starts with them)."""
    return len(data) >= 8 and data[:4] == PARQUET_MAGIC and data[-4:] == PARQUET_MAGIC


PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_finish_reason", "rejected_finish_reason")


def pairs_table(rows: Iterable[dict[str, Any]], conversational: bool) -> Any:
    """A pyarrow table of TRL preference rows, with a fixed schema (an empty export still has its columns)."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    text = pa.list_(message) if conversational else pa.string()
    schema = pa.schema(
        [("prompt", text), ("chosen", text), ("rejected", text), ("chosen_finish_reason", pa.string()),
         ("rejected_finish_reason", pa.string())]
    )  # fmt: skip
    rows = list(rows)
    return pa.Table.from_pylist([{c: r.get(c) for c in PAIR_COLUMNS} for r in rows], schema=schema)


def parquet_bytes(rows: Iterable[dict[str, Any]], conversational: bool) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pairs_table(rows, conversational), sink)
    return bytes(sink.getvalue().to_pybytes())


def save_dataset_dir(parquet_file: Path, out: Path) -> int:
    """A `save_to_disk` directory at `out` from a parquet export; returns its row count."""
    datasets = _datasets()
    import pyarrow.parquet as pq

    ds = datasets.Dataset(pq.read_table(parquet_file))
    ds.save_to_disk(str(out))
    return len(ds)


ExportFormat = Literal["jsonl", "parquet", "dataset"]
