"""Thin, synchronous Kubernetes helpers on the official client (call them via asyncio.to_thread).

Every write is a server-side apply with a stable field manager: the API server merges our fields with
everyone else's, so there is no client-side read-modify-write and no lost update. Errors are mapped to a
few exceptions with messages a human can act on.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from model_deploy.operator.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

# Plurals of the kinds the operator writes; anything else is looked up once through API discovery.
_KNOWN_PLURALS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Namespace"): ("namespaces", False),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    (API_VERSION, KIND): (PLURAL, True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
}


class KubeError(RuntimeError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeUnavailable(KubeError):
    """The API server could not be reached (connection refused, timeout, 5xx)."""


class KubeNotFound(KubeError):
    """404: the object (or its kind: is the CRD installed?) does not exist."""


class KubeConflict(KubeError):
    """409: another field manager owns a field we apply, or the object changed underneath us."""


class KubeInvalid(KubeError):
    """422: the API server rejected the object; the message lists the offending fields."""


class KubeForbidden(KubeError):
    """401/403: the operator's service account lacks a permission (check the chart's RBAC)."""


def _error_message(body: str | bytes | None) -> tuple[str, str, list[str]]:
    """(message, reason, ['field: problem', ...]) from a metav1.Status body, tolerating non-JSON bodies."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        status = json.loads(body or "")
    except ValueError:
        return (body or "").strip()[:500], "", []
    if not isinstance(status, dict):
        return str(status)[:500], "", []
    causes = [
        f"{cause.get('field', '?')}: {cause.get('message', '')}".strip()
        for cause in (status.get("details") or {}).get("causes") or []
    ]
    return status.get("message", ""), status.get("reason", ""), causes


def map_api_exception(exc: ApiException, what: str) -> KubeError:
    """Turn an ApiException into the matching KubeError; `what` names the object for the message."""
    message, reason, causes = _error_message(exc.body)
    status = exc.status or 0
    detail = message or exc.reason or "no message"
    if status == 404:
        return KubeNotFound(f"{what}: not found ({detail})", status, reason)
    if status == 409:
        return KubeConflict(
            f"{what}: conflict ({detail}); another field manager owns these fields or the object changed",
            status,
            reason,
        )
    if status == 422:
        fields = "; ".join(causes) if causes else detail
        return KubeInvalid(f"{what}: rejected by the API server: {fields}", status, reason)
    if status in (401, 403):
        return KubeForbidden(
            f"{what}: forbidden ({detail}); grant the operator's service account this permission",
            status,
            reason,
        )
    if status == 0 or status >= 500 or status == 429:
        return KubeUnavailable(f"{what}: API server unavailable ({status} {detail})", status, reason)
    return KubeError(f"{what}: HTTP {status} {detail}", status, reason)


def load_api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    configuration = k8s_client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config(client_configuration=configuration)
    else:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


def split_api_version(api_version: str) -> tuple[str, str]:
    """'apps/v1' -> ('apps', 'v1'); 'v1' -> ('', 'v1')."""
    group, _, version = api_version.rpartition("/")
    return group, version


def object_path(
    api_version: str, plural: str, namespaced: bool, namespace: str | None, name: str | None = None
) -> str:
    group, version = split_api_version(api_version)
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespaced:
        if not namespace:
            raise ValueError(f"{plural} are namespaced: set metadata.namespace")
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    return f"{base}/{quote(name, safe='')}" if name else base


