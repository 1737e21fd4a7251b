"""The one error root. Expected races are outcomes, not exceptions; these are for the rest."""

from __future__ import annotations


class HitlError(Exception):
    """Something in hitl_workers went wrong."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
