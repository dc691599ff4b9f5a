"""PostgreSQL binary COPY for float matrices: ``time_ns, floats...`` rows built and read by numpy."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)


def row_dtype(floats: int, *, with_seq: bool) -> np.dtype:
    """One row of PostgreSQL binary COPY: field count, then (length, value) per field."""
    fields = [("count", ">i2")]
    if with_seq:
        fields += [("seq_len", ">i4"), ("seq", ">i8")]
    fields += [("time_len", ">i4"), ("time_ns", ">i8")]
    for position in range(floats):
        fields += [(f"len_{position}", ">i4"), (f"v_{position}", ">f8")]
    return np.dtype(fields)


def encode_matrix(times: np.ndarray, values: np.ndarray) -> bytes:
    """``_seq, time_ns, floats...`` rows as a PostgreSQL binary COPY stream (NaN stays NaN)."""
    rows, floats = values.shape
    data = np.empty(rows, dtype=row_dtype(floats, with_seq=True))
    data["count"] = 2 + floats
    data["seq_len"] = 8
    data["seq"] = np.arange(rows)
    data["time_len"] = 8
    data["time_ns"] = times
    for position in range(floats):
        data[f"len_{position}"] = 8
        data[f"v_{position}"] = values[:, position]
    return HEADER + data.tobytes() + TRAILER


def read_matrix(conn: Connection, statement: sa.Select, floats: int) -> tuple[np.ndarray, np.ndarray]:
    """Run a ``time_ns, floats...`` select through binary COPY (NULL read as NaN)."""
    selected = statement.subquery()
    columns = list(selected.c)
    no_nulls = sa.select(
        columns[0],
        *(sa.func.coalesce(c, sa.literal_column("'NaN'::float8")) for c in columns[1:]),
    ).order_by(columns[0])
    compiled = no_nulls.compile(dialect=conn.dialect)  # pyformat: %(name)s placeholders
    buffer = bytearray()
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY ({compiled.string}) TO STDOUT (FORMAT BINARY)", compiled.params) as copy:
            for chunk in copy:
                buffer += chunk
    body = memoryview(buffer)[len(HEADER) : len(buffer) - len(TRAILER)]
    data = np.frombuffer(body, dtype=row_dtype(floats, with_seq=False))
    values = np.empty((len(data), floats), dtype=np.float64)
    for position in range(floats):
        values[:, position] = data[f"v_{position}"]
    return data["time_ns"].astype(np.int64), values
