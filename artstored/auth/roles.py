"""Roles and scopes: ``admin`` ⊃ ``operator`` ⊃ ``user``, each a set of scopes.

A route names the least role and the scope it needs; a token passes if its role ranks at
least that high and it carries the scope (a client may ask for fewer scopes than its role
grants, never more).
"""

from __future__ import annotations

USER, OPERATOR, ADMIN = "user", "operator", "admin"
ROLES = (USER, OPERATOR, ADMIN)
RANK = {USER: 1, OPERATOR: 2, ADMIN: 3}

FILES_READ, FILES_WRITE = "files:read", "files:write"
STORAGE_READ, STORAGE_WRITE = "storage:read", "storage:write"
ADMIN_READ, ADMIN_WRITE = "admin:read", "admin:write"
SCOPES = (FILES_READ, FILES_WRITE, STORAGE_READ, STORAGE_WRITE, ADMIN_READ, ADMIN_WRITE)

ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    USER: (FILES_READ, FILES_WRITE, STORAGE_READ),
    OPERATOR: (FILES_READ, FILES_WRITE, STORAGE_READ, STORAGE_WRITE),
    ADMIN: SCOPES,
}


def grantable(role: str, account_scopes: list[str] | None = None) -> list[str]:
    """The scopes an account of ``role`` can hold (optionally narrowed per account)."""
    allowed = ROLE_SCOPES[role]
    if account_scopes is None:
        return list(allowed)
    return [s for s in allowed if s in account_scopes]


def narrow(available: list[str], requested: str | None) -> list[str]:
    """The scopes to put in a token: ``requested`` (space-separated) ∩ ``available``; all
    of ``available`` when nothing was requested. Unknown scopes are ignored (RFC 6749 §3.3
    lets the server grant less than asked)."""
    if not requested:
        return list(available)
    wanted = requested.split()
    return [s for s in available if s in wanted]


def permits(role: str, scopes, need_role: str, need_scope: str | None) -> bool:
    if RANK.get(role, 0) < RANK[need_role]:
        return False
    return need_scope is None or need_scope in scopes
