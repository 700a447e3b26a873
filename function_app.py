"""Azure Functions entry points (Python v2 programming model). Thin: parse, call the core.

* ``sync_schedule``  (timer, ``%SYNC_SCHEDULE%``): lists the catalog, reads each repository's
  fingerprint at the source and enqueues the repositories that changed, failed or are due for
  their periodic full check (batched; the state per repository and target is in the app's
  storage account). Copies nothing, asks no target anything. Logs the poison queues' depth (the
  signal of the "poison queue not empty" alert).
* ``on_image_pushed`` (Event Grid, EventGridSchema or CloudEvents): enqueues a message per target
  for a pushed tag, or for an untagged push (a referrer, decided by the worker), on the event
  queue (``%SYNC_EVENT_QUEUE%``).
* ``sync_worker`` (queue ``%SYNC_QUEUE%``: the timer's work) and ``sync_event_worker`` (queue
  ``%SYNC_EVENT_QUEUE%``: the events' work, a function of its own so that a push never waits
  behind the timer's backfill for an invocation): copy what one message asks for; record each
  repository's outcome in the timer's state; re-enqueue what the time budget left over on the
  same queue; raise on a failure worth a redelivery (the host retries, then poisons); a
  permanent condition of the content is reported as a skip instead.

Each runs inside ``logs.invocation(context)``: log lines from the core's thread pools then reach
the host tied to the invocation (the host drops worker log lines that name none).
"""

from __future__ import annotations

import datetime as dt
import logging
import typing

import azure.functions as func

from sync_core import logs
from sync_core.azure import daily_check, handlers, poison, runtime
from sync_core.azure import timer as schedule

app = func.FunctionApp()
log = logging.getLogger("sync_core.functions")

QUEUE = "%SYNC_QUEUE%"  # the timer's work
EVENT_QUEUE = "%SYNC_EVENT_QUEUE%"  # an event's work: a function of its own, never behind backfill
STORAGE = "AzureWebJobsStorage"
# Out[typing.List[str]], not Out[list[str]]: the Python worker (4.x and azure-functions-runtime)
# refuses a builtin generic as a non-type annotation and then loads no function at all. ruff's
# UP006 would rewrite it; pyproject.toml turns UP006 off for this file.


@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
@app.queue_output(arg_name="out", queue_name=QUEUE, connection=STORAGE)
def sync_schedule(timer: func.TimerRequest, out: func.Out[typing.List[str]], context: func.Context) -> None:
    with logs.invocation(context):
        if timer.past_due:
            log.warning("timer is past due; reconciling now")
        for queue in (runtime.shared_config().queue, runtime.shared_config().event_queue):
            poison.poison_depth(queue)  # never raises; the "poison queue not empty" alert
        previous = schedule.last_run(getattr(timer, "schedule_status", None))
        if runtime.shared_config().daily_check:  # never raises; before the catalog, which may fail
            daily_check.run_if_due(runtime.shared_syncer(), previous, dt.datetime.now(dt.timezone.utc))
        messages = schedule.schedule_messages(runtime.shared_syncer(), runtime.shared_state(), previous)
        if messages:
            out.set(messages)


@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="out", queue_name=EVENT_QUEUE, connection=STORAGE)
def on_image_pushed(
    event: func.EventGridEvent, out: func.Out[typing.List[str]], context: func.Context
) -> None:
    with logs.invocation(context):
        messages = handlers.event_messages(event_envelope(event), runtime.shared_config())
        if messages:
            out.set(messages)


@app.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=STORAGE)
@app.queue_output(arg_name="out", queue_name=QUEUE, connection=STORAGE)
def sync_worker(msg: func.QueueMessage, out: func.Out[typing.List[str]], context: func.Context) -> None:
    with logs.invocation(context):
        work(msg, out)


@app.queue_trigger(arg_name="msg", queue_name=EVENT_QUEUE, connection=STORAGE)
@app.queue_output(arg_name="out", queue_name=EVENT_QUEUE, connection=STORAGE)
def sync_event_worker(msg: func.QueueMessage, out: func.Out[typing.List[str]], context: func.Context) -> None:
    with logs.invocation(context):
        work(msg, out)


def work(msg: func.QueueMessage, out: func.Out[typing.List[str]]) -> None:
    """One queue message, from either queue: what is left over goes back to the same queue."""
    summary, leftover = handlers.process_message(
        msg.get_body(), runtime.shared_syncer(), state=runtime.shared_state()
    )
    if leftover:
        out.set(leftover)
    logs.decision(
        log,
        "done",
        f"worker done: {summary.tags_copied} copied, {summary.tags_unchanged} unchanged, "
        f"{summary.tags_skipped} skipped, {summary.work.bytes_uploaded} bytes uploaded",
        message_id=msg.id,
        dequeue_count=msg.dequeue_count,
    )


def event_envelope(event: func.EventGridEvent | func.CloudEvent) -> dict[str, typing.Any]:
    """The event as Event Grid delivered it, in its schema, for ``sync_core.azure.events.decide``.

    The worker decodes a delivery in CloudEvents 1.0 schema to ``func.CloudEvent`` (``type``,
    ``time``, ``source``) whatever the annotation says, and one in EventGridSchema to
    ``func.EventGridEvent`` (``event_type``, ``event_time``, ``topic``).
    """
    try:
        data = event.get_json()
    except ValueError:
        data = None
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "subject": event.subject,
            "type": event.type,
            "time": _isoformat(event.time),
            "data": data,
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": _isoformat(event.event_time),
        "dataVersion": event.data_version,
        "data": data,
    }


def _isoformat(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when else None
