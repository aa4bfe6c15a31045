"""The REST client: reads training runs, checkpoints and weights info.

The read side of the wire protocol of the official ``tinker`` SDK 0.38.0
(``tinker/lib/public_interfaces/rest_client.py``), over the service
client's `HTTPClient`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from .._errors import (
    APIStatusError,
    CheckpointUnavailableError,
    ResponseValidationError,
)
from .._types import (
    Checkpoint,
    TrainingRun,
    TrainingRunPage,
    WeightsInfo,
    list_params,
    parse_each,
    parse_tinker_path,
    validate_run_id,
)
from .._util import NoPublicConstructor
from ._operations import GONE

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._http import HTTPClient

__all__ = ["RestClient", "checkpoint_gone"]


@contextmanager
def checkpoint_gone(path: str) -> Iterator[None]:
    """Raise a 404 or 410 about checkpoint ``path`` as `CheckpointUnavailableError`."""
    try:
        yield
    except APIStatusError as exc:
        if exc.status in GONE:
            raise CheckpointUnavailableError(
                f"checkpoint {path} is unavailable: {exc.message}",
                path=path,
                status=exc.status,
            ) from exc
        raise


class RestClient(metaclass=NoPublicConstructor):
    """Reads training runs, their checkpoints and checkpoint weights info.

    Made by `ServiceClient.create_rest_client`; it shares the service
    client's connection pool and is usable until the service client closes.
    """

    _factory_hint = "use ServiceClient.create_rest_client()"

    def __init__(self, http: HTTPClient) -> None:
        self._http = http

    def __repr__(self) -> str:
        return f"<RestClient base_url={self._http.base_url!r}>"

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """The run as the service reports it now.

        ``GET /api/v1/training_runs/{run_id}?access_scope=owned``.

        Raises:
            TypeError: ``run_id`` is not a str.
            ValueError: ``run_id`` cannot be a run id (checked before sending).
            NotFoundError: No such run.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not a valid training run.
        """
        validate_run_id(run_id)
        body = await self._http.request(
            "GET", f"/api/v1/training_runs/{run_id}", params={"access_scope": "owned"}
        )
        return TrainingRun.from_json(body)

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: Literal["owned", "accessible"] = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        """One page of the runs the key can see, in the service's order.

        ``GET /api/v1/training_runs?limit&offset&access_scope[&project_id]``.
        The service may return fewer runs than ``limit`` asks for (its
        page maximum is in the page's ``limit``).

        Args:
            limit: The most runs to return.
            offset: How many runs of the whole list to skip.
            access_scope: ``"owned"`` (the key's own runs) or
                ``"accessible"`` (every run the key may read).
            project_id: Only the runs of this project.

        Raises:
            ValueError: A bad ``limit``, ``offset``, ``access_scope`` or
                ``project_id`` (checked before sending).
            NotFoundError: The service has no list endpoint.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not a page of runs.
        """
        params = list_params(
            limit=limit, offset=offset, access_scope=access_scope, project_id=project_id
        )
        body = await self._http.request("GET", "/api/v1/training_runs", params=params)
        return TrainingRunPage.from_json(body)

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, training and sampler, in the service's order.

        ``GET /api/v1/training_runs/{run_id}/checkpoints``.

        Raises:
            TypeError: ``run_id`` is not a str.
            ValueError: ``run_id`` cannot be a run id (checked before sending).
            NotFoundError: No such run.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not a list of checkpoints.
        """
        validate_run_id(run_id)
        path = f"/api/v1/training_runs/{run_id}/checkpoints"
        body = await self._http.request_object("GET", path)
        items = body.get("checkpoints")
        if not isinstance(items, list):
            raise ResponseValidationError(
                f"GET {path}: expected a list at $.checkpoints, "
                f"got {type(items).__name__}"
            )
        return parse_each(items, Checkpoint.from_json, f"GET {path}: $.checkpoints")

    async def get_weights_info(self, tinker_path: str) -> WeightsInfo:
        """What the service knows about a checkpoint's weights.

        ``POST /api/v1/weights_info {"tinker_path": ...}``.

        Raises:
            TypeError: ``tinker_path`` is not a str.
            ValueError: ``tinker_path`` is not a ``tinker://`` checkpoint path.
            CheckpointUnavailableError: The service has no such checkpoint
                (HTTP 404 or 410): it never existed, was deleted or expired.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not valid weights info.
        """
        parse_tinker_path(tinker_path)
        with checkpoint_gone(tinker_path):
            body = await self._http.request(
                "POST", "/api/v1/weights_info", json={"tinker_path": tinker_path}
            )
        return WeightsInfo.from_json(body)
