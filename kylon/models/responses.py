"""Stored OpenAI responses, each bound to the agent whose call created it.

Only that agent may name the response again (retrieve, cancel, delete, its
input items, `previous_response_id`); for any other agent, and for an id
Kylon never saw created, the answer is 404 with nothing sent upstream. A
background response stays `billed` false until its final usage has been
charged (kylon/responses.py): those rows are what a restarted Kylon polls.
"""

import peewee

from .base import BaseModel, utcnow


class ResponseBinding(BaseModel):
    response_id = peewee.CharField(max_length=200, unique=True)
    agent_id = peewee.IntegerField()
    key_id = peewee.IntegerField(null=True)
    provider = peewee.CharField(max_length=50, default="openai")
    # The model the create call named: the background charge's price.
    model = peewee.CharField(max_length=200, default="")
    background = peewee.BooleanField(default=False)
    # Settled: the final usage is charged (or, for a background response that
    # could not be read to its end, given up on with an `error` record).
    billed = peewee.BooleanField(default=True)
    # The create call's request id (its usage record).
    request_id = peewee.CharField(max_length=40, default="")
    created_at = peewee.DateTimeField(default=utcnow)
    billed_at = peewee.DateTimeField(null=True)

    class Meta:
        # The unbilled background responses, read at start and by every sweep.
        indexes = ((("billed", "background"), False),)
