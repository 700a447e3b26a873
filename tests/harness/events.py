"""Event Grid events as ACR sends them (EventGridSchema), for tests that drive the event path."""

from __future__ import annotations

import datetime as dt


def image_pushed(
    event_id: str,
    host: str,
    repository: str,
    digest: str,
    *,
    tag: str | None = None,
    media_type: str | None = None,
    size: int | None = None,
) -> dict:
    """``Microsoft.ContainerRegistry.ImagePushed`` for ``repository@digest`` (or ``:tag``) at ``host``,
    sent now. ACR leaves ``tag`` out for a push by digest."""
    target: dict = {"digest": digest, "repository": repository}
    if media_type is not None:
        target["mediaType"] = media_type
    if size is not None:
        target["size"] = size
    if tag is not None:
        target["tag"] = tag
    return {
        "id": event_id,
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "eventTime": dt.datetime.now(dt.timezone.utc).isoformat(),
        "data": {"target": target, "request": {"host": host}},
    }
