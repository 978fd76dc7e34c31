"""Compiled programs kept between processes, found without tracing.

JAX's persistent compilation cache saves the XLA compile, but every process still traces and
lowers the program to find its cache entry, which costs more than a small image takes to
render. The command-line tools therefore also keep each compiled executable on disk under a
key made only of what can be read without tracing: the function, its static arguments, the
shapes and dtypes of its array arguments, the jaxdiff sources, the JAX version and the device.

The cache folder is ``$JAXDIFF_CACHE_DIR`` (``off`` disables both caches), by default
``~/.cache/jaxdiff``: ``xla/`` holds JAX's compilation cache and ``programs/`` the executables.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jaxlib

from jaxdiff.io.atomic import atomic_output

_loaded: dict[str, Callable] = {}
_OPTIONS = {"xla_embed_ir_in_executable": False}
_root: Path | None = None  # set by enable(): where this process keeps programs
_JAX_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
_before: dict[str, Any] | None = None  # JAX's settings that enable() changed, as they were


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off."""
    folder = os.environ.get("JAXDIFF_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxdiff"
    )
    return None if folder == "off" else Path(folder)


def enable() -> None:
    """Keep compiled programs on disk for this process (the command-line tools call this).

    Points JAX's persistent compilation cache at ``<cache>/xla`` for every compile, and lets
    :func:`call` keep whole executables in ``<cache>/programs``.
    """
    global _root, _before
    _root = cache_root()
    if _root is None:
        return
    if _before is None:
        _before = {name: getattr(jax.config, name) for name in _JAX_SETTINGS}
    jax.config.update("jax_compilation_cache_dir", str(_root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def disable() -> None:
    """Undo :func:`enable`: plain calls again, and JAX's compilation cache settings as they
    were (for a process that goes on after a command-line entry point returned)."""
    global _root, _before
    _root = None
    _loaded.clear()
    if _before is None:
        return
    from jax.experimental.compilation_cache import compilation_cache

    for name, value in _before.items():
        jax.config.update(name, value)
    _before = None
    compilation_cache.reset_cache()  # JAX decides once per process whether the cache is used


@functools.cache
def _environment() -> str:
    """Everything outside the call that changes the compiled program."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    device = jax.local_devices()[0]
    parts = (
        jax.__version__,
        jaxlib.__version__,
        device.platform,
        getattr(device, "device_kind", ""),
        str(jax.device_count()),
        str(jax.config.jax_enable_x64),
        os.environ.get("XLA_FLAGS", ""),
        digest.hexdigest(),
    )
    return "\n".join(parts)


def _key(name: str, static: Any, args: tuple, device) -> str:
    leaves, tree = jax.tree_util.tree_flatten(args)
    types = ",".join(str(jax.typeof(x)) for x in leaves)
    # an executable is bound to the device it was compiled for
    text = "\n".join((_environment(), name, repr(static), str(tree), types, str(device.id)))
    return hashlib.sha256(text.encode()).hexdigest()


def setup_device():
    """Where small set-up programs run: with several CPU devices and a CPU default, the last
    one, so that they do not wait behind an image queued on the default device (a device
    runs its programs one after the other); otherwise the default device."""
    devices = jax.local_devices()
    if len(devices) > 1 and devices[0].platform == "cpu":
        return devices[-1]
    return devices[0]


def call(name: str, jitted, static: dict, *args, device=None):
    """``jitted(*args, **static)`` through a compiled executable kept on disk.

    ``name`` names the program in the key; ``static`` holds the jit-static keyword arguments
    (hashable, with a stable ``repr``); ``device`` is where it runs (default: the first local
    device), for arguments not committed to another one. Unless :func:`enable` was called
    this is a plain call.
    """
    if _root is None:
        if device is None:
            return jitted(*args, **static)
        with jax.default_device(device):
            return jitted(*args, **static)
    device = device or jax.local_devices()[0]
    key = _key(name, static, args, device)
    path = _root / "programs" / f"{name}-{key[:32]}.bin"
    program = _loaded.get(key)
    if program is None and (program := _load(path, device)) is not None:
        try:
            out = program(*args)
        except jax.errors.JaxRuntimeError:  # an entry that cannot run: compile again
            path.unlink(missing_ok=True)
            program = None
        else:
            _loaded[key] = program
            return out
    if program is None:
        program, keep = _compile_afresh(jitted, static, args, device)
        if keep:
            _store(path, program)
        _loaded[key] = program
    return program(*args)


def _compile_afresh(jitted, static: dict, args: tuple, device):
    """Compile without JAX's persistent cache: an executable that cache deserialized can lack
    the code of some of its kernels when it is serialized again. Returns the program and
    whether it is safe to keep (no persistent-cache hit was reported while compiling)."""
    from jax.experimental.compilation_cache import compilation_cache

    _listen_for_cache_hits()
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # JAX decides once per process whether the cache is used
    hits_before = _cache_hits[0]
    try:
        # an option of its own keeps this compile apart from any in-memory or on-disk entry
        # of the same program compiled by a plain call
        with jax.default_device(device):
            lowered = jitted.lower(*args, **static)
        return lowered.compile(compiler_options=_OPTIONS), _cache_hits[0] == hits_before
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        compilation_cache.reset_cache()


_cache_hits = [0]  # JAX persistent-cache hits reported in this process


@functools.cache
def _listen_for_cache_hits() -> None:
    """Count JAX's persistent-cache hits (one listener for the process)."""

    def listener(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            _cache_hits[0] += 1

    jax.monitoring.register_event_listener(listener)


def _load(path: Path, device):
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as fh:
            payload = pickle.load(fh)
        # the programs kept here run on one device, however many there are
        return serialize_executable.deserialize_and_load(*payload, execution_devices=[device])
    except FileNotFoundError:
        return None
    except Exception:  # a stale or damaged entry is compiled again and replaced
        return None


def _store(path: Path, program) -> None:
    from jax.experimental import serialize_executable

    try:
        payload = pickle.dumps(serialize_executable.serialize(program))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            Path(tmp).write_bytes(payload)
    except Exception:  # a cache that cannot be written only costs the next run a compile
        pass
