"""Candle files, opened and read in bounded chunks: formats, compression, headers.

One pass over the file, never the whole file in memory: :func:`open_candles` recognises the
format from the first row (or the Parquet schema) and returns a :class:`CandleFile` whose
:meth:`CandleFile.chunks` yields raw frames of at most ``chunk_rows`` rows, each with the file
line number of its first row and how far through the file the reader is (for progress).
Compression is told by the file name (``.zip`` holding one CSV, ``.gz``, ``.bz2``, ``.xz``,
``.zst``); every way a file can be broken (empty, truncated, corrupt archive, an archive of
several files, a codec that is not installed) is a :class:`~kallos_models.errors.DataError`
naming the file and the fix.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import lzma
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from kallos_models.data import db
from kallos_models.errors import DataError

FileFormat = Literal["auto", "binance", "ohlcv"]

#: Binance's 12 kline columns, in file order, and our column for each (None: not stored).
BINANCE_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("open time", "open_time"),
    ("open", "open"),
    ("high", "high"),
    ("low", "low"),
    ("close", "close"),
    ("volume", "volume"),
    ("close time", None),
    ("quote asset volume", "quote_asset_volume"),
    ("number of trades", "number_of_trades"),
    ("taker buy base asset volume", "taker_buy_base_asset_volume"),
    ("taker buy quote asset volume", "taker_buy_quote_asset_volume"),
    ("ignore", None),
)
OHLCV_TIME_NAMES = ("timestamp", "open_time", "open time", "time", "date", "datetime")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
ACCEPTED_FORMATS = (
    "binance (the 12 kline columns: Open time, Open, High, Low, Close, Volume, Close time, "
    "Quote asset volume, Number of trades, Taker buy base asset volume, Taker buy quote asset "
    "volume, Ignore; with or without a header row) or ohlcv (timestamp, open, high, low, close, "
    "volume)"
)
#: Rows per chunk: about 30 MB of parsed values, whatever the file's size.
CHUNK_ROWS = 100_000
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Compression told by the last suffix, and the module that reads it.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip", ".zst": "zstd"}
#: What a broken compressed stream raises, by codec.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile, bz2 "Invalid data stream"
    EOFError,  # truncated gzip/bz2/xz
    lzma.LZMAError,
    zipfile.BadZipFile,
    zlib.error,
)


def _norm(name: object) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


def _suffix(path: Path) -> str:
    return path.suffixes[-1].lower() if path.suffixes else ""


@dataclass(frozen=True)
class Chunk:
    """Raw rows of one chunk: ``open_time`` (as read) and the stored columns the format has."""

    frame: pd.DataFrame
    first_line: int
    #: how far through the file the reader is after this chunk, 0..1
    fraction: float


@dataclass(frozen=True)
class CandleFile:
    """A recognised candle file: its format, header, and the columns to read (by position)."""

    path: Path
    format: str
    header: bool
    #: source column position -> our column name
    positions: dict[int, str]
    chunk_rows: int = CHUNK_ROWS

    @property
    def first_line(self) -> int:
        """File line number of the first data row (2 with a header row, 1 without)."""
        return 2 if self.header else 1

    def chunks(self) -> Iterator[Chunk]:
        """The file's rows, in file order, ``chunk_rows`` at a time (one pass, bounded)."""
        if _suffix(self.path) in PARQUET_SUFFIXES:
            yield from self._parquet_chunks()
            return
        line = self.first_line
        size = max(self.path.stat().st_size, 1)
        order = sorted(self.positions)
        with ExitStack() as stack:
            raw, stream = _open_stream(self.path, stack)
            reader = pd.read_csv(
                stream,
                header=0 if self.header else None,
                usecols=order,
                chunksize=self.chunk_rows,
                skipinitialspace=True,
                float_precision="high",  # within 1 ulp of the text; 3x faster
                low_memory=False,
            )
            while True:
                try:
                    part = next(reader)
                except StopIteration:
                    return
                except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
                    raise _unreadable(self.path, exc) from None
                except _STREAM_ERRORS as exc:
                    raise _corrupt(self.path, exc) from None
                part.columns = [self.positions[i] for i in order]
                yield Chunk(part, line, min(raw.tell() / size, 1.0))
                line += len(part)

    def _parquet_chunks(self) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(self.path)
            names = handle.schema_arrow.names
            wanted = [names[i] for i in sorted(self.positions)]
            total = max(handle.metadata.num_rows, 1)
            line = self.first_line
            for batch in handle.iter_batches(batch_size=self.chunk_rows, columns=wanted):
                part = batch.to_pandas()
                part.columns = [self.positions[i] for i in sorted(self.positions)]
                done = line - self.first_line + len(part)
                yield Chunk(part, line, min(done / total, 1.0))
                line += len(part)
        except Exception as exc:  # pyarrow's errors for a bad Parquet file
            if type(exc).__module__.startswith("pyarrow"):
                raise DataError(f"cannot read {self.path} as Parquet: {exc}") from None
            raise


