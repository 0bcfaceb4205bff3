"""Modules `supervisor run` imports but seldom uses load only when used (docs/performance.md).

trio, anyio and starlette import, when they are imported, modules that a supervisor
uses rarely or never, and each costs memory for as long as it runs:

- `ssl`, `hashlib`, `hmac` (trio's `_ssl` and `_dtls`, anyio, starlette) load OpenSSL's
  libraries: ~5 MiB. A supervisor speaks TLS only as a cluster member with an
  ``https://`` etcd, and hashes nothing.
- `asyncio` (starlette, for ``iscoroutinefunction``): ~1 MiB.
- `http.client`, which imports the `email` package (starlette's `HTTPException`, for
  status phrases), and `email.utils` (starlette's responses, for dates in headers).
- `shutil` (`ctypes.util`, `tempfile`), whose import loads zlib, bz2, lzma and their
  libraries to see whether they are there, and `tempfile` (`ctypes.util`, starlette's
  form parser, for uploaded files).
- `datetime`, `http.cookies` and `mimetypes` (starlette's responses: cookies' expiry,
  cookies, file responses), `html` and `html.entities` (starlette's debug error page),
  `idna` (trio's resolution of non-ASCII host names).

`install()`, called before trio is imported, puts lazy modules in their place: each is
imported for real at the first use of one of its attributes (``import ssl`` costs
nothing, ``ssl.create_default_context()`` works as ever). A few attributes are served
without importing the module: those imported by name (``from hmac import
compare_digest``) by modules we import but used only later, or never:

- ``hmac.compare_digest`` is `_operator._compare_digest` (what `hmac` itself uses);
- ``asyncio.iscoroutinefunction`` is `inspect.iscoroutinefunction` until asyncio is
  imported (only asyncio can mark a function as its coroutine function otherwise);
- ``http.client.responses`` is built from `http.HTTPStatus`, as `http.client` builds it;
- ``email.utils.formatdate`` and ``format_datetime``, and ``mimetypes.guess_type``,
  import their module when called;
- ``datetime.datetime``, to `starlette.responses` alone (which only asks whether a
  cookie's expiry is one), is a class no object is an instance of until datetime is
  imported: none can be made before; ``tempfile.SpooledTemporaryFile``, to
  `starlette.formparsers` alone (which only calls it), imports tempfile when called.

Importing this module installs them (`supervisor.run` imports it first). A module
already imported is left as it is. tests/e2e/test_footprint.py checks that a running
supervisor has not loaded them, and that each works when used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from _operator import _compare_digest
from collections.abc import Callable
from http import HTTPStatus
from inspect import iscoroutinefunction
from opcode import opmap
from typing import Any

LAZY = (
    "ssl",
    "hashlib",
    "hmac",
    "asyncio",
    "http.client",
    "http.cookies",
    "email.utils",
    "html",
    "idna",
    "mimetypes",
    "shutil",
    "datetime",
    "tempfile",
)
_IMPORT_NAME = opmap["IMPORT_NAME"]


def install() -> None:
    """Put the lazy modules in `sys.modules` (see the module)."""
    for name in LAZY:
        if name not in sys.modules:
            spec = importlib.util.find_spec(name)
            if spec is not None:
                lazy = _Lazy(name, spec)
                sys.modules[name] = lazy
                parent, _, child = name.rpartition(".")
                if parent:  # as the import of a submodule binds it in its package
                    setattr(sys.modules[parent], child, lazy)


def real(name: str) -> types.ModuleType:
    """The module `name` itself, imported now if it is still lazy."""
    module = sys.modules.get(name)
    if isinstance(module, _Lazy):
        module._load()
    return importlib.import_module(name)


class _Lazy(types.ModuleType):
    """A module that is imported for real at the first access to an attribute it lacks;
    from then on it holds the real module's attributes too.

    (Not `importlib.util.LazyLoader`: its modules load at any attribute access, and every
    later ``import`` statement reads ``__spec__``.)
    """

    def __init__(self, name: str, spec: Any) -> None:
        super().__init__(name)
        self.__spec__ = spec

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            served = _SERVED.get((self.__name__, name))
            if served is None:
                importer = str(sys._getframe(1).f_globals.get("__name__"))  # who asks
                served = _SERVED_TO.get((self.__name__, name, importer))
            if served is not None:
                return served
        if name == "__path__" and _asked_by_from_import():
            # ``from x import y`` asks whether x is a package first; saying no makes it
            # look y up as an attribute (served, or the module is imported for real then)
            raise AttributeError(name)
        if self.__name__ == "ssl" and name in _SSL_AGAIN and _initializing("asyncio.sslproto"):
            return _SSL_AGAIN[name]
        return getattr(self._load(), name)

    def _load(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        if self.__name__ == "ssl":
            _fix_asyncio(module)
        return module


def _asked_by_from_import() -> bool:
    """Whether the attribute is looked up by an ``import`` statement's own code (a
    ``from x import y``), rather than by the import system (``import x.sub``, which
    needs the real package's path) or anyone else."""
    frame = sys._getframe(2)  # (0 is this function, 1 _Lazy.__getattr__)
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] == _IMPORT_NAME


