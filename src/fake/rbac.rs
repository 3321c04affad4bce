//! RBAC for the fake API server, as the real one authorizes a service
//! account: the request's verb, API group, resource, namespace and name are
//! checked against the rules of the Roles and ClusterRoles bound to it, and
//! anything not granted is 403. Fed with the objects a Helm chart renders, it
//! makes a verb the chart forgets (`patch` on the leader Lease) fail in a test
//! as it fails on a real cluster.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};
use serde_json::Value;

use super::gate::status;

/// Who every request comes from: a service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Subject {
    /// The user name the API server gives it.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// One rule of a Role or ClusterRole, with where it applies.
#[derive(Clone, Debug)]
struct Rule {
    /// `None`: every namespace and the cluster scope (a ClusterRole bound
    /// cluster-wide); `Some(ns)`: that namespace only.
    namespace: Option<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

/// What a request asks to do, in RBAC's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    /// A request for an API object or collection.
    Resource {
        /// get, list, watch, create, update, patch, delete, deletecollection.
        verb: String,
        /// "" for the core group.
        group: String,
        /// Plural resource, `resource/subresource` for a subresource.
        resource: String,
        /// None at the cluster scope.
        namespace: Option<String>,
        /// None for a collection.
        name: Option<String>,
    },
    /// Any other path (`/version`, `/metrics`).
    NonResource {
        /// The HTTP verb in lower case.
        verb: String,
        /// The path.
        path: String,
    },
}