def open_candles(
    path: str | Path, fmt: FileFormat = "auto", *, chunk_rows: int = CHUNK_ROWS
) -> CandleFile:
    """Recognise a candle file's format from its first row (or schema); nothing more is read.

    Parameters
    ----------
    path
        CSV (plain, or compressed: ``.zip`` with one CSV, ``.gz``, ``.bz2``, ``.xz``, ``.zst``
        with the ``zstandard`` package) or Parquet (``.parquet``, ``.pq``).
    fmt
        ``binance``, ``ohlcv`` or ``auto`` (default: recognised from the columns).
    chunk_rows
        Rows per chunk for :meth:`CandleFile.chunks`.

    Raises
    ------
    DataError
        Missing, empty, unreadable or corrupt file, or columns that match no known format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist; check the --file path")
    if path.stat().st_size == 0:
        raise DataError(f"file {path} is empty (0 bytes); check that the download or export worked")
    if _suffix(path) in PARQUET_SUFFIXES:
        names, headerless, width = _parquet_names(path), False, 0
    else:
        first = _first_row(path)
        headerless = _is_time(first[0]) and _norm(first[0]) not in _HEADER_NAMES
        names, width = ([] if headerless else [_norm(c) for c in first]), len(first)
    return CandleFile(path, *_recognise(path, fmt, names, headerless, width), chunk_rows=chunk_rows)


_HEADER_NAMES = {BINANCE_COLUMNS[0][0], *OHLCV_TIME_NAMES}


def _recognise(
    path: Path, fmt: FileFormat, names: list[str], headerless: bool, width: int
) -> tuple[str, bool, dict[int, str]]:
    """(format, has header, positions to read) from the first row, or a DataError."""
    binance_names = [n for n, _ in BINANCE_COLUMNS]
    is_binance = (headerless and width == len(BINANCE_COLUMNS)) or names == binance_names
    time_col = next((n for n in OHLCV_TIME_NAMES if n in names), None)
    is_ohlcv = not headerless and time_col is not None and all(c in names for c in OHLCV_COLUMNS)
    seen = f"{width} unnamed columns" if headerless else str(names)
    if fmt == "binance" or (fmt == "auto" and is_binance):
        if not is_binance:
            raise DataError(
                f"{path} is not a Binance kline file: columns seen {seen}; "
                f"accepted formats: {ACCEPTED_FORMATS}"
            )
        positions = {i: ours for i, (_, ours) in enumerate(BINANCE_COLUMNS) if ours}
        return "binance", not headerless, positions
    if fmt == "ohlcv" or (fmt == "auto" and is_ohlcv):
        if not is_ohlcv:
            raise DataError(
                f"{path} is not an OHLCV file: columns seen {seen}; "
                f"accepted formats: {ACCEPTED_FORMATS}"
            )
        assert time_col is not None
        positions = {names.index(time_col): "open_time"}
        for c in (*OHLCV_COLUMNS, *db.KLINE_COLUMNS):  # kline extras kept when present
            if _norm(c) in names:
                positions[names.index(_norm(c))] = c
        return "ohlcv", True, positions
    raise DataError(
        f"{path}: columns {seen} match no known format; accepted formats: {ACCEPTED_FORMATS}"
    )


def parse_open_times(values: pd.Series) -> pd.Series:
    """Parse open times to naive UTC timestamps; unparseable values become NaT.

    Accepts text (``2018-01-01 00:00:00.000000 UTC``, with or without `` UTC`` and trailing
    spaces, ISO with an offset) and epoch numbers, whose unit is told per value by magnitude:
    seconds, milliseconds (Binance until 2024) or microseconds (Binance from 2025).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
        return ts.dt.tz_localize(None)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numeric = values.astype("float64")
        text = None
    else:
        text = values.astype(str).str.strip()
        numeric = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    is_num = numeric.notna() & np.isfinite(numeric) & (numeric.abs() < 1e17)
    if is_num.any():
        num = numeric[is_num].astype("float64")
        us = np.where(num >= 1e14, num, np.where(num >= 1e11, num * 1e3, num * 1e6))
        out[is_num] = pd.to_datetime(np.round(us).astype("int64"), unit="us", errors="coerce")
    if text is not None and (~is_num).any():
        cleaned = text[~is_num].str.replace(r"\s*UTC$", "", regex=True)
        parsed = pd.to_datetime(cleaned, utc=True, errors="coerce", format="mixed")
        out[~is_num] = parsed.dt.tz_localize(None)
    return out


