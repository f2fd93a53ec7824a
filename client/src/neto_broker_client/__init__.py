"""A typed client for the Neto Token Broker: credential bundles, `/invoke`, the events
feed and webhook signatures, in a sync (`BrokerClient`) and an async
(`AsyncBrokerClient`) flavour on httpx. Refusals raise the class of their error code
(`neto_broker_client.errors`)."""

from neto_broker_client._core import READ_ACTIONS, Retries
from neto_broker_client.aio import AsyncBrokerClient, AsyncEventStream
from neto_broker_client.errors import (
    CODES,
    BrokerError,
    UnexpectedResponse,
    WebhookVerificationError,
)
from neto_broker_client.models import Bundle, Event, EventData, EventPage, InvokeResult, RateLimit
from neto_broker_client.sync import BrokerClient, EventStream
from neto_broker_client.webhooks import verify_webhook

__all__ = [
    "CODES",
    "READ_ACTIONS",
    "AsyncBrokerClient",
    "AsyncEventStream",
    "BrokerClient",
    "BrokerError",
    "Bundle",
    "Event",
    "EventData",
    "EventPage",
    "EventStream",
    "InvokeResult",
    "RateLimit",
    "Retries",
    "UnexpectedResponse",
    "WebhookVerificationError",
    "verify_webhook",
]
