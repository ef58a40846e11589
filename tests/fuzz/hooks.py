"""Schemathesis hooks of the fuzzing run (scripts/fuzz.sh).

`positive_data_acceptance` with the API's documented business rules: a
schema-valid request must be accepted, except when the error code of the
answer is one of the rules below, which depend on stored data, on
configuration, on the clock or on several fields at once, so no JSON Schema
can state them. Each is listed for the operations it applies to, with its
reason. Every other refusal of a schema-valid request is a finding.
"""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance as accepts_valid_data

EVERYWHERE = {
    # PostgreSQL cannot store NUL in text (documented as `invalid_text` on
    # every route with a body).
    "invalid_text",
    # A cursor must be one the API returned (it is opaque to callers).
    "invalid_cursor",
}

TEMPLATED_SEND = {
    # The template named must exist.
    "unknown_template",
    # A send gives exactly the template's declared variables.
    "missing_variable",
    "unknown_variable",
    # Rendering with the given values fails or exceeds its bounds.
    "template_render_error",
    "template_too_costly",
    "template_output_too_large",
    # `send_at` must be in the future and at most 365 days ahead (the clock).
    "invalid_send_at",
    # Sizes against ATTACHMENT_MAX_SIZE and EMAIL_MAX_SIZE (configuration).
    "attachment_too_large",
    "email_too_large",
    "payload_too_large",
}

TEMPLATE_SOURCE = {
    # The source must compile, use only declared variables, render to one
    # subject line and stay within the rendering bounds.
    "template_syntax_error",
    "template_render_error",
    "undeclared_variable",
    "template_too_costly",
    "template_output_too_large",
}

SCHEDULE = {
    # The cron expression and IANA zone must parse (their grammars are not
    # JSON Schema patterns).
    "invalid_cron",
    "invalid_time_zone",
}

WEBHOOK_URL = {
    # The URL must parse as a WHATWG URL with a host (its grammar is not a
    # JSON Schema pattern), and its host may not be a loopback, private or
    # link-local address unless WEBHOOK_ALLOW_PRIVATE (configuration; hosts
    # such as `0000` are IPv4 literals).
    "invalid_url",
    "private_address",
}

BUSINESS_RULES = {
    "POST /api/v1/messages/email/send": TEMPLATED_SEND
    | {
        # The same Idempotency-Key with another body.
        "idempotency_key_reused",
        # The campaign must exist and be visible to the key (admin keys only).
        "unknown_campaign",
    },
    # Failed sign-ins from this address or for this key are throttled
    # (the history of earlier requests).
    "POST /api/v1/auth/token": {"too_many_attempts"},
    "POST /api/v1/templates": TEMPLATE_SOURCE,
    # A template that a campaign mails is changed only by an admin key
    # (ownership, in stored data).
    "PUT /api/v1/templates/{id}": TEMPLATE_SOURCE | {"template_used_by_campaign"},
    "DELETE /api/v1/templates/{id}": {"template_used_by_campaign"},
    "POST /api/v1/templates/{id}/render": TEMPLATED_SEND,
    "POST /api/v1/campaigns": SCHEDULE | {"unknown_template", "unknown_list"},
    "PUT /api/v1/campaigns/{id}": SCHEDULE | {"unknown_template", "unknown_list"},
    "POST /api/v1/admin/periodic-tasks": SCHEDULE | {"unknown_queue"},
    "PUT /api/v1/admin/periodic-tasks/{id}": SCHEDULE | {"unknown_queue"},
    # At most WEBHOOK_MAX_ENDPOINTS_PER_KEY endpoints per key (stored data);
    # platform event types only for admin keys (the caller's scopes).
    "POST /api/v1/webhooks": WEBHOOK_URL | {"webhook_limit_reached", "admin_event_type"},
    "PATCH /api/v1/webhooks/{id}": WEBHOOK_URL | {"admin_event_type"},
    # One throttle per domain (stored data); PUT changes an existing one.
    "POST /api/v1/admin/domain-throttles": {"domain_throttle_exists"},
    # An imported key must be a readable PEM key of its algorithm (a
    # grammar no JSON Schema states); one selector per domain (stored data).
    "POST /api/v1/admin/dkim-keys": {"invalid_private_key", "dkim_key_exists"},
}

# Rules on several fields at once: (code, field, what the message says).
NOT_BOTH = ("validation_error", "template", "not both")
CROSS_FIELD = {
    "POST /api/v1/messages/email/send": {
        # A template, or subject and content (never both); variables only
        # with a template; at most 50 recipients in to, cc and bcc together.
        NOT_BOTH,
        ("validation_error", "subject", "subject is required"),
        ("validation_error", "content", "content is required"),
        ("validation_error", "subject", "come from the template"),
        ("validation_error", "content", "come from the template"),
        ("validation_error", "variables", "only for templated sends"),
        ("validation_error", "to", "to, cc and bcc together"),
        # An unsubscribe link names one address: one `to`, no cc or bcc.
        ("validation_error", "list_unsubscribe", "exactly one recipient"),
    },
    # The batch's shared template by id or by name, not both.
    "POST /api/v1/messages/email/batch": {NOT_BOTH},
    "POST /api/v1/campaigns": {("validation_error", "ends_at", "after starts_at")},
    "PUT /api/v1/campaigns/{id}": {("validation_error", "ends_at", "after starts_at")},
    # Exactly one of `cron` and `interval_seconds`.
    "POST /api/v1/admin/periodic-tasks": {("validation_error", "cron", "exactly one of")},
    "PUT /api/v1/admin/periodic-tasks/{id}": {("validation_error", "cron", "exactly one of")},
    # The window must be non-empty and at most 366 days (two parameters).
    "GET /api/v1/messages/stats": {("validation_error", "created_after", "window")},
}


# The unsubscribe link's token must be one the platform signed (an
# HMAC-SHA256 under UNSUBSCRIBE_SECRET), which no generated string is; its
# pages answer browsers in HTML, so the 400 carries no JSON code.
UNSUBSCRIBE_LINK = {"GET /u/{token}", "POST /u/{token}"}


def _error(response):
    try:
        error = response.json()["error"]
        return error.get("code"), error.get("field"), error.get("message", "")
    except Exception:
        return None, None, ""


def is_business_rule(operation, response):
    """Whether a refusal is one of the documented rules above."""
    if not 400 <= response.status_code < 500:
        return False
    if operation in UNSUBSCRIBE_LINK and response.status_code == 400:
        return True
    code, field, message = _error(response)
    if code in EVERYWHERE or code in BUSINESS_RULES.get(operation, ()):
        return True
    # NUL in a query string (PostgreSQL again).
    if code == "invalid_query" and "NUL" in message:
        return True
    # JSON Schema counts 1.0 as an integer; the API reads integers as
    # written without a fraction (as every JSON encoder writes them).
    if code == "invalid_body" and "invalid type: floating point" in message:
        return True
    return any(
        (code, field) == (rule_code, rule_field) and fragment in message
        for rule_code, rule_field, fragment in CROSS_FIELD.get(operation, ())
    )


@schemathesis.check
def valid_data_accepted_unless_a_business_rule(ctx, response, case):
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    if is_business_rule(operation, response):
        return True
    return accepts_valid_data(ctx, response, case)
