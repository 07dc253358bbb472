-- The case list's decline-class filter (issue 11). Without it a page of a rare class walks the
-- company's cases newest first until 25 match (27,000 index entries for one class in 200 on the
-- bench's 100,000 cases, 15-36 ms a page); with it the filter is part of the range scan (2-4 ms).
-- The list and the export read pages in (first_failure_at, id) descending order: same order here.
CREATE INDEX recovery_cases_by_decline_class
    ON recovery_cases (company_id, decline_class, first_failure_at DESC, id DESC);