class Kube:
    """A handle on one API server. Methods block; every call has `request_timeout` seconds."""

    def __init__(self, api_client: k8s_client.ApiClient, request_timeout: float = 30.0):
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.list_page_size = 500
        self._plurals: dict[tuple[str, str], tuple[str, bool]] = dict(_KNOWN_PLURALS)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, request_timeout: float = 30.0) -> "Kube":
        return cls(load_api_client(kubeconfig), request_timeout)

    # -- raw requests ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        what: str | None = None,
    ) -> dict[str, Any]:
        """One HTTP call; returns the decoded JSON body (or {}), raises a KubeError subclass."""
        url = self.api_client.configuration.host + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()})
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # Authorization (bearer token / refreshed exec credentials) comes from the client's auth settings.
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        try:
            # The REST client JSON-encodes dict bodies for JSON and structured-YAML (apply) content types.
            response = self.api_client.rest_client.request(
                method, url, headers=headers, body=body, _request_timeout=self.request_timeout
            )
            data = response.read() if hasattr(response, "read") else response.data
        except ApiException as exc:
            raise map_api_exception(exc, what or f"{method} {path}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"{what or path}: API server unreachable ({exc})") from None
        if not 200 <= response.status <= 299:
            raise map_api_exception(
                ApiException(status=response.status, reason=response.reason, body=data), what or path
            )
        if not data:
            return {}
        return json.loads(data)

    def resource_for(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind; unknown kinds are discovered once and cached."""
        key = (api_version, kind)
        if key not in self._plurals:
            group, version = split_api_version(api_version)
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            listing = self.request("GET", path, what=f"discovery of {api_version}")
            for resource in listing.get("resources", []):
                if "/" not in resource["name"]:
                    self._plurals[(api_version, resource["kind"])] = (
                        resource["name"],
                        bool(resource.get("namespaced")),
                    )
            if key not in self._plurals:
                raise KubeNotFound(f"the API server does not serve kind {kind} in {api_version}", 404)
        return self._plurals[key]

    # -- generic object helpers -----------------------------------------------------------------
    def apply(
        self, obj: dict[str, Any], field_manager: str, force: bool = True, subresource: str = ""
    ) -> dict[str, Any]:
        """Server-side apply of `obj` (needs apiVersion, kind, metadata.name[, namespace])."""
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        metadata = obj.get("metadata") or {}
        name, namespace = metadata.get("name"), metadata.get("namespace")
        if not api_version or not kind or not name:
            raise ValueError("apply needs apiVersion, kind and metadata.name in the object")
        plural, namespaced = self.resource_for(api_version, kind)
        path = object_path(api_version, plural, namespaced, namespace, name)
        if subresource:
            path += f"/{subresource}"
        what = f"{kind} {namespace + '/' if namespaced else ''}{name}{' ' + subresource if subresource else ''}"
        return self.request(
            "PATCH",
            path,
            query={"fieldManager": field_manager, "force": force},
            body=obj,
            content_type=APPLY_PATCH,
            what=what,
        )

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        plural, namespaced = self.resource_for(api_version, kind)
        try:
            return self.request(
                "GET", object_path(api_version, plural, namespaced, namespace, name), what=f"{kind} {name}"
            )
        except KubeNotFound:
            return None

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """All objects of a kind (namespace None: every namespace), following list pagination."""
        plural, namespaced = self.resource_for(api_version, kind)
        if namespaced and namespace:
            path = object_path(api_version, plural, True, namespace)
        else:
            path = object_path(api_version, plural, False, None)
        items: list[dict[str, Any]] = []
        continue_token = None
        while True:
            page = self.request(
                "GET",
                path,
                query={"labelSelector": label_selector, "limit": self.list_page_size, "continue": continue_token},
                what=f"list {plural}",
            )
            items.extend(page.get("items") or [])
            continue_token = (page.get("metadata") or {}).get("continue")
            if not continue_token:
                return items

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        plural, namespaced = self.resource_for(api_version, kind)
        try:
            self.request(
                "DELETE",
                object_path(api_version, plural, namespaced, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
                what=f"{kind} {name}",
            )
        except KubeNotFound:
            return False
        return True

    # -- the operator's objects -----------------------------------------------------------------
    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("apps/v1", "Deployment", namespace, name)

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("v1", "ConfigMap", namespace, name)

    def get_cr(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, KIND, namespace, name)

    def list_crs(self, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list(API_VERSION, KIND, namespace, label_selector)

    def apply_cr(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        obj = {"apiVersion": API_VERSION, "kind": KIND, **obj}
        return self.apply(obj, field_manager, force=True)

    def delete_cr(self, namespace: str, name: str) -> bool:
        return self.delete(API_VERSION, KIND, namespace, name)

    def patch_cr_status(
        self, namespace: str, name: str, status: dict[str, Any], field_manager: str
    ) -> dict[str, Any]:
        """Server-side apply of the whole status: fields we stop sending are removed, others' kept."""
        obj = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        return self.apply(obj, field_manager, force=True, subresource="status")

    def crd_established(self) -> bool:
        """True when the ModelDeployment CRD is installed and served."""
        crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, f"{PLURAL}.{GROUP}")
        if crd is None:
            return False
        conditions = (crd.get("status") or {}).get("conditions") or []
        served = any(v.get("name") == VERSION and v.get("served") for v in crd["spec"].get("versions", []))
        return served and any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
