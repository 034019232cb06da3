"""The base of every JSON body the API accepts: unknown fields refused, text that is valid Unicode.

JSON can carry a lone surrogate (`"\\ud800"`), which Python keeps in a `str`
that cannot be written as UTF-8: stored, it would break every page that reads
it back; as a name, it cannot even be looked up. Refused here with a 422.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from alignloop.feedback.text import reject_lone_surrogates


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        try:
            reject_lone_surrogates(data, "body")
        except Exception as exc:  # pydantic wants ValueError to turn it into a 422
            raise ValueError(str(exc)) from None
        return data
