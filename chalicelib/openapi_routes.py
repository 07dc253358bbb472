"""The routes of the OpenAPI document (``OPERATIONS``): which model goes where (each route's query,
body and responses, by status), and the prose: auth, errors, limits, the KPI, export, nudge,
retry and experiment rules. ``chalicelib.openapi`` turns this table into the document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.api import MAX_BODY_BYTES
from chalicelib.api.cases import EXPORT_COLUMNS, EXPORT_MAX_BYTES, EXPORT_NEXT_CURSOR_HEADER
from chalicelib.api.schemas.actions import NudgeResult, RetryResult, TerminateRequest
from chalicelib.api.schemas.cases import CaseDetail, CaseList, CaseListQuery, CaseSummary, ExportQuery
from chalicelib.api.schemas.common import ErrorResponse
from chalicelib.api.schemas.experiments import Experiment, ExperimentCreate, ExperimentList
from chalicelib.api.schemas.kpis import CohortQuery, KpiQuery
from chalicelib.api.schemas.memberships import ManageUrl, MembershipView
from chalicelib.api.schemas.settings import Settings, SettingsUpdate
from chalicelib.auth import COMPANY_ID, TOKEN_HEADER
from chalicelib.kpis import Cohorts, Kpis
from chalicelib.ratelimit import RateLimits

REF = "#/components/schemas/{model}"


class WebhookAccepted(BaseModel):
    status: str = Field(description="queued, or ignored for event types Rebound does not use.")


class TickSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    companies: int = Field(description="Companies that had due work; the other keys are tick metrics.")


class HealthQuery(BaseModel):
    type: str = Field(default="application", description="Which check to run.",
                      json_schema_extra={"enum": ["application", "database", "webhook"]})


@dataclass(frozen=True)
class Resp:
    description: str
    model: type[BaseModel] | None = None
    media: str = "application/json"
    schema: dict[str, Any] | None = None  # for a body that is not a model (CSV, HTML)
    headers: tuple[str, ...] = ()  # names in components.headers


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    description: str = ""
    creator: bool = False  # x-whop-user-token, admin check and a rate-limit class
    route_class: str | None = None
    path_params: tuple[str, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    responses: dict[int, Resp] = field(default_factory=dict)
    security: tuple[str, ...] = ()
    header_params: tuple[tuple[str, str], ...] = ()  # (name, description), required


# --- shared pieces ----------------------------------------------------------------------------

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "company_id": {"description": "Whop company id (biz_…). The caller must be an admin of it.",
                   "schema": {"type": "string", "pattern": COMPANY_ID.pattern}},
    "case_id": {"description": "Case id (UUID). Not a UUID → 400; unknown or another company's → 404.",
                "schema": {"type": "string", "format": "uuid"}},
    "membership_id": {"description": "Whop membership id (mem_…). Another company's → 404.",
                      "schema": {"type": "string"}},
    "token": {"description": "Tracked-link token.", "schema": {"type": "string"}},
    "experiment_id": {"description": "Experiment id (UUID). Not a UUID → 400; unknown or another "
                                     "company's → 404.", "schema": {"type": "string", "format": "uuid"}},
}

_RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {"description": "Requests allowed in the current window for this route class.",
                          "schema": {"type": "integer", "minimum": 1}},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.",
                              "schema": {"type": "integer", "minimum": 0}},
    "X-RateLimit-Reset": {"description": "When the current window ends (Unix time, seconds).",
                          "schema": {"type": "integer"}},
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 0}},
    "Content-Disposition": {"description": "attachment; filename=…", "schema": {"type": "string"}},
    EXPORT_NEXT_CURSOR_HEADER: {
        "description": "Present only when the export was cut to fit the response size limit: pass it "
                       "as ?cursor= (with the same filters) to get the next part.",
        "schema": {"type": "string"}},
    "Location": {"description": "Where the member fixes their payment.", "schema": {"type": "string"}},
}

_LIMITS = RateLimits()
CREATOR_DESCRIPTION = f"""\
Creator routes (`/api/companies/{{company_id}}/…`) need the `{TOKEN_HEADER}` header that Whop's \
iframe proxy adds: an ES256 JWT (issuer `urn:whopcom:exp-proxy`, audience = the app id, subject = \
the user id). Missing or invalid token → 401. The user must be an admin of `company_id` per Whop \
(`access_level == "admin"`), else 403; Whop unreachable → 503. Objects of another company answer \
404, exactly like objects that do not exist.

Errors always have the shape `{{"error": {{"code", "message", "fields"?}}}}`; a 400 names each bad \
field in `fields`.