/// The rules in force for one subject.
#[derive(Clone, Debug)]
pub struct Policy {
    subject: Subject,
    rules: Vec<Rule>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

impl Policy {
    /// The rules `objects` (Roles, ClusterRoles and their bindings, as a chart
    /// renders them; other kinds are ignored) grant `subject`.
    pub fn from_objects(objects: &[Value], subject: Subject) -> Policy {
        let kind = |o: &Value| field(o, &["kind"]).unwrap_or_default().to_string();
        let role = |kind_: &str, name: &str, namespace: Option<&str>| {
            objects.iter().find(|o| {
                kind(o) == kind_
                    && field(o, &["metadata", "name"]) == Some(name)
                    && (namespace.is_none() || field(o, &["metadata", "namespace"]) == namespace)
            })
        };
        let mut rules = Vec::new();
        for binding in objects {
            let cluster_wide = match kind(binding).as_str() {
                "ClusterRoleBinding" => true,
                "RoleBinding" => false,
                _ => continue,
            };
            let binding_ns = field(binding, &["metadata", "namespace"]).unwrap_or("default");
            let bound = binding
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|s| match field(s, &["kind"]) {
                    Some("ServiceAccount") => {
                        // A ClusterRoleBinding's subject must name its namespace.
                        let namespace = if cluster_wide {
                            field(s, &["namespace"])
                        } else {
                            Some(field(s, &["namespace"]).unwrap_or(binding_ns))
                        };
                        field(s, &["name"]) == Some(subject.name.as_str())
                            && namespace == Some(subject.namespace.as_str())
                    }
                    Some("Group") => {
                        let group = field(s, &["name"]).unwrap_or_default();
                        group == "system:authenticated"
                            || group == "system:serviceaccounts"
                            || group == format!("system:serviceaccounts:{}", subject.namespace)
                    }
                    Some("User") => field(s, &["name"]) == Some(subject.user().as_str()),
                    _ => false,
                });
            if !bound {
                continue;
            }
            let ref_kind = field(binding, &["roleRef", "kind"]).unwrap_or_default();
            let ref_name = field(binding, &["roleRef", "name"]).unwrap_or_default();
            let target = match ref_kind {
                "ClusterRole" => role("ClusterRole", ref_name, None),
                // A RoleBinding's Role is in the binding's namespace.
                "Role" if !cluster_wide => role("Role", ref_name, Some(binding_ns)),
                _ => None,
            };
            let Some(target) = target else { continue };
            let namespace = (!cluster_wide).then(|| binding_ns.to_string());
            for r in target
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                rules.push(Rule {
                    namespace: namespace.clone(),
                    api_groups: strings(r, "apiGroups"),
                    resources: strings(r, "resources"),
                    verbs: strings(r, "verbs"),
                    resource_names: strings(r, "resourceNames"),
                    // Non-resource URLs are granted only cluster-wide.
                    non_resource_urls: if cluster_wide {
                        strings(r, "nonResourceURLs")
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        Policy { subject, rules }
    }

    /// Whether the rules grant `request`. Discovery (`/version`, `/api`,
    /// `/apis`) is open to every authenticated user, as the default
    /// `system:discovery` ClusterRole grants.
    pub fn allows(&self, request: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        match request {
            Attributes::NonResource { verb, path } => {
                matches!(
                    path.as_str(),
                    "/version" | "/api" | "/apis" | "/healthz" | "/readyz" | "/livez"
                ) || path.starts_with("/api/")
                    || path.starts_with("/apis/")
                    || self.rules.iter().any(|r| {
                        any(&r.verbs, verb)
                            && r.non_resource_urls.iter().any(|u| {
                                u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                            })
                    })
            }
            Attributes::Resource {
                verb,
                group,
                resource,
                namespace,
                name,
            } => self.rules.iter().any(|r| {
                let in_scope = match (&r.namespace, namespace) {
                    (None, _) => true,
                    (Some(rule_ns), Some(ns)) => rule_ns == ns,
                    (Some(_), None) => false,
                };
                let named = r.resource_names.is_empty()
                    || name.as_ref().is_some_and(|n| r.resource_names.contains(n));
                in_scope
                    && named
                    && any(&r.verbs, verb)
                    && any(&r.api_groups, group)
                    && any(&r.resources, resource)
            }),
        }
    }

    /// The API server's words for a refusal.
    fn refusal(&self, request: &Attributes) -> String {
        let user = self.subject.user();
        match request {
            Attributes::NonResource { verb, path } => {
                format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
            }
            Attributes::Resource {
                verb,
                group,
                resource,
                namespace,
                name,
            } => {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let object = name.as_ref().map(|n| format!(" \"{n}\"")).unwrap_or_default();
                let scope = namespace
                    .as_ref()
                    .map(|ns| format!("in the namespace \"{ns}\""))
                    .unwrap_or_else(|| "at the cluster scope".to_string());
                format!(
                    "{qualified}{object} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
                )
            }
        }
    }
}

/// A request in RBAC's terms, as the API server's request-info resolver reads it.
pub fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => Some(("", rest)),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => Some((*group, rest)),
        _ => None,
    };
    let Some((group, rest)) = rest else {
        return Attributes::NonResource {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
        };
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => (resource.to_string(), None),
        [resource, name] => (resource.to_string(), Some(name.to_string())),
        [resource, name, sub, ..] => (format!("{resource}/{sub}"), Some(name.to_string())),
        [] => (String::new(), None),
    };
    // As the API server reads it: any value but "0" and "false" is a watch.
    let watching = query.is_some_and(|q| {
        q.split('&').any(|kv| match kv.split_once('=') {
            Some(("watch", v)) => !matches!(v, "0" | "false" | "False"),
            None => kv == "watch",
            _ => false,
        })
    });
    let verb = match *method {
        Method::GET | Method::HEAD if watching => "watch",
        Method::GET | Method::HEAD if name.is_none() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    Attributes::Resource {
        verb: verb.to_string(),
        group: group.to_string(),
        resource,
        namespace,
        name,
    }
}

/// Middleware: every API request checked against the policy; the test
/// harness's own `/fake/...` endpoints are not part of the API.
pub(super) async fn authorize(State(policy): State<Arc<Policy>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/fake/") {
        let asked = attributes(request.method(), path, request.uri().query());
        if !policy.allows(&asked) {
            return status(StatusCode::FORBIDDEN, "Forbidden", &policy.refusal(&asked));
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chart() -> Vec<Value> {
        vec![
            json!({"kind": "ClusterRole", "metadata": {"name": "kns"},
                   "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "kns"},
                   "roleRef": {"kind": "ClusterRole", "name": "kns"},
                   "subjects": [{"kind": "ServiceAccount", "name": "kns", "namespace": "monitoring"}]}),
            json!({"kind": "Role", "metadata": {"name": "kns-le", "namespace": "monitoring"},
                   "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "resourceNames": ["kns"], "verbs": ["get", "update"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "kns-le", "namespace": "monitoring"},
                   "roleRef": {"kind": "Role", "name": "kns-le"},
                   "subjects": [{"kind": "ServiceAccount", "name": "kns", "namespace": "monitoring"}]}),
        ]
    }

    fn policy(name: &str) -> Policy {
        Policy::from_objects(
            &chart(),
            Subject {
                namespace: "monitoring".into(),
                name: name.into(),
            },
        )
    }

    /// Method, path, query; then verb, group, resource, namespace, name.
    type Row = (
        Method,
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[test]
    fn requests_read_as_the_api_server_reads_them() {
        let table: &[Row] = &[
            (
                Method::GET,
                "/api/v1/nodes",
                Some("limit=500"),
                "list",
                "",
                "nodes",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/nodes",
                Some("watch=true&resourceVersion=1"),
                "watch",
                "",
                "nodes",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/nodes/n1",
                None,
                "get",
                "",
                "nodes",
                None,
                Some("n1"),
            ),
            (
                Method::PATCH,
                "/api/v1/nodes/n1/status",
                None,
                "patch",
                "",
                "nodes/status",
                None,
                Some("n1"),
            ),
            (
                Method::PATCH,
                "/apis/coordination.k8s.io/v1/namespaces/monitoring/leases/kns",
                None,
                "patch",
                "coordination.k8s.io",
                "leases",
                Some("monitoring"),
                Some("kns"),
            ),
            (
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                None,
                "create",
                "authentication.k8s.io",
                "tokenreviews",
                None,
                None,
            ),
        ];
        for (method, path, query, verb, group, resource, namespace, name) in table {
            assert_eq!(
                attributes(method, path, *query),
                Attributes::Resource {
                    verb: verb.to_string(),
                    group: group.to_string(),
                    resource: resource.to_string(),
                    namespace: namespace.map(str::to_string),
                    name: name.map(str::to_string),
                },
                "{method} {path}"
            );
        }
        assert_eq!(
            attributes(&Method::GET, "/version", None),
            Attributes::NonResource {
                verb: "get".into(),
                path: "/version".into()
            }
        );
    }

    #[test]
    fn only_what_the_bound_roles_grant_is_allowed() {
        let p = policy("kns");
        let lease = |m: Method, name: &str| {
            attributes(
                &m,
                &format!("/apis/coordination.k8s.io/v1/namespaces/monitoring/leases/{name}"),
                None,
            )
        };
        let allowed = [
            attributes(&Method::GET, "/api/v1/nodes", None),
            attributes(&Method::GET, "/api/v1/nodes", Some("watch=true")),
            lease(Method::GET, "kns"),
            lease(Method::PUT, "kns"),
            attributes(&Method::GET, "/version", None),
        ];
        for a in &allowed {
            assert!(p.allows(a), "{a:?}");
        }
        let refused = [
            // The bug this module exists for: PATCH is checked against "patch".
            lease(Method::PATCH, "kns"),
            lease(Method::GET, "another"),
            attributes(
                &Method::GET,
                "/apis/coordination.k8s.io/v1/namespaces/other/leases/kns",
                None,
            ),
            attributes(&Method::DELETE, "/api/v1/nodes/n1", None),
            attributes(&Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews", None),
            attributes(&Method::GET, "/metrics", None),
        ];
        for a in &refused {
            assert!(!p.allows(a), "{a:?}");
        }
        assert!(
            p.refusal(&lease(Method::PATCH, "kns")).contains(
                "leases.coordination.k8s.io \"kns\" is forbidden: User \"system:serviceaccount:monitoring:kns\" cannot patch"
            )
        );
        // Another service account is bound to nothing.
        assert!(!policy("other").allows(&attributes(&Method::GET, "/api/v1/nodes", None)));
    }
}
