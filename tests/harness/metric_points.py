"""Reading what OpenTelemetry instruments recorded, through the SDK's ``InMemoryMetricReader``."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader


def points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple], object]:
    """``{(metric name, sorted attributes): data point}`` of everything the reader holds."""
    found: dict[tuple[str, tuple], object] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found[(metric.name, tuple(sorted(point.attributes.items())))] = point
    return found


def value(found: dict, name: str, **attributes: str) -> int:
    """A counter's value for exactly these attributes (0 when nothing was recorded)."""
    point = found.get((name, tuple(sorted(attributes.items()))))
    return 0 if point is None else point.value