# asyncio names two of ssl's exceptions when it is imported: ``SSLAgainErrors =
# (ssl.SSLWantReadError, ssl.SSLSyscallError)``, caught by its TLS code. Until ssl is
# imported no such error can be raised (nothing holds an SSL object), so asyncio gets
# stand-ins, and the real ones when ssl is imported.
_SSL_AGAIN: dict[str, type[Exception]] = {
    "SSLWantReadError": type("SSLWantReadError", (OSError,), {}),
    "SSLSyscallError": type("SSLSyscallError", (OSError,), {}),
}


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(module.__spec__, "_initializing", False))


def _fix_asyncio(ssl: Any) -> None:
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None and getattr(sslproto, "SSLAgainErrors", None) == tuple(
        _SSL_AGAIN.values()
    ):
        vars(sslproto)["SSLAgainErrors"] = (ssl.SSLWantReadError, ssl.SSLSyscallError)


def _iscoroutinefunction(func: object) -> bool:
    """asyncio's, once asyncio is imported (it also knows functions it marked itself)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or isinstance(asyncio, _Lazy):
        return iscoroutinefunction(func)
    return bool(asyncio.iscoroutinefunction(func))


def _called_from(module: str, name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(real(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class _InstancesOnceLoaded(type):
    """`isinstance` against the class `name` of the lazy module `module`, which is
    False while it is lazy."""

    module: str

    def __instancecheck__(cls, obj: object) -> bool:
        module = sys.modules.get(cls.module)
        return (
            module is not None
            and not isinstance(module, _Lazy)
            and isinstance(obj, getattr(module, cls.__name__))
        )

    # Any other use (a later starlette calling ``datetime.now()`` or making one) gets
    # the real class, datetime imported then: never an error, only the memory back.
    def __getattr__(cls, name: str) -> Any:
        return getattr(getattr(real(cls.module), cls.__name__), name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return getattr(real(cls.module), cls.__name__)(*args, **kwargs)


class _Datetime(metaclass=_InstancesOnceLoaded):
    module = "datetime"


_Datetime.__name__ = "datetime"

_SERVED: dict[tuple[str, str], Any] = {
    ("hmac", "compare_digest"): _compare_digest,
    ("asyncio", "iscoroutinefunction"): _iscoroutinefunction,
    ("http.client", "responses"): {status.value: status.phrase for status in HTTPStatus},
    ("email.utils", "formatdate"): _called_from("email.utils", "formatdate"),
    ("email.utils", "format_datetime"): _called_from("email.utils", "format_datetime"),
    ("mimetypes", "guess_type"): _called_from("mimetypes", "guess_type"),
}

_SERVED_TO: dict[tuple[str, str, str], Any] = {
    ("datetime", "datetime", "starlette.responses"): _Datetime,
    ("tempfile", "SpooledTemporaryFile", "starlette.formparsers"): _called_from(
        "tempfile", "SpooledTemporaryFile"
    ),
}
install()
