"""Plugin discovery and loading: entry points in, a filled `Registry` out.

Nothing here runs at `import neurocodec`. The first reader or writer that needs codecs calls
`default_registry()`, which loads every plugin of the entry-point group `neurocodec.plugins`
(sorted, so the result never depends on installation order) and lets each register its codecs
and modalities. Tests and applications that want isolation call `load_registry()` themselves
and pass the result as `registry=`.

Switches (environment variables):

- `NEUROCODEC_DISABLE_PLUGINS=name1,name2`: skip these plugins (entry-point or distribution
  names), for example one that fails to import.
- `NEUROCODEC_TRACE_PLUGINS=1`: log every plugin loaded and everything it registers.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import threading
from typing import Any, Iterable

import pluggy

from neurocodec.plugin import hookspecs
from neurocodec.errors import NeurocodecError, PluginError, PluginLoadError
from neurocodec.plugin.registry import PluginInfo, Registry

ENTRY_POINT_GROUP = "neurocodec.plugins"
DISABLE_ENV = "NEUROCODEC_DISABLE_PLUGINS"
TRACE_ENV = "NEUROCODEC_TRACE_PLUGINS"
log = logging.getLogger("neurocodec.plugins")


def disabled_from_env() -> set[str]:
    """Plugin names listed in NEUROCODEC_DISABLE_PLUGINS."""
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, str, str]]:
    """The group's entry points with their distribution's name and version, sorted."""
    found, dists = [], {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        # Each `dist.name` or `dist.version` parses the distribution's whole METADATA (its long
        # description included): read it once per distribution, not per entry point and field.
        if ep.dist is None:
            dist, version = "unknown", "unknown"
        else:
            if id(ep.dist) not in dists:
                meta = ep.dist.metadata
                dists[id(ep.dist)] = (meta["Name"], meta["Version"])
            dist, version = dists[id(ep.dist)]
        found.append((ep, dist, version))
    return sorted(found, key=lambda item: (item[0].name, item[1], item[0].value))


def create_plugin_manager(
    *, entry_points: bool = True, disabled: Iterable[str] | None = None,
    plugins: Iterable[tuple[str, Any]] = (),
) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Build a fresh plugin manager and the provenance of each plugin in it.

    `entry_points` loads the installed plugins; `disabled` (default: from the environment) skips
    some by entry-point or distribution name; `plugins` adds (name, module-or-object) pairs
    directly, as a test or an application embedding a private plugin would (one that is also
    installed, and so already loaded, is not added twice).
    A plugin that fails to import raises PluginLoadError naming its distribution.
    """
    skip = disabled_from_env() if disabled is None else set(disabled)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def add(name: str, obj: Any, info: PluginInfo) -> None:
        if name in infos:
            other = infos[name]
            raise PluginError(
                f"two plugins are named {name!r}: from {other.origin} and from {info.origin}"
            )
        pm.register(obj, name=name)
        infos[name] = info

    if entry_points:
        for ep, dist, version in _entry_points():
            if ep.name in skip or dist in skip:
                log.info("plugin %s (%s %s) disabled by %s", ep.name, dist, version, DISABLE_ENV)
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {ep.name!r} from distribution {dist} {version} failed to import "
                    f"({ep.value}): {type(exc).__name__}: {exc}. Fix or uninstall it, or set "
                    f"{DISABLE_ENV}={ep.name} to skip it"
                ) from exc
            add(ep.name, obj, PluginInfo(ep.name, dist, version, ep.value))
    for name, obj in plugins:
        if pm.is_registered(obj):
            continue  # installed and loaded from its entry point already (a plugin's own tests)
        module = getattr(obj, "__name__", type(obj).__name__)
        add(name, obj, PluginInfo(name, "", "", module))
    _check_hook_names(pm, infos)
    return pm, infos


def _check_hook_names(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    """PluginError naming the plugin for a hook implementation no spec declares (a misspelled
    `neurocodec_*` function would otherwise be silently never called)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin)
        origin = infos[name].origin if name in infos else repr(exc.plugin)
        raise PluginError(f"plugin {name!r} ({origin}): {exc}; the hooks are "
                          f"{', '.join(sorted(h for h in dir(hookspecs) if h.startswith('neurocodec_')))}") from None


def build_registry(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], *, trace: bool = False) -> Registry:
    """Let every plugin register its codecs, then its modalities, attributing each to its plugin."""
    registry = Registry()
    registry.trace = trace
    for info in sorted(infos.values(), key=lambda p: p.name):
        registry.add_plugin(info)
    for hook_name, adder in (("neurocodec_register_codecs", registry.add_codec),
                             ("neurocodec_register_modalities", registry.add_modality)):
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        for impl in sorted(impls, key=lambda i: i.plugin_name):
            info = infos[impl.plugin_name]

            def register(value: Any, _adder=adder, _info=info) -> None:
                _adder(value, _info)

            try:
                impl.function(**{a: register for a in impl.argnames})
            except NeurocodecError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{info} failed in "
                    f"{hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
    registry.check()
    return registry


def load_registry(*, entry_points: bool = True, disabled: Iterable[str] | None = None,
                  plugins: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load plugins (see `create_plugin_manager`) and return their filled registry."""
    trace = os.environ.get(TRACE_ENV, "") not in ("", "0")
    if trace and not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stderr))
        log.setLevel(logging.INFO)
    pm, infos = create_plugin_manager(entry_points=entry_points, disabled=disabled, plugins=plugins)
    registry = build_registry(pm, infos, trace=trace)
    registry.plugin_manager = pm
    return registry


_default: Registry | None = None
_lock = threading.Lock()


def default_registry() -> Registry:
    """The registry of all installed plugins, loaded on first use and then reused."""
    global _default
    with _lock:
        if _default is None:
            _default = load_registry()
        return _default
