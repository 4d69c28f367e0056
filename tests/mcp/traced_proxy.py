"""`aegis mcp-proxy` in a process that traces: every finished span is appended to $SPANS_FILE.

Used by the tests as the proxy's command in place of ``python -m aegis``:
an operator would run the proxy under ``opentelemetry-instrument`` or a
wrapper of their own that configures a tracer provider the same way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from aegis.cli import main


class FileExporter(SpanExporter):
    """Appends each span as one JSON line: name, ids, parent, attributes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                context = span.get_span_context()
                parent = span.parent
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": format(context.trace_id, "032x"),
                            "span_id": format(context.span_id, "016x"),
                            "parent_id": format(parent.span_id, "016x") if parent else None,
                            "attributes": dict(span.attributes or {}),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["SPANS_FILE"])))
trace.set_tracer_provider(provider)
sys.exit(main(sys.argv[1:]))
