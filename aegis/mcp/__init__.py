"""The governing MCP proxy: any MCP server behind a policy, approvals and an audit trail.

``aegis mcp-proxy --policy policy.yaml -- COMMAND...`` is the way in; the
pieces are importable for embedding:

- :class:`~aegis.mcp.proxy.ProxySession`: one client relayed to one server, governed;
- :class:`~aegis.mcp.runner.ProxySettings`, :func:`~aegis.mcp.runner.run_stdio`,
  :func:`~aegis.mcp.http.run_http`, :func:`~aegis.mcp.runner.check_tools`.

Needs the ``mcp`` SDK: ``pip install "aegis-runtime[mcp]"``.
"""

from __future__ import annotations

__all__: list[str] = []
