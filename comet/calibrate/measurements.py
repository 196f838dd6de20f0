"""The rows comet.calibrate measures, the files it writes them to, and what every measuring part gets.

A row is (measurement, parameters, value, unit): `parameters` is 'key=value key=value' saying how the value was
measured; the unit is us, GB/s, TFLOP/s, fraction, ... . `Recorder` writes each row as it comes to
results/calibration/<name>_<date>.csv and a line to the .log beside it (a part that crashes keeps the rows
before it); `read_measurements` reads such a CSV back. Rows whose measurement is a HardwareProfile field are
that field's value (comet/calibrate/assemble.py).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from comet.core.config import HardwareProfile

try:
    from tqdm import tqdm
except ImportError:  # optional: without it, plain prints and no progress bars
    tqdm = None


@dataclass(frozen=True)
class Measurement:
    """One CSV row. parameters: 'key=value key=value' (how it was measured); unit: us, GB/s, TFLOP/s, ..."""

    measurement: str
    parameters: str
    value: float
    unit: str


def format_params(**params) -> str:
    """'key=value key=value' in the order given (values must not contain spaces)."""
    return " ".join(f"{k}={v}" for k, v in params.items())


def parse_params(text: str) -> dict[str, str]:
    """format_params' inverse (values stay strings)."""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def read_measurements(path: str | Path) -> list[Measurement]:
    """The rows of a calibration CSV (comment lines starting with '#' skipped)."""
    with open(path, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return [Measurement(r["measurement"], r["parameters"], float(r["value"]), r["unit"]) for r in rows]


class Recorder:
    """The calibration CSV and its log, written row by row (a part that crashes keeps what came before).

    The header lines open both files ('# ' comments in the CSV). With no paths (ranks other than 0 under
    torchrun) it keeps the rows in memory and writes and prints nothing."""

    FIELDS = ("measurement", "parameters", "value", "unit")

    def __init__(self, csv_path: Path | None = None, log_path: Path | None = None, header: Sequence[str] = ()):
        self.rows: list[Measurement] = []
        self._csv = self._log = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv = open(csv_path, "w", newline="")  # closed by close()
            self._csv.writelines(f"# {line}\n" for line in header)
            self._writer = csv.DictWriter(self._csv, fieldnames=self.FIELDS)
            self._writer.writeheader()
        if log_path is not None:
            self._log = open(log_path, "w")
            self._log.writelines(f"{line}\n" for line in header)

    def add(self, measurement: str, value: float, unit: str, **params) -> Measurement:
        """Record one row (value written with 6 significant digits) and log it."""
        m = Measurement(measurement, format_params(**params), float(value), unit)
        self.rows.append(m)
        if self._csv is not None:
            self._writer.writerow({"measurement": m.measurement, "parameters": m.parameters,
                                   "value": f"{m.value:.6g}", "unit": m.unit})
            self._csv.flush()
        self.log(f"{measurement:34s} {m.value:12.5g} {unit:10s} {m.parameters}")
        return m

    def log(self, line: str) -> None:
        """Print `line` and append it to the log (nothing without a log)."""
        if self._log is None:
            return
        write_line(line)
        self._log.write(line + "\n")
        self._log.flush()

    def close(self) -> None:
        for f in (self._csv, self._log):
            if f is not None:
                f.close()


def write_line(line: str) -> None:
    """Print one line without breaking a progress bar."""
    if tqdm is not None:
        tqdm.write(line)
    else:
        print(line, flush=True)


def progress(items: Iterable, desc: str, enabled: bool):
    """tqdm progress over `items` (plain iteration where tqdm is missing or on ranks other than 0)."""
    if tqdm is None:
        return items
    return tqdm(list(items), desc=desc, disable=not enabled, leave=False)


@dataclass
class Context:
    """What every part gets: the recorder, the base profile, the device and its SM count, --quick, rank 0 or not
    (only rank 0 records and shows progress)."""

    rec: Recorder
    base: HardwareProfile
    device: torch.device
    sms: int
    quick: bool
    main_rank: bool = True
