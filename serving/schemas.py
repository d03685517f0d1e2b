"""Pydantic request and response models of every route: they are the OpenAPI document's schemas.

The handlers build their JSON directly (it is the hot path); these models describe it, and
`FeedbackIn` also validates the /feedback body.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from ml.records import NONE_OF_THESE


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: a human-readable reason."""

    error: str
    valid_labels: list[str] | None = Field(None, description="On an unknown feedback label: the labels accepted "
                                                         f"(the classes, then {NONE_OF_THESE!r})")


class SimilarOut(BaseModel):
    """One training image near the upload in embedding space."""

    id: str = Field(description="dataset id '<version>:<split>:<index>'")
    label: str
    distance: float
    url: str = Field(description="GET it for a 128x128 PNG")


class ImageNetOut(BaseModel):
    """The ImageNet labeler's hint, mapped to one of our classes when it can be."""

    model_config = ConfigDict(extra="allow")
    label: str | None = None
    imagenet_label: str | None = None
    wnid: str | None = None
    confidence: float | None = None


class ClassifyOut(BaseModel):
    """The answer for one classified image."""

    request_id: str = Field(description="uuid4 hex; send it to /feedback to correct the label")
    model_version: str
    label: str
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float] = Field(description="class name -> probability, all classes")
    is_ood: bool
    ood_score: float
    ood_threshold: float
    message: str
    similar: list[SimilarOut]
    imagenet: ImageNetOut | None = None


class BatchItemOut(BaseModel):
    """One /classify_batch item: a ClassifyOut, or `error` with the HTTP `status` it would have had alone."""

    model_config = ConfigDict(extra="allow")
    request_id: str | None = None
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    is_ood: bool | None = None
    error: str | None = None
    status: int | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: Any) -> dict:
        """An answered item has no `error` key and a failed one no `label`: absent, not null."""
        return {k: v for k, v in handler(self).items() if v is not None}


class FeedbackIn(BaseModel):
    """A user's correction of a classified request."""

    request_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=128,
                       description=f"one of the served classes, or {NONE_OF_THESE!r} when the image shows none "
                                   "of them (stored as an outlier image for the next dataset snapshot)")
    source: Literal["web", "api"] = "api"


class FeedbackOut(BaseModel):
    """The stored feedback record."""

    model_config = ConfigDict(extra="allow")
    request_id: str
    label: str
    predicted_label: str
    model_version: str
    created_at: str
    image_key: str
    source: str


class ModelInfoOut(BaseModel):
    """What is being served and the state of the request log."""

    ready: bool
    model_version: str | None
    run_id: str | None
    dataset_version: str | None
    classes: list[str]
    spool_backlog: int
    store_ok: bool
    quarantined: int = Field(0, description="spool batches/files the request log quarantined")
    worker: int = Field(0, description="index of the serving worker that answered")


ERRORS = {code: {"model": ErrorOut} for code in (400, 413, 415, 422, 429, 503)}
