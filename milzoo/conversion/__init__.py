"""Weights trained by other toolkits, converted key by key into milzoo Hub folders (``milzoo convert``).

``convert(FORMAT, source, out_dir)`` reads a state dict safely (``torch.load(weights_only=True)`` or safetensors,
see ``_source``), lets the converter that a plugin registered for ``FORMAT`` map it
(:class:`milzoo.components.Converter`), checks every key and shape, and writes a Hub folder that
``milzoo.load_pretrained`` loads; ``convert_model`` does the same in memory.  ``milzoo list converters`` shows
the formats.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # _convert
    "convert": "_convert", "convert_model": "_convert", "Converted": "_convert", "get_converter": "_convert",
    # _source
    "read_state_dict": "_source", "strip_prefixes": "_source", "source_file": "_source", "is_plain": "_source",
    # the plugin side
    "Converter": "milzoo.components.converter", "ConversionPlan": "milzoo.components.converter",
    "ConversionError": "milzoo.errors",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
