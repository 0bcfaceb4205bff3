"""OpenSSL stays out of `supervisor run` until something uses it (docs/performance.md).

trio (`trio._ssl`, `trio._dtls`), anyio and starlette import `ssl`, `hmac` and `hashlib`
when they are imported, and these load OpenSSL's libraries: ~5 MiB of memory for as long
as the supervisor runs. Yet a supervisor speaks TLS only as a cluster member with an
``https://`` etcd, and hashes nothing. `install()`, called before trio is imported, puts
lazy modules in their place:

- `ssl`, `hashlib` and `hmac` are imported for real at the first use of one of their
  attributes: ``import ssl`` costs nothing, ``ssl.create_default_context()`` works as
  ever (the etcd client's TLS).
- ``hmac.compare_digest`` is served without importing `hmac`: `secrets` (starlette's
  and ours, for tokens) imports it by name (``from hmac import compare_digest``). It is
  the standard library's other constant-time comparison, `_operator._compare_digest`
  (what `hmac` itself uses without OpenSSL).

Importing this module installs them (`supervisor.run` imports it first). A module
already imported is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from _operator import _compare_digest
from typing import Any

LAZY = ("ssl", "hashlib", "hmac")


def install() -> None:
    """Put the lazy modules in `sys.modules` (see the module)."""
    for name in LAZY:
        if name not in sys.modules:
            spec = importlib.util.find_spec(name)
            if spec is not None:
                sys.modules[name] = _Lazy(name, spec)


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
        served = _SERVED.get((self.__name__, name))
        if served is not None:
            return served
        if name == "__path__":  # asked by ``from x import y``: not a package
            raise AttributeError(name)
        if self.__name__ == "ssl" and name in _SSL_AGAIN and _initializing("asyncio.sslproto"):
            return _SSL_AGAIN[name]
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        if self.__name__ == "ssl":
            _fix_asyncio(real)
        return getattr(real, name)


# asyncio (which starlette imports) names two of ssl's exceptions when it is imported:
# ``SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)``, caught by its TLS
# code. Until ssl is imported no such error can be raised (nothing holds an SSL object),
# so asyncio gets stand-ins, and the real ones when ssl is imported.
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


_SERVED: dict[tuple[str, str], Any] = {("hmac", "compare_digest"): _compare_digest}

install()
