"""Names on the wire that the instrumentation API sends and the agent understands.

Documented for users of plain OpenTelemetry SDKs in ``docs/otlp-names.md``. Import-light on
purpose: the agent reads these without importing the OpenTelemetry SDK.
"""

TRACER_NAME = "wattspan"
ATTR_ITEMS = "wattspan.items"
ATTR_RUN_ID = "wattspan.run_id"
ATTR_TAG_PREFIX = "wattspan.tag."
ATTR_PARAM_PREFIX = "ml.param."
ATTR_HYPERPARAMETERS = "ml.hyperparameters"
ATTR_STEP = "ml.step"
EVENT_METRIC = "ml.metric"
ATTR_METRIC_NAME = "ml.metric.name"
ATTR_METRIC_VALUE = "ml.metric.value"
EVENT_CONFUSION_MATRIX = "ml.confusion_matrix"
ATTR_CM_MATRIX = "ml.confusion_matrix.matrix"
ATTR_CM_LABELS = "ml.confusion_matrix.labels"
RUN_ROOT_SPAN = "wattspan.run"
ML_PREFIX = "ml."
# CPU seconds the sending process (and the span's thread) used between the span's start
# and end, measured by the process itself: exact where sampling sees only interval means.
ATTR_CPU_PROCESS = "wattspan.cpu.process_seconds"
ATTR_CPU_THREAD = "wattspan.cpu.thread_seconds"
# A program's run (the API opens one per process when WATTSPAN_RUN_ID is not set): resource
# attributes naming it, and the run root span's exit status (OpenTelemetry's name).
ATTR_RUN_NAME = "wattspan.run.name"
ATTR_RUN_START = "wattspan.run.start_time_unix_nano"
ATTR_EXIT_CODE = "process.exit.code"
