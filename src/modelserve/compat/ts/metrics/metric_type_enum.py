"""``ts.metrics.metric_type_enum.MetricTypes``."""
import enum


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
