"""Element modes: what each mode allows, and which changes of mode are allowed.

Rules (DESIGN §4): ``edit`` is fixed for the life of an element. ``rw → ro → ar`` move
forward one step at a time; ``ro → rw`` only with an explicit confirmation; ``ar`` is final.
Both tables below are the whole state machine; nothing else decides.
"""

from __future__ import annotations

from .errors import ConfirmationRequired, ModeNotAllowed, TransitionNotAllowed, ValidationError

EDIT, RW, RO, AR = "edit", "rw", "ro", "ar"
MODES = (EDIT, RW, RO, AR)

UPLOAD = "upload"
READ_METADATA = "read_metadata"
READ_CONTENT = "read_content"
UPDATE_METADATA = "update_metadata"
DELETE = "delete"

ALLOWED: dict[str, frozenset[str]] = {
    EDIT: frozenset({UPLOAD, READ_METADATA, READ_CONTENT, UPDATE_METADATA, DELETE}),
    RW: frozenset({UPLOAD, READ_METADATA, READ_CONTENT, UPDATE_METADATA}),
    RO: frozenset({READ_METADATA, READ_CONTENT}),
    AR: frozenset({READ_METADATA}),
}

_WHY = {
    READ_CONTENT: "the element is archived: its content is offline",
}

# (from, to) → needs confirmation?
TRANSITIONS: dict[tuple[str, str], bool] = {
    (RW, RO): False,
    (RO, AR): False,
    (RO, RW): True,
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValidationError(f"unknown mode {mode!r}; one of {', '.join(MODES)}",
                              code="invalid_mode")
    return mode


def require(mode: str, operation: str) -> None:
    """Raise ModeNotAllowed (naming the mode) unless ``mode`` allows ``operation``."""
    if operation not in ALLOWED[mode]:
        why = _WHY.get(operation) if mode == AR else None
        detail = f"{operation.replace('_', ' ')} is not allowed in mode {mode!r}"
        raise ModeNotAllowed(f"{detail}: {why}" if why else detail, mode=mode,
                             operation=operation)


def allows(mode: str, operation: str) -> bool:
    return operation in ALLOWED[mode]


def check_transition(current: str, target: str, *, confirmed: bool) -> None:
    """Raise unless ``current → target`` is allowed (a same-mode request is a no-op the
    caller handles before calling this)."""
    check_mode(target)
    if (current, target) not in TRANSITIONS:
        if current == EDIT or target == EDIT:
            why = "an edit element keeps its mode for life"
        elif current == AR:
            why = "ar is final"
        elif (current, target) == (RW, AR):
            why = "go through ro first"
        else:
            why = "modes move forward rw → ro → ar"
        raise TransitionNotAllowed(f"cannot change mode {current} → {target}: {why}",
                                   mode=current, target=target)
    if TRANSITIONS[(current, target)] and not confirmed:
        raise ConfirmationRequired(
            f"{current} → {target} re-opens the element for writes; send \"confirm\": true",
            mode=current, target=target)
