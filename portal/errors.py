"""Error pages: API paths answer in the API's JSON error shape, pages in HTML."""

from django.http import HttpRequest, HttpResponse
from django.views.defaults import page_not_found

from tenants.access import is_api_request
from tenants.api_errors import json_error


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_request(request):
        return json_error(404, "not_found", "Not found.")
    return page_not_found(request, exception)
