"""The one error type bad input raises: it names the file, the row and the column."""

from __future__ import annotations


class DataError(Exception):
    """Bad input data. `str()` is a single line meant for the user, not a traceback."""

    def __init__(self, file: str, message: str, row: int | None = None, column: str | None = None,
                 value: object = None):
        self.file, self.row, self.column, self.value = file, row, column, value
        where = file
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        text = f"{where}: {message}"
        if value is not None:
            text += f" (got {_show(value)})"
        super().__init__(text)


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
