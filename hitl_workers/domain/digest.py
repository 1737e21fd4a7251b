"""The fingerprint of a ``hitl.request_assistance`` request, for telling a retry from a clash.

``execution_id`` is the idempotency key (docs/contract.md §1); over HTTP (§10) the gateway must also
say whether a repeated ``execution_id`` came with the *same* request (a retry: 200) or another
one (409). The worker stores this digest with the execution; the gateway computes it again for
the body it received and compares. Both sides call this one function on the validated request,
so a request first sent over Celery and repeated over HTTP compares the same way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hitl_workers.domain.request import AssistanceRequest


def canonical_json(value: Any) -> bytes:
    """``value`` as JSON with sorted keys and no spaces: equal values, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def request_digest(request: AssistanceRequest) -> str:
    """The hex sha256 of the request's keyword arguments as canonical JSON.

    The fields as sent (``exclude_unset``: a default the sender left out is not part of it, so
    a new setting with a default does not turn an old retry into a clash), with their values as
    validated (``"timeout": "5m"`` and ``"timeout": 300`` are the same request).
    """
    kwargs = request.model_dump(mode="json", exclude_unset=True)
    return hashlib.sha256(canonical_json(kwargs)).hexdigest()
