"""The smoke test: the model's own input example, as a V2 inference request, sent to a new Pod.

MLflow saves the example beside the model: ``serving_input_example.json`` (MLflow 2.13+, the
payload its own scoring server takes: ``{"dataframe_split": {"columns": [...], "data": [...]}}``
for a DataFrame, ``{"inputs": [[...]]}`` for an array) and ``input_example.json`` (the raw
example: split-oriented ``{"columns", "data"}``, a list of rows or of records). Posted as they are
to MLServer's V2 endpoint they get 422, so they are converted:

- an all-numeric table (or array) becomes one tensor ``input-0`` of shape ``[rows, columns]``,
  which MLServer's scikit-learn runtime hands to ``predict`` as a NumPy array;
- a table with text or mixed columns uses MLServer's pandas codec: one input per column and the
  request's ``content_type: pd``, decoded back into a DataFrame with the example's column names.

The answer must be a 200 whose every output holds one finite number per example row: a model
answering another shape (two numbers per row, a class name) fails. Pure but for :func:`send`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3

EXAMPLES = ("serving_input_example.json", "input_example.json")
MAX_ROWS = 100  # rows of the example sent
MAX_ANSWER = 1024 * 1024  # bytes of an answer read
SHOWN = 5  # predictions kept in status


class NotConvertible(ValueError):
    """The example is not something a V2 request can carry."""


class BadAnswer(ValueError):
    """The model's answer is not one finite number per row per output."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class Request:
    body: dict[str, Any]
    rows: int


def _table(example: Any) -> tuple[list[str] | None, list[list[Any]]]:
    """(column names or None, rows) of an example in any of MLflow's shapes."""
    if isinstance(example, Mapping):
        if "dataframe_split" in example:
            return _table(example["dataframe_split"])
        if "dataframe_records" in example:
            return _table(example["dataframe_records"])
        if "columns" in example and "data" in example:
            columns, data = example["columns"], example["data"]
            if not isinstance(columns, list) or not isinstance(data, list):
                raise NotConvertible("columns and data must be lists")
            return [str(c) for c in columns], [_row(r) for r in data]
        for key in ("inputs", "instances"):
            if key in example:
                inputs = example[key]
                if isinstance(inputs, Mapping):
                    raise NotConvertible(f"named {key} ({', '.join(map(str, list(inputs)[:5]))}) are not supported")
                return _table(inputs)
        raise NotConvertible(f"unknown example keys: {', '.join(map(str, list(example)[:5]))}")
    if isinstance(example, list) and example and all(isinstance(r, Mapping) for r in example):
        columns = [str(c) for c in example[0]]
        return columns, [[r.get(c) for c in columns] for r in example]
    if isinstance(example, list) and example:
        return None, [_row(r) for r in example]
    raise NotConvertible("the example holds no rows")


def _row(row: Any) -> list[Any]:
    return list(row) if isinstance(row, list) else [row]


def _datatype(values: Sequence[Any]) -> str | None:
    """The V2 datatype of a column of scalars (None: not all numbers or all booleans)."""
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    return None


def request_of(example: Any) -> Request:
    """The V2 request carrying (at most MAX_ROWS rows of) ``example``."""
    columns, rows = _table(example)
    rows = rows[:MAX_ROWS]
    if not rows or not rows[0]:
        raise NotConvertible("the example holds no rows")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise NotConvertible("its rows have different lengths")
    if columns is not None and len(columns) != width:
        raise NotConvertible(f"{len(columns)} columns named for rows of {width} values")
    flat = [v for r in rows for v in r]
    kind = _datatype(flat)
    if kind is not None and kind != "BOOL":
        body = {"inputs": [{"name": "input-0", "shape": [len(rows), width], "datatype": kind, "data": flat}]}
        return Request(body, len(rows))
    inputs = []
    for i, name in enumerate(columns or [f"input-{i}" for i in range(width)]):
        values = [r[i] for r in rows]
        datatype = _datatype(values)
        if datatype is None:
            if not all(isinstance(v, str) for v in values):
                raise NotConvertible(f"column {name!r} mixes types")
            datatype = "BYTES"
        inputs.append({"name": name, "shape": [len(rows), 1], "datatype": datatype, "data": values})
    return Request({"parameters": {"content_type": "pd"}, "inputs": inputs}, len(rows))


def predictions(status: int, answer: bytes, rows: int) -> list[float]:
    """The numbers of a V2 answer: one finite number per row per output, else BadAnswer."""
    text = answer[:300].decode(errors="replace")
    if status != 200:
        raise BadAnswer(f"answered HTTP {status}: {text}", status)
    try:
        decoded = json.loads(answer)
    except ValueError:
        raise BadAnswer(f"answered 200 with no JSON: {text}", status) from None
    outputs = decoded.get("outputs") if isinstance(decoded, Mapping) else None
    if not isinstance(outputs, list) or not outputs:
        raise BadAnswer(f"answered 200 with no outputs: {text}", status)
    first: list[float] = []
    for output in outputs:
        data = output.get("data") if isinstance(output, Mapping) else None
        name = output.get("name", "?") if isinstance(output, Mapping) else "?"
        if not isinstance(data, list) or len(data) != rows:
            count = len(data) if isinstance(data, list) else 0
            raise BadAnswer(f"output {name!r} holds {count} values for {rows} example rows "
                            f"(shape {output.get('shape') if isinstance(output, Mapping) else None}); "
                            "expected one number per row", status)
        numbers = [v for v in data if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        if len(numbers) != rows:
            bad = next(v for v in data if v not in numbers)
            raise BadAnswer(f"output {name!r} holds {str(bad)[:40]!r}, not a finite number", status)
        first = first or [float(v) for v in numbers]
    return first[:SHOWN]


def send(pool: urllib3.PoolManager, url: str, request: Request, timeout: float) -> tuple[int, bytes, float]:
    """POST the request; (status, body, seconds). Connection errors are retried until ``timeout``
    (a Pod that just turned ready may still be opening its port), then raised as BadAnswer."""
    body = json.dumps(request.body).encode()
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        try:
            answer = pool.request("POST", url, body=body, headers={"Content-Type": "application/json"},
                                  timeout=urllib3.Timeout(connect=min(2.0, timeout), read=timeout),
                                  retries=False, preload_content=False)
            try:
                data = answer.read(MAX_ANSWER)
            finally:
                answer.release_conn()
            return answer.status, data, time.monotonic() - started
        except urllib3.exceptions.HTTPError as e:
            if time.monotonic() + 0.5 > deadline:
                raise BadAnswer(f"did not answer at {url}: {type(e).__name__}") from None
            time.sleep(0.5)


__all__ = ["EXAMPLES", "BadAnswer", "NotConvertible", "Request", "predictions", "request_of", "send"]
