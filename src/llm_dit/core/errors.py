"""The one exception type the CLI turns into a one-line message and exit code 2, and the one check of a named choice."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user: a path, a value, a file or a model that is not what it should be."""


def check_choice(value: object, valid: Iterable[str], what: str, error: type[UserError] = UserError) -> str:
    """`value` if it is one of the names `valid`, else `error`: "unknown {what} {value!r}; valid: a, b, ..."."""
    names = tuple(valid)
    if not isinstance(value, str) or value not in names:
        raise error(f"unknown {what} {value!r}; valid: {', '.join(names)}")
    return value
