"""The registry of codecs and modalities, filled by plugins, consulted by readers and writers."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import attrs

from neurocodec.plugin.codecs import Codec, CodecError
from neurocodec.plugin.filters import REFUSED_IDS, Filter
from neurocodec.errors import DuplicateRegistrationError, PluginError, UnknownCodecError, UnknownModalityError
from neurocodec.format import layout
from neurocodec.plugin.modality import ModalitySpec

log = logging.getLogger("neurocodec.plugins")


@attrs.frozen(slots=True)
class PluginInfo:
    """Where a plugin came from: its entry-point name, distribution and version, and module."""

    name: str
    distribution: str
    version: str
    module: str

    @property
    def origin(self) -> str:
        """Where it came from, for messages: `neurocodec 0.1.0` or `registered directly`."""
        return f"{self.distribution} {self.version}".strip() if self.distribution else "registered directly"

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.origin})"


@attrs.frozen(slots=True)
class _Entry:
    value: Any
    plugin: PluginInfo


class Registry:
    """Codecs and array filters by id and modalities by name, each remembering the plugin that
    supplied it."""

    def __init__(self) -> None:
        self._codecs: dict[str, _Entry] = {}
        self._filters: dict[str, _Entry] = {}
        self._modalities: dict[str, _Entry] = {}
        self._fallbacks: list[_Entry] = []
        self._plugins: dict[str, PluginInfo] = {}
        self.trace = False
        self.plugin_manager: Any = None  # the pluggy manager the registry was built from

    # -- registration -------------------------------------------------------------------------
    def add_plugin(self, plugin: PluginInfo) -> None:
        """Record that `plugin` is loaded (it may register nothing)."""
        self._plugins[plugin.name] = plugin

    def add_codec(self, codec: type[Codec] | type[Filter], plugin: PluginInfo) -> None:
        """Register a codec class, or a filter class (`Filter`, kept in a table of its own); a
        duplicate id is an error naming both plugins."""
        if isinstance(codec, type) and issubclass(codec, Filter):
            self.add_filter(codec, plugin)
            return
        if not (isinstance(codec, type) and issubclass(codec, Codec)):
            raise PluginError(f"plugin {plugin.name!r} registered {codec!r}, which is not a Codec subclass")
        codec_id = getattr(codec, "codec_id", None)
        if not isinstance(codec_id, str) or not codec_id:
            raise PluginError(f"plugin {plugin.name!r} registered {codec.__name__} without a codec_id")
        if codec_id in self._codecs:
            other = self._codecs[codec_id].plugin
            raise DuplicateRegistrationError(
                f"codec id {codec_id!r} is registered by {other} and by {plugin}"
            )
        self._codecs[codec_id] = _Entry(codec, plugin)
        if self.trace:
            log.info("plugin %s registered codec %r", plugin.name, codec_id)

    def add_filter(self, filt: type[Filter], plugin: PluginInfo) -> None:
        """Register a filter class under its `filter_id`; a duplicate id is an error naming both
        plugins, and the ids of numcodecs codecs that execute data (pickle, msgpack, ...) are refused."""
        filter_id = getattr(filt, "filter_id", None)
        if not isinstance(filter_id, str) or not filter_id:
            raise PluginError(f"plugin {plugin.name!r} registered filter {filt.__name__} without a filter_id")
        if filter_id in REFUSED_IDS:
            raise PluginError(f"plugin {plugin.name!r} registered filter id {filter_id!r}, which is refused: "
                              "numcodecs' codec of that id can execute or dereference data")
        if not isinstance(getattr(filt, "size_preserving", None), bool):
            raise PluginError(f"plugin {plugin.name!r} registered filter {filter_id!r} without a boolean "
                              "size_preserving")
        if filter_id in self._filters:
            other = self._filters[filter_id].plugin
            raise DuplicateRegistrationError(f"filter id {filter_id!r} is registered by {other} and by {plugin}")
        self._filters[filter_id] = _Entry(filt, plugin)
        if self.trace:
            log.info("plugin %s registered filter %r", plugin.name, filter_id)

    def add_modality(self, spec: ModalitySpec, plugin: PluginInfo) -> None:
        """Register a modality spec; a duplicate name is an error naming both plugins."""
        if not isinstance(spec, ModalitySpec):
            raise PluginError(f"plugin {plugin.name!r} registered {spec!r}, which is not a ModalitySpec")
        problem = layout.field_name_problem(spec.name)
        if problem is not None:  # a modality name is the default field name: the same rules
            raise PluginError(f"plugin {plugin.name!r} registered modality {spec.name!r}: {problem}")
        if spec.name in self._modalities:
            other = self._modalities[spec.name].plugin
            raise DuplicateRegistrationError(
                f"modality {spec.name!r} is registered by {other} and by {plugin}"
            )
        entry = _Entry(spec, plugin)
        self._modalities[spec.name] = entry
        if spec.fallback:
            self._fallbacks.append(entry)
        if self.trace:
            log.info("plugin %s registered modality %r (codec %r)", plugin.name, spec.name, spec.codec_id)

    def check(self) -> None:
        """Verify every modality's codec is registered (called once all plugins are in)."""
        for name, entry in self._modalities.items():
            if entry.value.codec_id not in self._codecs:
                raise PluginError(
                    f"modality {name!r} of plugin {entry.plugin.name!r} uses codec "
                    f"{entry.value.codec_id!r}, which no plugin registers"
                )

    # -- lookup -------------------------------------------------------------------------------
    def codec(self, config: Mapping[str, Any], *, field: str | None = None,
              plugin_hint: str | None = None, source: str | None = None) -> Codec:
        """Instantiate the codec a config names; an unknown id says which plugin to install, and
        a config the codec rejects is an UnknownCodecError too. `field` and `source` (the path of
        the manifest the config is from) name where it came from in these errors."""
        codec_id = config.get("id")
        at = f"{source}: " if source else ""
        where = f" (field {field!r})" if field else ""
        entry = self._codecs.get(codec_id)
        if entry is None:
            hint = f"; install the plugin that provides it: {plugin_hint}" if plugin_hint else ""
            raise UnknownCodecError(f"{at}codec {codec_id!r}{where} is not provided by any installed plugin{hint}")
        try:
            if getattr(entry.value, "uses_filters", False):  # a codec of filter chains gets this table
                return entry.value.from_config(config, filters=self.filters())
            return entry.value.from_config(config)
        except Exception as exc:  # a plugin's constructor may raise anything on a bad config
            detail = str(exc) if isinstance(exc, (CodecError, UnknownCodecError)) else f"{type(exc).__name__}: {exc}"
            raise UnknownCodecError(f"{at}codec {codec_id!r}{where} of plugin {entry.plugin.name!r} "
                                    f"rejects its config: {detail}") from None

    def filters(self) -> dict[str, type[Filter]]:
        """The registered filter classes by id (the allowlist of filter chains)."""
        return {k: e.value for k, e in self._filters.items()}

    def filter_ids(self, plugin: str | None = None) -> list[str]:
        """Registered filter ids, optionally only those of one plugin."""
        return sorted(k for k, e in self._filters.items() if plugin is None or e.plugin.name == plugin)

    def codec_plugin(self, codec_id: str) -> PluginInfo:
        """The plugin that registered `codec_id`."""
        if codec_id not in self._codecs:
            raise UnknownCodecError(f"codec {codec_id!r} is not provided by any installed plugin")
        return self._codecs[codec_id].plugin

    def modality(self, name: str) -> ModalitySpec:
        """The spec registered under `name`."""
        entry = self._modalities.get(name)
        if entry is None:
            raise UnknownModalityError(
                f"modality {name!r} is not registered; known: {', '.join(sorted(self._modalities))}"
            )
        return entry.value

    def modality_plugin(self, name: str) -> PluginInfo:
        """The plugin that registered modality `name`."""
        self.modality(name)
        return self._modalities[name].plugin

    def resolve(self, field: str, value: Any, modality: str | None = None) -> ModalitySpec:
        """The spec for a field: the modality it is mapped to (`modality`, which must be registered),
        else the modality of the field's name, else the first fallback accepting value."""
        if modality is not None:
            return self.modality(modality)
        entry = self._modalities.get(field)
        if entry is not None and not entry.value.fallback:
            return entry.value
        for fallback in self._fallbacks:
            if fallback.value.accepts is not None and fallback.value.accepts(value):
                return fallback.value
        raise UnknownModalityError(
            f"field {field!r}: no registered modality of that name and no fallback accepts a "
            f"{type(value).__name__}"
        )

    def nwb_extractor(self, modality: str) -> Any:
        """The NWB extractor a plugin of this registry offers for `modality` (the first non-None
        answer to the hook `neurocodec_nwb_extractor`), or None when no plugin reads it from NWB
        files (or the registry was not built from plugins)."""
        if self.plugin_manager is None:
            return None
        return self.plugin_manager.hook.neurocodec_nwb_extractor(modality=modality)

    # -- listing ------------------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        """Loaded plugins, sorted by name."""
        return sorted(self._plugins.values(), key=lambda p: p.name)

    def codec_ids(self, plugin: str | None = None) -> list[str]:
        """Registered codec ids, optionally only those of one plugin."""
        return sorted(k for k, e in self._codecs.items() if plugin is None or e.plugin.name == plugin)

    def modality_names(self, plugin: str | None = None, *, fallbacks: bool = True) -> list[str]:
        """Registered modality names, optionally only one plugin's, optionally without fallbacks."""
        return sorted(
            k for k, e in self._modalities.items()
            if (plugin is None or e.plugin.name == plugin) and (fallbacks or not e.value.fallback)
        )

    def __iter__(self) -> Iterable[ModalitySpec]:
        return iter(e.value for e in self._modalities.values())