**Rate limits** (per company, per route class, fixed {_LIMITS.window_s}-second windows): \
`reads` {_LIMITS.reads} (every GET except the export), `settings_write` {_LIMITS.settings_write} \
(PUT settings), `actions` {_LIMITS.actions} (POST on a case), `export` {_LIMITS.export} (CSV). \
Operators change them with `RATE_LIMIT_READS`, `RATE_LIMIT_SETTINGS_WRITE`, `RATE_LIMIT_ACTIONS`, \
`RATE_LIMIT_EXPORT` and `RATE_LIMIT_WINDOW_S`. Every response after authentication carries \
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`; over the limit → 429 with \
`Retry-After`.
"""

_KPI_DESCRIPTION = """\
A case belongs to a window when its `first_failure_at` lies in it: the current window is \
[now − N days, now], `previous` is [now − 2N days, now − N days). `total_cases` counts every case \
of the window whatever its status; `active_cases` those still open; `recoveries` those recovered. \
`recovery_rate` = recoveries / total_cases (0 when there are no cases): **open, expired and \
cancelled cases all count in the denominator**. `recovered_revenue` sums `recovered_amount_minor` \
of the recovered cases per case currency (minor units, sorted by currency). Every figure can be \
recomputed from `GET …/cases/export.csv?window_days=N` (rows by `status`, sums of \
`recovered_amount_minor` by `currency`).

**Matured cases only** for every comparison: `matured_cases`, `matured_recoveries` and \
`matured_recovery_rate` count the cases whose 14-day window has elapsed (`first_failure_at + 14 \
days ≤ now`, whatever the status); `maturing_cases` / `maturing_recoveries` are the younger ones \
(their figures still move). Compare windows with `matured_recovery_rate`.

**Measurement.** `incentive_cost` sums the stored cost of the free days granted to the window's \
cases per currency (CSV `incentive_cost_minor`). `by_decline_class` repeats cases / recoveries / \
recovery_rate per decline class (CSV column `decline_class`). `lift` compares the window's \
**matured, eligible** cases — opened by Rebound before their window ended (CSV `opened_at`) and \
assigned while the holdout was above 0% (CSV `holdout_percent_at_open`) — that were not held out \
(treated) with those in the holdout (CSV `holdout`; a manually nudged holdout case stays there \
and is counted in `contaminated_cases`): recovery rates, their difference with a 95% **Newcombe \
hybrid score** interval (from Wilson score intervals, no continuity correction), incremental \
recovered revenue (treated revenue − holdout revenue × treated/holdout matured cases) and that \
minus the treated cases' incentive cost, each with a 95% interval per currency by the **delta \
method**. Until each arm has 30 matured, eligible cases the figures are withheld (`status: \
insufficient_data`, counts only). `previous` holds the same fields for the window before."""

_COHORTS_DESCRIPTION = """\
Cases grouped by the ISO week of their first failure, in the company's time zone (settings), the \
last `weeks` weeks up to the current one, oldest first, empty weeks included. A cohort whose \
newest case is younger than 14 days is `maturing`: its figures still move. `time_to_recovery` is \
a Kaplan–Meier curve over the same cases: the share recovered within d days of the first failure, \
d = 0…14; open cases are censored at their age, expired and cancelled cases did not recover."""

_EXPERIMENT_DESCRIPTION = """\
A copy experiment: 2–4 variants with integer weights (sum > 0). A variant's `push_title`, \
`push_body` and `dm_body` replace the default copy (omitted parts keep it, so a variant without \
copy is the control). Placeholders: `{amount}`, `{days_left}`, `{link}` (required in `push_body` \
and `dm_body`), `{product}`; anything else, unbalanced braces or copy over the length limits → 400 \
naming the field. Copy is plain text: in a DM markdown characters are shown as typed.

Each case opened while the experiment runs (and not held out) gets a variant from a stable hash \
of (experiment id, case id), proportional to the weights; every message of the case (first \
nudge, reminders, manual nudges) uses it. One experiment runs at a time: creating a second → \
409. Results per variant: cases (all assigned), sends, clicks (cases that clicked), ctr (clicks / \
cases sent a message), and over the cases opened before their window ended: matured cases (**matured \
cases only**: first failure + 14 days ≤ now, whatever the status), recoveries, recovery rate, and \
the maturing cases and their recoveries so far. `decision` is sequential-safe: a `winner` is named \
only when, with ≥ 30 matured cases per variant, its always-valid 95% confidence sequence (normal \
mixture, Howard et al. 2021; Bonferroni over the pairs) against every other variant lies above 0, \
so reading the results daily keeps the false-winner rate ≤ 5%; `collecting` says how many more \
matured cases per variant a +10 pts gap needs; `no_winner` when every pair differs by less than \
10 pts or the experiment stopped without a winner; `sample_ratio_mismatch` when the cases per \
variant do not follow the weights (chi-square p < 0.001). The beta-binomial `prob_best` / \
`expected_loss` are descriptive only (null until every variant has a matured case)."""

_EXPORT_DESCRIPTION = f"""\
The company's cases as CSV (RFC 4180, UTF-8, header row first), newest first, filtered like the \
list. Columns, in order: {", ".join(f"`{c}`" for c in EXPORT_COLUMNS)}. Times are ISO 8601 in UTC \
(`…Z`); amounts are integers in minor units; `nudges_sent` counts the case's nudges, reminders \
and manual nudges that were sent. No member e-mail or name. A cell that a spreadsheet would run \
as a formula (starting with `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'`.

