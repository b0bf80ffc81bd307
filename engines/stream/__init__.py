"""wattspan.engines.stream: a SABER-style windowed stream engine on columnar batches.

from wattspan.engines.stream import Agg, Engine, Query, col
from wattspan.engines.stream.schema import Schema

q = (Query(schema).where(col("speed") > 0).window(size=60, slide=1, range_="timestamp")
     .group_by("highway").agg(avg_speed=Agg.avg("speed")))
for batch in Engine(workers=2).run(q, batches):
    ...  # batch.columns: window_start, window_end, highway, avg_speed
"""

from .assembly import WindowBatch
from .engine import EmitEvent, Engine, Observer, RunStats, TaskEvent, collect
from .errors import StreamError
from .expr import col, lit
from .gpu import GpuWorker
from .operators import Agg, StaticTable
from .query import Plan, Query
from .scheduler import FCFS, HLS, Scheduler, Static
from .schema import CM_SCHEMA, LRB_SCHEMA, SG_SCHEMA, YSB_SCHEMA, Schema
from .window import WindowSpec
from .workers import CpuPool, Processor

__all__ = [
    "CM_SCHEMA",
    "FCFS",
    "HLS",
    "LRB_SCHEMA",
    "SG_SCHEMA",
    "YSB_SCHEMA",
    "Agg",
    "CpuPool",
    "EmitEvent",
    "Engine",
    "GpuWorker",
    "Observer",
    "Plan",
    "Processor",
    "Query",
    "RunStats",
    "Scheduler",
    "Schema",
    "Static",
    "StaticTable",
    "StreamError",
    "TaskEvent",
    "WindowBatch",
    "WindowSpec",
    "col",
    "collect",
    "lit",
]
