"""Finished runs kept as tidy CSV tables in a folder, appended one run at a time, so a rerun resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import pandas as pd

from .io import write_csv

TEXT_COLUMNS = ("metric", "mask_schedule")  # empty means "none" here, not a missing number


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A CSV written by :class:`RunLog` (empty text cells read back as "")."""
    if not path.exists():
        return pd.DataFrame(columns=list(columns) if columns else None)
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for column in TEXT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame


class RunLog:
    """Tables of finished runs in ``folder``.

    ``files`` maps a table name to its file name, in the order they are written; the last one is the
    main table, whose rows mark runs as done (a run counts once its main row is on disk). ``key``
    gives the identity of a run from a main-table row.
    """

    def __init__(self, folder: Path, files: Mapping[str, str], key: Callable[[Mapping], Hashable],
                 columns: Mapping[str, Sequence[str]] | None = None, write: bool = True):
        self.folder, self.files, self.key, self.write = Path(folder), dict(files), key, write
        self.columns = dict(columns or {})
        self.tables = {name: read_table(self.folder / file, self.columns.get(name)) for name, file in self.files.items()}
        self.main = list(self.files)[-1]

    @property
    def done(self) -> set:
        return {self.key(row) for row in self.tables[self.main].to_dict("records")}

    def add(self, rows: Mapping[str, Iterable[Mapping]]) -> None:
        """Append one run's rows (``{table: [row, …]}``) and rewrite the touched tables atomically, main last."""
        for name in self.files:
            new = list(rows.get(name, ()))
            old = self.tables[name]
            if new:
                frame = pd.DataFrame(new, columns=self.columns.get(name))
                self.tables[name] = frame if not len(old.columns) else pd.concat([old, frame], ignore_index=True)
            if self.write and len(self.tables[name].columns):
                write_csv(self.tables[name], self.folder / self.files[name])