**Large exports come in parts.** A response never grows past ~{EXPORT_MAX_BYTES / 1e6:.1f} MB \
(Lambda answers at most 6 MB). When the export was cut, the response has the header \
`{EXPORT_NEXT_CURSOR_HEADER}`: request the same URL with `&cursor=<that value>` for the next part, \
and repeat until a response comes without the header. Every part starts with the header row \
(drop it when concatenating)."""

_NUDGE_DESCRIPTION = """\
Sends a manual nudge now on every channel enabled in settings (push, DM), through the same path \
as reminders. The automatic frequency cap does not apply; the case rules do: a case that is not \
open (or past its 14-day window) → 409, whatever the cooldown; both channels disabled → 409. One \
manual nudge per case per hour, else 429 with `Retry-After`. Each channel's outcome is in \
`actions` (`pending` means Whop was busy: the scheduler retries it)."""


_RETRY_DESCRIPTION = """\
Asks Whop to charge the case's unpaid payment again now (`POST /payments/{id}/retry`: its original \
payment method). Once per payment, ever: the automatic payday retry and this share one key. The \
user's admin access is checked with Whop again, uncached. 409 (with the reason) when it is not \
possible: the case is not open or past its 14-day window, is held out, has no payment, Rebound \
already retried it (or attached a card the member saved: Whop retried it then), Whop shows the \
payment paid or not retryable, or Whop refuses the retry (recorded on the timeline with Whop's \
reason). `pending` means Whop was busy: the scheduler retries it."""


_HEALTH = {"anyOf": [{"$ref": REF.format(model=m)}
                     for m in ("ApplicationHealth", "DatabaseHealth", "WebhookHealth")]}


def _errors(*codes: int) -> dict[int, Resp]:
    text = {400: "Invalid parameters or body; `fields` names each problem.",
            401: "Missing or invalid user token.",
            403: "The user is not an admin of this company.",
            404: "Not found (or belongs to another company).",
            409: "Conflict: the case does not allow this action now, or an experiment is already "
                 "running.",
            413: f"Body larger than {MAX_BODY_BYTES} bytes.",
            429: "Rate limit (or, for a nudge, the per-case cooldown) reached; see Retry-After.",
            502: "Whop refused the request.",
            503: "Whop or the database is unavailable; retry after Retry-After."}
    after_auth = {400, 404, 409, 413, 429, 502}
    out: dict[int, Resp] = {}
    for code in codes:
        headers: tuple[str, ...] = _RATE_HEADERS if code in after_auth else ()
        if code in (429, 503):
            headers = (*headers, "Retry-After")
        out[code] = Resp(text[code], ErrorResponse, headers=headers)
    return out


def _creator(method: str, path: str, operation_id: str, summary: str, tag: str, route_class: str,
             ok: Resp, *, errors: tuple[int, ...] = (), ok_status: int = 200, **kw: Any) -> Op:
    params = tuple(p[1:-1] for p in path.split("/") if p.startswith("{"))
    ok = Resp(ok.description, ok.model, ok.media, ok.schema, (*ok.headers, *_RATE_HEADERS))
    responses = {ok_status: ok, **_errors(400, 401, 403, *errors, 429, 503)}
    return Op(method, path, operation_id, summary, tag, creator=True, route_class=route_class,
              path_params=params, responses=responses, security=("WhopUserToken",), **kw)


_C = "/api/companies/{company_id}"

