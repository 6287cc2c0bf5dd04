"""One exception type for bad user input, so every CLI can report it the same way and exit non-zero."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or configuration.

    The message always says *where*: the dataset (or source) name, the row index when one row is at fault, and the
    file involved. Command-line entry points catch it, print ``error: <message>`` to stderr and exit with status 2.
    """

    def __init__(self, message: str, *, dataset: str | None = None, row: int | None = None, file: str | None = None):
        where = []
        if dataset is not None:
            where.append(f"dataset {dataset!r}")
        if row is not None:
            where.append(f"row {row}")
        if file is not None:
            where.append(f"file {str(file)!r}")
        self.dataset, self.row, self.file = dataset, row, file
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
