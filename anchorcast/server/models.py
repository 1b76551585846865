"""Request and response bodies of the ``/v1`` API (pydantic; unknown fields are refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SetValue = str | int | float | bool | list[str | int | float | bool]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(_Strict):
    profile: str | None = Field(None, description="a bundled profile or one in the server's profile folder "
                                "(default: the profile the server was started with)", examples=["default"])
    set: dict[str, SetValue] = Field(default_factory=dict, description="profile values by dotted key, as "
                                     "`--set` takes them", examples=[{"engine.use": "viseme"}])
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
                           description="the session's id (default: made up)")


class Say(_Strict):
    text: str = Field(..., min_length=1, description="what the anchor says", examples=["Good evening."])
    voice: str | None = Field(None, description="another registered voice for this utterance: NAME or "
                              "NAME:VOICE", examples=["espeak:cmn"])
    interrupt: bool = Field(False, description="drop what is queued and speak now")


class CueRequest(_Strict):
    scene: str | None = Field(None, description="the scene to switch to (as a script's [cue: Scene] line)")
    lower_third: str | None = Field(None, description="the lower third's text")
    data: dict[str, Any] = Field(default_factory=dict, description="anything else plugins read from the cue")


class Created(BaseModel):
    id: str
    url: str


class Queued(BaseModel):
    utterance: str
    queue: int = Field(description="utterances queued or on air, this one included")
    seconds: float | None = Field(None, description="length of posted audio")


class Interrupted(BaseModel):
    dropped: list[str]


class Problem(BaseModel):
    detail: str
    field: str | None = None
