"""The sidecar: a local HTTP/JSON API to a node, for programs in any language (see ``physarum sidecar``).

:mod:`~physarum.sidecar.openapi` holds the API's OpenAPI document (the routes and body schemas),
:mod:`~physarum.sidecar.api` the operations, :mod:`~physarum.sidecar.server` the h11 server.
"""

from physarum.sidecar.api import ApiError, ApiOptions, SidecarApi
from physarum.sidecar.openapi import OPENAPI
from physarum.sidecar.server import ApiServer

__all__ = ["OPENAPI", "ApiError", "ApiOptions", "ApiServer", "SidecarApi"]
