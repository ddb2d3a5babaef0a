"""What crosses to another process: pickles with a fallback, and errors with their story.

``dumps`` pickles with the stdlib, falling back to cloudpickle (lambdas, closures,
functions defined in ``__main__`` under spawn) when it is installed; without it,
the error names the extra to install.

An exception raised in one process reaches another through one encoding, shared
by ``Process.result()`` and the pool: the exception pickled (with cloudpickle as
the fallback, when installed), the formatted traceback, and the type name and
message for when the exception itself can't make the trip.
Building the record never raises, whatever the exception does: an exception whose
``__str__`` or ``__reduce__`` raises still becomes a record, described as well as
it can be.

    child:   record = encode_error(exc)          -> pickled along with the rest
    parent:  exc = decode_error(record, "task 3") -> raised, child traceback as __cause__

Exceptions are pickled the stdlib's way (``BaseException.__reduce__``: the class,
its args, its ``__dict__``), whatever reducers others registered in ``copyreg``:
dask.distributed, once imported, registers tblib's for every exception class, and
those lose what ``__init__`` derives from the args (``SystemExit.code``,
``OSError.errno``).
"""

from __future__ import annotations

import copyreg
import io
import pickle
import traceback

from ._exceptions import CorralError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    ErrorRecord: TypeAlias = tuple[bytes | None, str, str, str]

__all__ = ["decode_error", "dumps", "encode_error"]

# What pickle raises for an object it can't pickle (lambdas raise PicklingError or
# AttributeError, locks TypeError, some extension types ValueError).
PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError)

CLOUDPICKLE_HINT = (
    "corral: lambdas, closures and functions defined in __main__ need cloudpickle: "
    "pip install 'corral[pool]'"
)


def dumps(
    obj: object, protocol: int = pickle.HIGHEST_PROTOCOL, buffer_callback: Any = None
) -> bytes:
    """pickle.dumps, falling back to cloudpickle for what pickle refuses."""
    try:
        return pickle.dumps(obj, protocol, buffer_callback=buffer_callback)
    except PICKLE_ERRORS as first:
        try:
            import cloudpickle  # type: ignore[import-untyped]
        except ImportError:
            first.add_note(CLOUDPICKLE_HINT)
            raise first from None
        data: bytes = cloudpickle.dumps(obj, protocol, buffer_callback=buffer_callback)
        return data


def _safe(fn: object, *args: object) -> str:
    try:
        return str(fn(*args))  # type: ignore[operator]
    except BaseException:
        return "<unprintable>"


def encode_error(exc: BaseException) -> ErrorRecord:
    """(pickled exception or None, traceback text, type name, message). Never raises."""
    typename = _safe(lambda: f"{type(exc).__module__}.{type(exc).__qualname__}")
    message = _safe(str, exc)
    tb = _safe(lambda: "".join(traceback.format_exception(exc)))
    data: bytes | None
    try:
        data = _dumps_exception(exc)
        pickle.loads(data)  # what can't be rebuilt here won't be in the parent either
    except BaseException:
        data = None
    return (data, tb, typename, message)


def _dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception with the stdlib's reducers for exceptions (see above)."""
    table = copyreg.dispatch_table
    if not any(isinstance(k, type) and issubclass(k, BaseException) for k in table):
        return dumps(exc)  # nobody replaced them: the usual path
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {
        k: v for k, v in table.items() if not (isinstance(k, type) and issubclass(k, BaseException))
    }
    try:
        pickler.dump(exc)
    except PICKLE_ERRORS:
        return dumps(exc)  # a local exception class: cloudpickle, if installed
    return buf.getvalue()


def decode_error(record: ErrorRecord, what: str = "the task") -> BaseException:
    """The exception a record describes, with the remote traceback as ``__cause__``.

    When the original can't be rebuilt, a :class:`CorralError` names its type and
    message instead.
    """
    data, tb, typename, message = record
    exc: BaseException
    try:
        if data is None:
            raise ValueError("it could not be pickled")
        exc = pickle.loads(data)
        if not isinstance(exc, BaseException):
            raise TypeError(f"{type(exc).__name__} is not an exception")
    except Exception as why:
        exc = CorralError(f"{what} raised {typename}: {message} (not re-raised as such: {why})")
    from ._workercrash import RemoteTraceback  # loaded on the first remote error

    exc.__cause__ = RemoteTraceback(tb)
    return exc
