"""The HTTP API's shapes, for the OpenAPI document (/docs). Requests are not parsed through these
models (serve/requests.py validates raw JSON faster and with errors naming series and field); they
describe the contract."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | float | int


class SeriesIn(BaseModel):
    id: Scalar | dict[str, Scalar] | None = Field(
        None, description="The series: its group-id values as an object ({agency: .., sku: ..}) or joined by '|'. "
        "Known series use their training scale; others are scaled by their own history (with a warning).")
    static: dict[str, Scalar] = Field(default_factory=dict, description="Static columns (group-id ones come from id).")
    history: dict[str, list[Scalar | None]] = Field(
        description="Columns of the past: time column, target (null = not observed), observed and known inputs. "
        "Timestamps on the model's grid, without gaps; the last max_encoder_length steps are used.")
    future: dict[str, list[Scalar]] = Field(
        default_factory=dict, description="Known inputs of the max_prediction_length steps to forecast; the time "
        "column is optional (checked when given).")


class ForecastRequest(BaseModel):
    series: list[SeriesIn] = Field(description="One or many series.")
    interpretation: bool = Field(False, description="Also return variable selection weights and attention.")


class ForecastOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # plus the time column: the forecast's timestamps

    id: Scalar | dict[str, Scalar] | None
    quantiles: dict[str, list[float]] = Field(description="Forecasts in target units per quantile ('0.1', '0.5', ...).")
    warnings: list[str] | None = Field(None, description="Unknown categories, unseen series, padded history.")
    interpretation: dict | None = Field(
        None, description="static_weights {var: w}, encoder_weights and decoder_weights {var: mean weight over "
        "steps}, attention [horizon][encoder + horizon steps].")


class ForecastResponse(BaseModel):
    model: dict = Field(description="name, version and sha256 of the model that answered.")
    forecasts: list[ForecastOut]


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong, naming the series and the field.")
    series: Scalar | dict[str, Scalar] | None = None
    field: str | None = None
