"""errors.error_from_response as a specification: every answer the contract lists, and the
class (what to do next) and Retry-After it must turn into. One row per Dify answer."""

from __future__ import annotations

import json

import pytest

from difysync.errors import (AuthError, ConfigError, DatasetMissing, DifyError, DifySyncError, FatalError,
                             LeaseBusy, Next, NotDifyAPI, NotFoundError, NotReadyError, QuotaError, RateLimited,
                             RefusedError, ServerUnreachable, StateError, StateWriteError, TransientError,
                             error_from_response, exit_code, verdict)

RATE_LIMIT = ("Sorry, you have reached the knowledge base request rate limit of your "
              "subscription.")
DOC_LIMIT = "The number of documents has reached the limit of your subscription."


def dify(status: int, code: str, message: str = "") -> bytes:
    """Dify's error body: {"code", "message", "status"}."""
    return json.dumps({"code": code, "message": message, "status": status}).encode()


def nginx(status: int, reason: str) -> bytes:
    title = f"{status} {reason}"
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
            f"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


# (specification, status, body, keyword arguments, expected class, expected retry_after)
ROWS = [
    # --- 401: stop, the key is wrong
    ("unauthorized_missing_header_is_an_auth_error", 401,
     dify(401, "unauthorized", "Authorization header must be provided and start with 'Bearer'"),
     {}, AuthError, None),
    ("unauthorized_invalid_token_is_an_auth_error", 401,
     dify(401, "unauthorized", "Access token is invalid"), {}, AuthError, None),
    ("html_401_from_a_proxy_is_an_auth_error", 401,
     nginx(401, "Authorization Required"), {}, AuthError, None),
    # --- 400 invalid_param: read the message
    ("document_not_available_means_wait", 400,
     dify(400, "invalid_param", "Document is not available"), {"on_document": True},
     NotReadyError, None),
    ("a_metadata_operation_running_means_wait", 400,
     dify(400, "invalid_param", "Another knowledge base metadata operation is running, please wait a moment."),
     {}, NotReadyError, None),
    ("dataset_is_not_exist_means_the_dataset_is_missing", 400,
     dify(400, "invalid_param", "Dataset is not exist."), {}, DatasetMissing, None),
    ("dataset_does_not_exist_means_the_dataset_is_missing", 400,
     dify(400, "invalid_param", "Dataset does not exist."), {"on_create": True},
     DatasetMissing, None),
    ("invalid_filename_characters_are_refused", 400,
     dify(400, "invalid_param", "Filename contains invalid characters"), {"on_create": True},
     RefusedError, None),
    ("indexing_technique_required_is_refused_not_waited_for", 400,
     dify(400, "invalid_param", "indexing_technique is required."), {"on_create": True},
     RefusedError, None),
    ("bare_400_on_create_is_a_refused_file", 400,
     dify(400, "invalid_param", ""), {"on_create": True}, RefusedError, None),
    ("bare_400_elsewhere_is_terminal_not_retried", 400,
     dify(400, "invalid_param", ""), {"on_document": True}, RefusedError, None),
    # --- 404: document gone vs dataset gone
    ("not_found_on_a_document_means_the_document_is_gone", 404,
     dify(404, "not_found", "Document Not Exists."), {"on_document": True}, NotFoundError, None),
    ("not_found_on_a_dataset_means_the_dataset_is_missing", 404,
     dify(404, "not_found", "Dataset not found."), {}, DatasetMissing, None),
    ("not_found_dataset_even_on_a_document_path_means_the_dataset_is_missing", 404,
     dify(404, "not_found", "Dataset not found."), {"on_document": True}, DatasetMissing, None),
    ("unknown_batch_is_not_found", 404,
     dify(404, "not_found", "Documents not found."), {"on_document": True}, NotFoundError, None),
    # --- document state
    ("document_indexing_means_wait", 400,
     dify(400, "document_indexing", "Cannot delete document during indexing."),
     {"on_document": True}, NotReadyError, None),
    ("document_already_finished_is_not_retried", 400,
     dify(400, "document_already_finished", "The document has been processed."),
     {"on_document": True}, NotReadyError, None),
    ("archived_document_is_refused", 403,
     dify(403, "archived_document_immutable", "The archived document is not editable."),
     {"on_document": True}, RefusedError, None),
    # --- file checks: skip and record
    ("unsupported_file_type_is_refused", 415,
     dify(415, "unsupported_file_type", "File type not allowed."), {}, RefusedError, None),
    ("file_too_large_is_refused", 413,
     dify(413, "file_too_large", "File size exceeded. {message}"), {}, RefusedError, None),
    ("html_413_from_nginx_is_refused", 413,
     nginx(413, "Request Entity Too Large"), {}, RefusedError, None),
    ("too_many_files_is_refused", 400,
     dify(400, "too_many_files", "Only one file is allowed."), {}, RefusedError, None),
    ("no_file_uploaded_is_refused", 400,
     dify(400, "no_file_uploaded", "Please upload your file."), {}, RefusedError, None),
    ("invalid_metadata_is_refused", 400,
     dify(400, "invalid_metadata", "Invalid metadata value"), {}, RefusedError, None),
    ("invalid_action_is_refused", 400,
     dify(400, "invalid_action", "Invalid action: frobnicate"), {}, RefusedError, None),
    # --- workspace set-up and plan: stop with a message
    ("provider_not_initialize_is_a_quota_error", 400,
     dify(400, "provider_not_initialize", "No valid model provider credentials found."), {},
     QuotaError, None),
    ("provider_quota_exceeded_is_a_quota_error", 400,
     dify(400, "provider_quota_exceeded", "Your quota has been exhausted."), {},
     QuotaError, None),
    ("model_currently_not_support_is_a_quota_error", 400,
     dify(400, "model_currently_not_support", "Dify Hosted OpenAI trial currently not support"),
     {}, QuotaError, None),
    ("dataset_not_initialized_is_a_quota_error", 400,
     dify(400, "dataset_not_initialized", "The dataset is still being initialized."), {},
     QuotaError, None),
    ("high_quality_dataset_only_is_a_quota_error", 400,
     dify(400, "high_quality_dataset_only", "Current operation only supports 'high-quality'."),
     {}, QuotaError, None),
    ("document_count_limit_403_is_a_quota_error", 403,
     dify(403, "forbidden", DOC_LIMIT), {"on_create": True}, QuotaError, None),
    ("other_403_is_refused", 403,
     dify(403, "forbidden", "You do not have permission to access this dataset."), {},
     RefusedError, None),
    # --- 409
    ("dataset_name_duplicate_is_fatal_with_its_code", 409,
     dify(409, "dataset_name_duplicate", "The dataset name already exists."), {},
     FatalError, None),
    ("dataset_in_use_is_fatal", 409,
     dify(409, "dataset_in_use", "The dataset is being used by some apps."), {},
     FatalError, None),
    # --- slow down
    ("rate_limit_403_is_rate_limited", 403,
     dify(403, "forbidden", RATE_LIMIT), {"on_create": True}, RateLimited, None),
    ("429_with_an_html_body_from_a_proxy_is_still_rate_limited", 429,
     b"<html><body>429 Too Many Requests</body></html>", {"retry_after": "3"}, RateLimited, 3.0),
    ("429_is_rate_limited_and_keeps_retry_after", 429,
     dify(429, "too_many_requests", "Too many requests."), {"retry_after": "7"},
     RateLimited, 7.0),
    ("429_without_retry_after_has_none", 429,
     dify(429, "too_many_requests", "Too many requests."), {}, RateLimited, None),
    ("429_with_an_unparsable_retry_after_has_none", 429,
     dify(429, "too_many_requests", "Too many requests."),
     {"retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}, RateLimited, None),
    # --- server trouble: retry
    ("500_json_is_transient", 500,
     dify(500, "internal_server_error", "The server encountered an internal error."), {},
     TransientError, None),
    ("502_json_is_transient", 502, dify(502, "bad_gateway", "Bad gateway"), {},
     TransientError, None),
    ("503_json_is_transient_and_keeps_retry_after", 503,
     dify(503, "service_unavailable", "Service unavailable"), {"retry_after": "3"},
     TransientError, 3.0),
    ("504_json_is_transient", 504, dify(504, "gateway_timeout", "Gateway timeout"), {},
     TransientError, None),
    ("500_html_is_transient", 500, nginx(500, "Internal Server Error"), {},
     TransientError, None),
    ("502_html_from_nginx_means_dify_is_unreachable_behind_it", 502, nginx(502, "Bad Gateway"), {},
     ServerUnreachable, None),
    ("503_html_from_nginx_is_unreachable_and_keeps_retry_after", 503,
     nginx(503, "Service Temporarily Unavailable"), {"retry_after": "2"}, ServerUnreachable, 2.0),
    ("504_html_from_nginx_is_unreachable", 504, nginx(504, "Gateway Time-out"), {},
     ServerUnreachable, None),
    ("empty_502_body_is_unreachable", 502, b"", {}, ServerUnreachable, None),
    ("html_404_is_not_the_dify_api", 404, nginx(404, "Not Found"), {}, NotDifyAPI, None),
    ("generic_json_404_of_an_unknown_route_is_not_the_dify_api", 404,
     dify(404, "not_found", "The requested URL was not found on the server. If you entered the URL "
                            "manually please check your spelling and try again."), {}, NotDifyAPI, None),
]


@pytest.mark.parametrize(("status", "body", "kwargs", "expected", "retry_after"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_answer_maps_to_the_class_that_says_what_to_do(status, body, kwargs, expected,
                                                       retry_after):
    error = error_from_response(status, body, about="create 'a.md'", **kwargs)
    assert type(error) is expected
    assert error.status == status
    if isinstance(error, TransientError):
        assert error.retry_after == retry_after
    else:
        assert retry_after is None


def test_every_error_code_of_the_contract_has_a_row():
    codes = {"unauthorized", "invalid_param", "not_found", "document_indexing",
             "document_already_finished", "archived_document_immutable", "unsupported_file_type",
             "file_too_large", "too_many_files", "no_file_uploaded", "provider_not_initialize",
             "provider_quota_exceeded", "model_currently_not_support", "dataset_not_initialized",
             "high_quality_dataset_only", "invalid_action", "invalid_metadata",
             "dataset_name_duplicate", "dataset_in_use", "forbidden"}
    covered = {json.loads(row[2])["code"] for row in ROWS if row[2].startswith(b"{")}
    assert codes <= covered


def test_the_classes_form_the_documented_tree():
    assert issubclass(ServerUnreachable, TransientError)
    assert issubclass(RateLimited, TransientError)
    for cls in (AuthError, DatasetMissing, QuotaError):
        assert issubclass(cls, FatalError)
    for cls in (TransientError, NotReadyError, RefusedError, NotFoundError, FatalError):
        assert issubclass(cls, DifyError)
    assert issubclass(DifyError, DifySyncError)


def test_a_dify_error_keeps_its_code_and_shows_status_code_and_message():
    error = error_from_response(415, dify(415, "unsupported_file_type", "File type not allowed."),
                                about="create 'a.exe'")
    assert error.code == "unsupported_file_type"
    assert str(error) == "415 unsupported_file_type: create 'a.exe': File type not allowed."


def test_dataset_name_duplicate_keeps_its_code_so_the_caller_can_adopt_the_dataset():
    error = error_from_response(409, dify(409, "dataset_name_duplicate", "exists"))
    assert error.code == "dataset_name_duplicate"


def test_html_body_message_points_at_the_base_url_and_quotes_a_short_snippet():
    error = error_from_response(500, nginx(500, "Internal Server Error"), about="list documents")
    text = str(error)
    assert "dify.base_url" in text
    assert "500 Internal Server Error" in text
    assert len(text) < 300


def test_a_proxy_gateway_error_says_dify_is_down_behind_it():
    assert "proxy in front of Dify answered 502" in str(error_from_response(502, nginx(502, "Bad Gateway")))


def test_auth_error_message_names_the_fix():
    error = error_from_response(401, dify(401, "unauthorized", "Access token is invalid"))
    assert "dataset (Knowledge) API key" in str(error)


def test_dataset_missing_message_names_the_fix():
    error = error_from_response(404, dify(404, "not_found", "Dataset not found."))
    assert "dataset_id" in str(error)


def test_bare_400_on_create_says_the_file_was_refused():
    error = error_from_response(400, dify(400, "invalid_param", ""), about="create 'a.exe'",
                                on_create=True)
    assert "refused the file" in str(error)


def test_negative_retry_after_counts_as_zero():
    error = error_from_response(429, dify(429, "too_many_requests", "slow"), retry_after="-5")
    assert isinstance(error, RateLimited) and error.retry_after == 0.0


def test_a_json_body_that_is_not_an_object_is_treated_like_html():
    error = error_from_response(500, b"[1, 2]")
    assert type(error) is TransientError


# --- what each class means: errors.verdict, the one table ------------------------------

VERDICTS = [
    # (error, what happens to the request, to the folder's pass, whether the run stops, exit code)
    (ServerUnreachable("x"), Next.FAIL, Next.OUTAGE, False, 69),
    (RateLimited("x"), Next.FAIL, Next.OUTAGE, False, 1),
    (TransientError("x"), Next.FAIL, Next.OUTAGE, False, 1),
    (NotReadyError("x"), Next.WAIT, Next.FAIL, False, 1),
    (RefusedError("x"), Next.SKIP, Next.FAIL, False, 1),
    (NotFoundError("x"), Next.GONE, Next.FAIL, False, 1),
    (AuthError("x"), Next.FAIL, Next.STOP, True, 77),
    (NotDifyAPI("x"), Next.FAIL, Next.STOP, True, 69),
    (DatasetMissing("x"), Next.FAIL, Next.STOP, False, 1),
    (QuotaError("x"), Next.FAIL, Next.STOP, False, 1),
    (FatalError("x"), Next.FAIL, Next.STOP, False, 1),
    (StateWriteError("disk full"), Next.FAIL, Next.OUTAGE, False, 1),
    (StateError("corrupt"), Next.FAIL, Next.STOP, True, 78),
    (ConfigError("bad key"), Next.FAIL, Next.STOP, True, 78),
    (LeaseBusy("/srv/docs", None, "try later"), Next.FAIL, Next.STOP, False, 75),
]


@pytest.mark.parametrize("error, item, folder, stops_run, code", VERDICTS,
                         ids=[type(row[0]).__name__ for row in VERDICTS])
def test_each_error_class_has_one_meaning(error, item, folder, stops_run, code):
    found = verdict(error)
    assert (found.item, found.folder, found.stops_run, found.exit_code) == (item, folder, stops_run, code)
    assert exit_code(error) == code


def test_a_service_backs_off_on_everything_that_stops_or_suspends_a_folder():
    assert verdict(ServerUnreachable("x")).backs_off and verdict(AuthError("x")).backs_off
    assert not verdict(RefusedError("x")).backs_off and not verdict(NotReadyError("x")).backs_off


def test_only_transient_answers_are_sent_again():
    resent = [type(e).__name__ for e, *_ in VERDICTS if verdict(e).resend]
    assert resent == ["ServerUnreachable", "RateLimited", "TransientError"]


def test_no_error_is_exit_0():
    assert exit_code(None) == 0
