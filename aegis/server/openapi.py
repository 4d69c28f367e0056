"""The OpenAPI 3.1 document of the approval API, served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from aegis.server.service import MAX_GRANT_MINUTES

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        401: "missing, unknown, revoked or expired token",
        403: "wrong role, outside the rule's reviewer groups, or the requester themself",
        404: "unknown id",
        409: "no longer pending, expired, already decided by this reviewer, or collected",
        413: "body larger than 64 KiB",
        422: "malformed JSON or an invalid field",
        503: "the database is locked, read-only or unreachable; retry",
    }
    return {str(code): _json(_ref("Error"), texts[code]) for code in codes}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    """The document, built fresh each call (it is small)."""
    request_schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["pending", "approved", "denied", "expired", "cancelled"]},
            "session_id": {"type": "string"},
            "requester": {"type": "string"},
            "action": _ref("Action"),
            "risk_level": {"enum": ["low", "medium", "high", "critical"]},
            "matched_rule": {"type": "string"},
            "reason": {"type": "string"},
            "approvers": {"type": "integer"},
            "reviewers": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "digest": {"type": "string", "description": "SHA-256 of the action and requester"},
            "action_digest": {"type": "string", "description": "SHA-256 of the action"},
            "decisions": {"type": "array", "items": _ref("Decision")},
            "status_reason": {"type": "string"},
            "collected_at": {"type": ["string", "null"], "format": "date-time"},
            "grant_id": {"type": ["string", "null"], "description": "grant that approved it"},
            "grant_by": {"type": "array", "items": {"type": "string"}},
            "granted": {"type": ["string", "null"], "description": "grant its approval created"},
            "why": {
                "oneOf": [_ref("Why"), {"type": "null"}],
                "description": "why a person is asked, as the agent's runtime explained it "
                "(null for requests filed without it)",
            },
        },
    }
    schemas = {
        "Action": {
            "type": "object",
            "required": ["type", "target"],
            "properties": {
                "type": {"type": "string"},
                "target": {"type": "string"},
                "params": {"type": "object"},
                "description": {"type": "string"},
            },
        },
        "NewRequest": {
            "type": "object",
            "required": ["session_id", "action"],
            "additionalProperties": False,
            "properties": {
                "session_id": {"type": "string"},
                "action": _ref("Action"),
                "risk_level": {"enum": ["low", "medium", "high", "critical"]},
                "matched_rule": {"type": "string"},
                "reason": {"type": "string"},
                "approvers": {"type": "integer", "minimum": 1, "maximum": 20},
                "reviewers": {"type": "array", "items": {"type": "string"}},
                "approval_ttl": {"type": ["number", "string"]},
                "why": _ref("Why"),
            },
        },
        "Why": {
            "type": "object",
            "additionalProperties": False,
            "description": "why a person is asked: the rule, its description, each condition "
            "that held with its value (e.g. 'amount 1,299 > 500'), and the decision's reason "
            "(a limit's count and window, a flow rule's earlier action)",
            "properties": {
                "rule": {"type": "string", "maxLength": 200},
                "description": {"type": "string", "maxLength": 10000},
                "conditions": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {"type": "string", "maxLength": 10000},
                },
                "reason": {"type": "string", "maxLength": 10000},
            },
        },
        "Decision": {
            "type": "object",
            "properties": {
                "reviewer": {
                    "type": "string",
                    "description": "who decided: a token's name, or issuer#subject of a person "
                    "signed in with the OpenID provider (what is compared)",
                },
                "reviewer_name": {"type": "string"},
                "reviewer_issuer": {"type": ["string", "null"]},
                "reviewer_subject": {"type": "string"},
                "verdict": {"enum": ["approve", "deny"]},
                "comment": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "grant_minutes": {"type": ["integer", "null"]},
            },
        },
        "DecisionBody": {
            "type": "object",
            "required": ["verdict"],
            "additionalProperties": False,
            "properties": {
                "verdict": {"enum": ["approve", "deny"]},
                "comment": {"type": "string"},
                "grant_minutes": {"type": "integer", "minimum": 1, "maximum": MAX_GRANT_MINUTES},
            },
        },
        "ApprovalRequest": request_schema,
        "Grant": {"type": "object"},
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "integer"},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                    },
                }
            },
        },
    }
    one = _json(_ref("ApprovalRequest"), "the request")
    paths = {
        "/api/v1/approvals": {
            "post": {
                "summary": "Ask for approval (agent role)",
                "requestBody": {"content": {"application/json": {"schema": _ref("NewRequest")}}},
                "responses": {
                    "201": _json(_ref("ApprovalRequest"), "created"),
                    "200": _json(_ref("ApprovalRequest"), "a pending twin, re-attached"),
                    **_errors(401, 403, 413, 422, 503),
                },
            },
            "get": {
                "summary": "List requests, filtered and sorted by the store (reviewer role)",
                "description": "Only the requests the reviewer's groups may decide (a "
                "request naming no reviewer group is anyone's); total and more count those.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "enum": ["pending", "approved", "denied", "expired", "cancelled", "all"]
                        },
                    },
                    {"name": "requester", "in": "query", "schema": {"type": "string"}},
                    {"name": "session", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "risk",
                        "in": "query",
                        "description": "one risk level or several, comma separated",
                        "schema": {"type": "string", "examples": ["high,critical"]},
                    },
                    {"name": "rule", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "sort",
                        "in": "query",
                        "description": "newest first, closest to expiring first, or highest "
                        "risk first (newest first within a risk)",
                        "schema": {"enum": ["newest", "expiring", "risk"], "default": "newest"},
                    },
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {
                        "name": "before",
                        "in": "query",
                        "description": "the next page: the 'next' of the page before, same sort",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "approvals": {"type": "array", "items": _ref("ApprovalRequest")},
                                "total": {
                                    "type": "integer",
                                    "description": "every request the filters match",
                                },
                                "more": {
                                    "type": "integer",
                                    "description": "how many follow this page",
                                },
                                "next": {"type": ["string", "null"]},
                            },
                        },
                        "requests",
                    ),
                    **_errors(401, 403, 422),
                },
            },
        },
        "/api/v1/approvals/{id}": {
            "get": {
                "summary": "One request (a reviewer of its groups or who decided it, or "
                "the agent that asked)",
                "parameters": [_ID],
                "responses": {"200": one, **_errors(401, 403, 404)},
            }
        },
        "/api/v1/approvals/{id}/wait": {
            "get": {
                "summary": "Long poll until no longer pending (the agent that asked)",
                "parameters": [
                    _ID,
                    {"name": "timeout", "in": "query", "schema": {"type": "number", "maximum": 60}},
                ],
                "responses": {"200": one, **_errors(401, 403, 404)},
            }
        },
        "/api/v1/approvals/{id}/decision": {
            "post": {
                "summary": "Approve or deny (reviewer role)",
                "parameters": [_ID],
                "requestBody": {"content": {"application/json": {"schema": _ref("DecisionBody")}}},
                "responses": {"200": one, **_errors(401, 403, 404, 409, 413, 422)},
            }
        },
        "/api/v1/approvals/{id}/collect": {
            "post": {
                "summary": "Use an approval, once (the agent that asked)",
                "parameters": [_ID],
                "responses": {"200": one, **_errors(401, 403, 404, 409)},
            }
        },
        "/api/v1/approvals/{id}/cancel": {
            "post": {
                "summary": "Stop waiting: cancel a pending request (the agent that asked)",
                "parameters": [_ID],
                "responses": {"200": one, **_errors(401, 403, 404, 409)},
            }
        },
        "/api/v1/grants": {
            "get": {
                "summary": "Active grants (reviewer role); all=true for all",
                "responses": {"200": _json({"type": "object"}, "grants"), **_errors(401, 403)},
            }
        },
        "/api/v1/grants/{id}/revoke": {
            "post": {
                "summary": "Revoke a grant (reviewer role)",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("Grant"), "revoked"),
                    **_errors(401, 403, 404, 409),
                },
            }
        },
        "/api/v1/audit": {
            "get": {
                "summary": "Audit records (reviewer role; an auditor reads all, others the "
                "records of requests they may see): session, type, target, risk, status, "
                "since, until, limit, after_id; next_after_id goes on (null at the end)",
                "responses": {
                    "200": _json({"type": "object"}, "records, next_after_id"),
                    **_errors(401, 403, 422),
                },
            }
        },
        "/api/v1/audit/verify": {
            "get": {
                "summary": "Verify the audit chain (auditors: reviewers in an --auditor-group)",
                "responses": {"200": _json({"type": "object"}, "report"), **_errors(401, 403)},
            }
        },
        "/api/v1/whoami": {
            "get": {
                "summary": "The caller's name, role, groups, auditor or not, and identity",
                "responses": {"200": _json({"type": "object"}, "principal"), **_errors(401)},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness and store reachability (no token)",
                "responses": {"200": _json({"type": "object"}, "ok"), **_errors(503)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Aegis approval service", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