def _is_time(cell: object) -> bool:
    return bool(parse_open_times(pd.Series([str(cell).strip()])).notna().iloc[0])


def _first_row(path: Path) -> list[str]:
    with ExitStack() as stack:
        _, stream = _open_stream(path, stack)
        try:
            first = pd.read_csv(stream, header=None, nrows=1, dtype=str, skipinitialspace=True)
        except pd.errors.EmptyDataError:
            raise DataError(
                f"file {path} holds no data (empty after decompression, or blank lines only); "
                "check that the download or export worked"
            ) from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        except _STREAM_ERRORS as exc:
            raise _corrupt(path, exc) from None
    return [str(v) for v in first.iloc[0].tolist()]


def _parquet_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return [_norm(n) for n in pq.ParquetFile(path).schema_arrow.names]
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):
            raise DataError(f"cannot read {path} as Parquet: {exc}") from None
        raise


def _open_stream(path: Path, stack: ExitStack) -> tuple[IO[bytes], IO[bytes]]:
    """(the raw file, for its position; the decompressed byte stream) for a CSV file."""
    try:
        raw: IO[bytes] = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - stack closes it
    except OSError as exc:
        detail = exc.strerror or exc
        raise DataError(f"cannot open {path}: {detail}; check its permissions") from None
    codec = COMPRESSIONS.get(_suffix(path))
    stream: Any
    try:
        if codec is None:
            return raw, raw
        if codec == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif codec == "bz2":
            stream = bz2.BZ2File(raw)
        elif codec == "xz":
            stream = lzma.LZMAFile(raw)
        elif codec == "zip":
            stream = _zip_member(path, stack.enter_context(zipfile.ZipFile(raw)))
        else:
            stream = _zstd_stream(path, raw)
    except _STREAM_ERRORS as exc:
        raise _corrupt(path, exc) from None
    return raw, stack.enter_context(stream)


def _zip_member(path: Path, archive: zipfile.ZipFile) -> IO[bytes]:
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        listed = ", ".join(m.filename for m in members[:5]) + (" ..." if len(members) > 5 else "")
        raise DataError(
            f"{path} holds {len(members)} files ({listed or 'none'}); a .zip must hold exactly "
            "one CSV: unzip it and ingest each file with its own --file"
        )
    return archive.open(members[0])


def _zstd_stream(path: Path, raw: IO[bytes]) -> IO[bytes]:
    if importlib.util.find_spec("zstandard") is None:
        raise DataError(
            f"{path} is zstd-compressed and the zstandard package is not installed; "
            "pip install zstandard, or decompress it first (zstd -d) and ingest the CSV"
        )
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[no-any-return]


def _corrupt(path: Path, exc: BaseException) -> DataError:
    detail = str(exc).strip() or type(exc).__name__
    return DataError(
        f"{path} is corrupt or truncated ({detail}); download or export it again "
        "(a .zip, .gz, .bz2, .xz or .zst file must be complete)"
    )


def _unreadable(path: Path, exc: BaseException) -> DataError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(f"cannot read {path} as CSV: {detail}")
