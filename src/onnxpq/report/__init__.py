"""Reports: the JSON schema and the HTML page."""

from onnxpq.report.html import render_html
from onnxpq.report.schema import SCHEMA, build_report, report_json

__all__ = ["SCHEMA", "build_report", "report_json", "render_html"]
