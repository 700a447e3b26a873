"""Azure Functions entry points (Python v2 programming model). Thin: parse, call the core.

* ``sync_schedule``  (timer, ``%SYNC_SCHEDULE%``): lists the catalog, enqueues a message per
  repository and target. Copies nothing. Logs the poison queue's depth (the alert's signal).
* ``on_image_pushed`` (Event Grid): enqueues a message per target for a pushed tag.
* ``sync_worker``    (queue ``%SYNC_QUEUE%``): copies what one message asks for; re-enqueues
  what its time budget left over; raises on failure so the host retries, then poisons.
"""

from __future__ import annotations

import logging

import azure.functions as func

from sync_core import handlers, logs, poison, runtime

app = func.FunctionApp()
log = logging.getLogger("sync_core.functions")

QUEUE = "%SYNC_QUEUE%"
STORAGE = "AzureWebJobsStorage"


@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
@app.queue_output(arg_name="out", queue_name=QUEUE, connection=STORAGE)
def sync_schedule(timer: func.TimerRequest, out: func.Out[list[str]]) -> None:
    if timer.past_due:
        log.warning("timer is past due; reconciling now")
    poison.poison_depth(runtime.shared_config().queue)  # never raises; "poison queue not empty" alert
    messages = handlers.schedule_messages(runtime.shared_syncer(), handlers.last_run(getattr(timer, "schedule_status", None)))
    if messages:
        out.set(messages)


@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="out", queue_name=QUEUE, connection=STORAGE)
def on_image_pushed(event: func.EventGridEvent, out: func.Out[list[str]]) -> None:
    try:
        data = event.get_json()
    except ValueError:
        data = None
    envelope = {
        "id": event.id,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": data,
    }
    messages = handlers.event_messages(envelope, runtime.shared_config())
    if messages:
        out.set(messages)


@app.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=STORAGE)
@app.queue_output(arg_name="out", queue_name=QUEUE, connection=STORAGE)
def sync_worker(msg: func.QueueMessage, out: func.Out[list[str]]) -> None:
    summary, leftover = handlers.process_message(msg.get_body(), runtime.shared_syncer())
    if leftover:
        out.set(leftover)
    logs.decision(
        log, "done",
        f"worker done: {summary.tags_copied} copied, {summary.tags_unchanged} unchanged, "
        f"{summary.tags_skipped} skipped, {summary.bytes_uploaded} bytes uploaded",
        message_id=msg.id, dequeue_count=msg.dequeue_count,
    )  # fmt: skip