OPERATIONS: tuple[Op, ...] = (
    _creator("get", f"{_C}/settings", "getSettings", "Read the company's settings", "settings", "reads",
             Resp("The stored settings, or the defaults for a company that never saved any.", Settings)),
    _creator("put", f"{_C}/settings", "putSettings", "Save the company's settings", "settings",
             "settings_write", Resp("The settings as stored.", Settings), errors=(413,), body=SettingsUpdate,
             description="Takes the GET object back. Omitted fields keep their value; `updated_at` is "
                         "read-only (accepted, ignored); unknown fields, wrong types (no \"true\" for a "
                         "boolean) and out-of-range values → 400 with a message per field."),
    _creator("get", f"{_C}/kpis", "getKpis", "Recovery KPIs for a window and the one before", "kpis", "reads",
             Resp("The figures.", Kpis), query=KpiQuery, description=_KPI_DESCRIPTION),
    _creator("get", f"{_C}/kpis/cohorts", "getKpiCohorts", "Weekly cohorts and time to recovery", "kpis",
             "reads", Resp("The cohorts and the curve.", Cohorts), query=CohortQuery,
             description=_COHORTS_DESCRIPTION),
    _creator("get", f"{_C}/experiments", "listExperiments", "List copy experiments, newest first",
             "experiments", "reads", Resp("The experiments with their results.", ExperimentList)),
    _creator("post", f"{_C}/experiments", "createExperiment", "Start a copy experiment", "experiments",
             "settings_write", Resp("The new experiment.", Experiment), ok_status=201, errors=(409, 413),
             body=ExperimentCreate, description=_EXPERIMENT_DESCRIPTION),
    _creator("get", f"{_C}/experiments/{{experiment_id}}", "getExperiment",
             "One experiment with per-variant results", "experiments", "reads",
             Resp("The experiment.", Experiment), errors=(404,), description=_EXPERIMENT_DESCRIPTION),
    _creator("post", f"{_C}/experiments/{{experiment_id}}/stop", "stopExperiment", "Stop an experiment",
             "experiments", "settings_write", Resp("The stopped experiment (history kept).", Experiment),
             errors=(404,),
             description="Stops assigning new cases; cases already in a variant keep its copy. A stopped "
                         "experiment cannot be edited or restarted (create a new one); stopping it "
                         "again returns it unchanged."),
    _creator("get", f"{_C}/cases", "listCases", "List cases, newest first", "cases", "reads",
             Resp("One page of cases.", CaseList), query=CaseListQuery,
             description="Sorted by `first_failure_at` descending (ties: id). Keyset pagination: pass "
                         "`next_cursor` as `cursor` for the next page; pages stay stable while cases "
                         "are added. A malformed cursor → 400."),
    _creator("get", f"{_C}/cases/export.csv", "exportCases", "Export cases as CSV", "cases", "export",
             Resp("CSV.", media="text/csv", schema={"type": "string"},
                  headers=("Content-Disposition", EXPORT_NEXT_CURSOR_HEADER)),
             query=ExportQuery, description=_EXPORT_DESCRIPTION),
    _creator("get", f"{_C}/cases/{{case_id}}", "getCase", "One case and its timeline", "cases", "reads",
             Resp("The case.", CaseDetail), errors=(404,)),
    _creator("post", f"{_C}/cases/{{case_id}}/nudge", "nudgeCase", "Send a manual nudge now", "actions",
             "actions", Resp("What each channel did.", NudgeResult), errors=(404, 409),
             description=_NUDGE_DESCRIPTION),
    _creator("post", f"{_C}/cases/{{case_id}}/cancel", "cancelCase", "Stop the case", "actions", "actions",
             Resp("The cancelled case.", CaseSummary), errors=(404, 409),
             description="No more nudges, reminders or incentives; owed ones are skipped. Cancelling a "
                         "cancelled case returns it unchanged; a recovered or expired case → 409."),
    _creator("post", f"{_C}/cases/{{case_id}}/cancel-membership", "cancelMembership",
             "Cancel the membership at the end of its period", "actions", "actions",
             Resp("The case, now cancelled (close_reason membership_cancelled).", CaseSummary),
             errors=(404, 409, 502),
             description="Asks Whop to cancel at period end (idempotent), then cancels the case. "
                         "Allowed on open cases and cases the creator cancelled; recovered or expired "
                         "→ 409. Whop refusing → 502; Whop unavailable → 503."),
    _creator("post", f"{_C}/cases/{{case_id}}/terminate", "terminateMembership",
             "End the member's access now", "actions", "actions",
             Resp("The case, now cancelled (close_reason membership_terminated).", CaseSummary),
             errors=(404, 409, 413, 502), body=TerminateRequest,
             description="Requires the body `{\"confirm\": true}` exactly. Asks Whop to cancel "
                         "immediately (idempotent), then cancels the case. Recovered or expired → 409."),
    _creator("post", f"{_C}/cases/{{case_id}}/retry", "retryPayment", "Retry the case's payment now",
             "actions", "actions", Resp("What the retry did, and Whop's answer.", RetryResult),
             errors=(404, 409), description=_RETRY_DESCRIPTION),
    _creator("get", f"{_C}/memberships/{{membership_id}}", "getMembership", "A membership, from Whop",
             "memberships", "reads", Resp("The membership (no PII).", MembershipView), errors=(404, 502)),
    _creator("get", f"{_C}/memberships/{{membership_id}}/manage-url", "getManageUrl",
             "The membership's manage URL, from Whop", "memberships", "reads",
             Resp("The URL.", ManageUrl), errors=(404, 502)),
    Op("post", "/webhooks/whop", "whopWebhook", "Whop webhooks (Standard Webhooks signed)", "webhooks",
       description="Verifies the signature with the `ws_…` secret, queues the event, answers 200. "
                   "Redeliveries (same webhook-id) get 200 too.",
       body=None, header_params=(("webhook-id", "Message id."), ("webhook-timestamp", "Unix seconds."),
                                 ("webhook-signature", "v1,<base64 HMAC-SHA256>")),
       responses={200: Resp("Queued or ignored.", WebhookAccepted),
                  400: Resp("Signed but malformed.", ErrorResponse),
                  401: Resp("Bad or stale signature.", ErrorResponse),
                  413: Resp("Body too large.", ErrorResponse),
                  503: Resp("Queue unavailable: Whop retries.", ErrorResponse, headers=("Retry-After",))}),
    Op("get", "/api/health", "health", "Health checks (no tenant data)", "operations",
       query=HealthQuery,
       description="`application` is free liveness (no auth, no I/O). `database` and `webhook` need "
                   "`Authorization: Bearer` with HEALTH_SECRET or SCHEDULER_SECRET (401 otherwise) "
                   "and are cached for a few seconds.",
       responses={200: Resp("Healthy.", schema=_HEALTH),
                  400: Resp("Unknown check.", ErrorResponse),
                  401: Resp("A deep check without the bearer secret.", ErrorResponse),
                  503: Resp("Unhealthy (database or webhook check).", schema=_HEALTH)}),
    Op("get", "/api/openapi.json", "openapi", "This document", "operations",
       responses={200: Resp("OpenAPI 3.1.", schema={"type": "object"})}),
    Op("post", "/api/scheduler/reminders", "runReminders", "Run one reminder tick", "operations",
       security=("SchedulerBearer",),
       responses={200: Resp("What the tick did.", TickSummary),
                  401: Resp("Missing or wrong bearer token.", ErrorResponse),
                  404: Resp("SCHEDULER_SECRET is not set.", ErrorResponse),
                  429: Resp("Too many wrong bearers from this address, or too many ticks (the bearer is "
                            "checked first: the two are counted apart).", ErrorResponse,
                            headers=("Retry-After",)),
                  503: Resp("This host's clock disagrees with the database's (over 2 minutes): the tick "
                            "did not run.", ErrorResponse)}),
    Op("get", "/r/{token}", "trackedLink", "Tracked link in a nudge", "member", path_params=("token",),
       description="Records the click and redirects the member to fix their payment.",
       responses={200: Resp("No safe page to send the member to: says what to do in Whop.",
                            media="text/html", schema={"type": "string"}),
                  302: Resp("To the payment-fix page (https on a Whop host only).", media="text/html",
                            schema={"type": "string"}, headers=("Location",)),
                  429: Resp("This link was clicked too often; see Retry-After.", ErrorResponse,
                            headers=("Retry-After",)),
                  404: Resp("Unknown link.", media="text/html", schema={"type": "string"}),
                  410: Resp("The case is closed.", media="text/html", schema={"type": "string"}),
                  503: Resp("Whop unavailable.", media="text/html", schema={"type": "string"})}),
    Op("get", "/dashboard/{company_id}", "dashboard", "The creator dashboard (Whop iframe)", "dashboard",
       path_params=("company_id",), security=("WhopUserToken",),
       description="Served by chalicelib.dashboard; the page calls the creator routes above.",
       responses={200: Resp("HTML page.", media="text/html", schema={"type": "string"}),
                  302: Resp("In production, the same page without a `?token=` query.", media="text/html",
                            schema={"type": "string"}, headers=("Location",)),
                  404: Resp("Not a company id.", ErrorResponse)}),
    Op("get", "/favicon.ico", "favicon", "The dashboard's icon (SVG)", "dashboard",
       responses={200: Resp("SVG image.", media="image/svg+xml", schema={"type": "string"})}),
)
