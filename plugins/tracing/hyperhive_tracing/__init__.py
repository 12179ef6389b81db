"""hyperhive-tracing: one trace per piece of work across the swarm.

A message from outside (the operator's, or a hive event no traced work caused)
starts a trace; the turn it wakes, that turn's tool calls, model use and sends,
the turns the sends wake, questions to the operator and approvals, naps and
compactions are its spans (``hyperhive_tracing.capture``). Spans are kept in the
table ``tracing_spans`` (``hyperhive_tracing.store``), shown on the dashboard
(``hyperhive_tracing.view``) and exported over OTLP when ``[tracing]
otlp_endpoint`` is set (``hyperhive_tracing.export``). docs/tracing.md says more.
"""

from __future__ import annotations

from hyperhive_tracing import plugin, view
from hyperhive_tracing.config import TracingSection

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

__all__ = ["TracingSection"]

# The plugin is this module: it takes the hook implementations of the capture and of the view.
_HOOKS = {
    name: value
    for module in (plugin, view)
    for name, value in vars(module).items()
    if getattr(value, "hyperhive_impl", None) is not None
}
_both = {name for name in _HOOKS if hasattr(plugin, name) and hasattr(view, name)}
if _both:
    raise ImportError(f"hyperhive_tracing: plugin.py and view.py both implement {', '.join(sorted(_both))}")
globals().update(_HOOKS)
