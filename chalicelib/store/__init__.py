"""Named queries over the tenant tables, one module per table family. Import the family you use
(``from chalicelib.store import cases as case_store``); this package re-exports nothing.

Every function takes an open tenant ``Transaction`` (``tenant_transaction``): RLS already scopes
it to one company, and ``company_id`` parameters only fill the column on insert. The exception
is said where it applies (a service transaction and a SECURITY DEFINER function: counts only).
SQL texts are constants; every value is a bound parameter.

| family     | tables                                              | what                                   |
|------------|-----------------------------------------------------|----------------------------------------|
| events     | events, poison_events                               | storing a webhook, reading what a      |
|            |                                                     | re-fold needs in the same statement    |
| cases      | recovery_cases (+ the ledger rows a case owes)      | writing the fold's cases, merging,     |
|            |                                                     | closing, the tick's reminder progress  |
| ledger     | recovery_actions                                    | owing effects, a creator's actions     |
| settings   | creator_settings                                    | a company's settings                   |
| views      | recovery_cases, recovery_actions, events (reads)    | what the creator API shows             |
| export     | recovery_cases, recovery_actions (reads, COPY)      | the CSV export                         |
| recovery   | events, recovery_actions, recovery_cases            | smart retry: saved cards, attach/retry |
|            |                                                     | rows, the recovery credit              |
"""
