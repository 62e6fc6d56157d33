//! A fake Kubernetes API server at the HTTP boundary (kube's tower-test pattern): the
//! controller's `kube::Client` sends real requests into a `tower_test` mock, and this
//! store answers them as the API server would (objects, resourceVersions and 409
//! Conflicts, JSON merge patches, label-selected lists, the status subresource,
//! finalizers). Every request is recorded so scenarios can assert what the
//! controller did.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use tokio::sync::mpsc;

/// What the fake answers: a JSON document, or a watch's events.
enum Answer {
    Json(Value),
    Watch(mpsc::UnboundedReceiver<Value>),
}
use serde_json::{Value, json};

/// One RBAC rule: the API groups, resources (`plural` or `plural/subresource`) and
/// verbs it allows.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// API groups; "" is the core group.
    pub api_groups: Vec<String>,
    /// Resources.
    pub resources: Vec<String>,
    /// Verbs.
    pub verbs: Vec<String>,
}

/// One request the controller made.
#[derive(Clone, Debug)]
pub struct Call {
    /// Its RBAC verb (get, list, watch, create, update, patch, delete).
    pub verb: String,
    /// Its API group ("" for the core group).
    pub group: String,
    /// Its RBAC resource: `plural` or `plural/subresource`.
    pub resource: String,
    /// GET, POST, PUT, PATCH, DELETE.
    pub method: String,
    /// `kind/name` or `kind/name/status` (kind is the resource plural).
    pub target: String,
    /// The request body (JSON), Null when none.
    pub body: Value,
}

impl Call {
    /// `"PATCH services/app-active"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// The body of every answer: whole, or a stream of watch events.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One open watch: objects of a kind (in a namespace, or all), by label selector.
struct Watch {
    plural: String,
    namespace: Option<String>,
    selector: String,
    fields: String,
    events: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct Store {
    /// ("group/plural", namespace, name) → object; the core group is "".
    objects: BTreeMap<(String, String, String), Value>,
    watches: Vec<Watch>,
    resource_version: u64,
    calls: Vec<Call>,
    /// Answer the next request matching (method, target) with this status code.
    failures: Vec<(String, String, u16)>,
}

/// The fake API server. Clone it freely: clones share the store.
#[derive(Clone, Default)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
}

struct Path {
    /// "group/plural".
    plural: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Path> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/group/version/...
    let (group, rest) = match *parts.first()? {
        "api" => ("", &parts[2..]),
        "apis" => (*parts.get(1)?, &parts[3..]),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        rest => (String::new(), rest),
    };
    Some(Path {
        plural: format!("{group}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Field selectors on `metadata.name` and `metadata.namespace` (`=`, `==`, `!=`), the
/// ones every kind supports.
fn matches_fields(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, value, equal) = match term.split_once("!=") {
            Some((path, value)) => (path, value, false),
            None => match term.split_once('=') {
                Some((path, value)) => (path, value.trim_start_matches('='), true),
                None => return true,
            },
        };
        let actual = match path.trim() {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            other => panic!("the fake supports no field selector on {other}"),
        };
        (actual == Some(value.trim())) == equal
    })
}

/// Kubernetes label selector syntax: `key`, `!key`, `key=value` (or `==`),
/// `key!=value`, `key in (a,b)`, `key notin (a,b)`, joined by commas.
fn matches_labels(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (index, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .all(|term| {
            let set = |key: &str, values: &str| {
                let value = labels[key.trim()].as_str();
                values
                    .trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .any(|v| Some(v.trim()) == value)
            };
            if let Some((key, values)) = term.split_once(" notin ") {
                !set(key, values)
            } else if let Some((key, values)) = term.split_once(" in ") {
                set(key, values)
            } else if let Some((key, value)) = term.split_once("!=") {
                labels[key.trim()].as_str() != Some(value.trim())
            } else if let Some((key, value)) = term.split_once('=') {
                labels[key.trim()].as_str() == Some(value.trim_start_matches('=').trim())
            } else if let Some(key) = term.strip_prefix('!') {
                labels[key].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

impl Store {
    /// Stores an object and tells the watches (ADDED or MODIFIED).
    fn put(&mut self, key: (String, String, String), object: Value) {
        let kind = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.notify(&key, kind, &object);
        self.objects.insert(key, object);
    }

    /// Removes an object and tells the watches.
    fn remove(&mut self, key: &(String, String, String)) {
        if let Some(object) = self.objects.remove(key) {
            self.notify(key, "DELETED", &object);
        }
    }

    fn notify(&mut self, key: &(String, String, String), kind: &str, object: &Value) {
        self.watches.retain(|watch| {
            let matches = watch.plural == key.0
                && watch.namespace.as_ref().is_none_or(|ns| *ns == key.1)
                && matches_labels(object, &watch.selector)
                && matches_fields(object, &watch.fields);
            !matches
                || watch
                    .events
                    .send(json!({"type": kind, "object": object}))
                    .is_ok()
        });
    }
}

impl FakeApi {
    /// A kube Client talking to this fake with every permission (a person's CLI).
    pub fn client(&self) -> kube::Client {
        self.client_with(None)
    }

    /// A kube Client whose requests are checked against RBAC rules, as the API server
    /// checks a ServiceAccount's: anything not allowed is a 403.
    pub fn client_with_rules(&self, rules: Vec<Rule>) -> kube::Client {
        self.client_with(Some(rules))
    }

    fn client_with(&self, rules: Option<Vec<Rule>>) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = fake.answer(request, rules.as_deref()).await;
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Serves the fake over HTTP on `listener` (every permission), for programs that
    /// talk to it through a kubeconfig, such as the `teal` binary.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = self.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let fake = fake.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let request = Request::from_parts(parts, Body::from(bytes.to_vec()));
                            Ok::<_, Infallible>(fake.answer(request, None).await)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Stores every document of a YAML manifest file, as `kubectl apply -f` would.
    pub fn load(&self, text: &str) {
        let documents: Vec<Value> = serde_saphyr::from_str_multiple(text).unwrap();
        for document in documents {
            let kind = document["kind"].as_str().unwrap().to_ascii_lowercase();
            self.insert(&format!("{kind}s"), document);
        }
    }

    /// Stores an object as `kubectl apply` would create it.
    pub fn insert(&self, plural: &str, mut object: Value) {
        let group = object["apiVersion"]
            .as_str()
            .and_then(|v| v.rsplit_once('/'))
            .map_or("", |(group, _)| group)
            .to_owned();
        let plural = format!("{group}/{plural}");
        let plural = plural.as_str();
        let mut store = self.store.lock().unwrap();
        store.resource_version += 1;
        let rv = store.resource_version.to_string();
        let meta = &mut object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(rv);
        meta["generation"] = json!(1);
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("uid-{plural}-{rv}"));
        }
        let name = meta["name"].as_str().unwrap().to_owned();
        store.put((plural.to_owned(), namespace, name), object);
    }

    /// The object of this plural (any group), if it exists.
    pub fn get(&self, plural: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .iter()
            .find(|((p, ns, n), _)| same_plural(p, plural) && ns == "default" && n == name)
            .map(|(_, v)| v.clone())
    }

    /// The object of this plural (any group) in a namespace, if it exists.
    pub fn get_in(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .iter()
            .find(|((p, ns, n), _)| same_plural(p, plural) && ns == namespace && n == name)
            .map(|(_, v)| v.clone())
    }

    /// Objects of a kind.
    pub fn all(&self, plural: &str) -> Vec<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((p, _, _), _)| same_plural(p, plural))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes an object as a person or another controller would (a merge patch that
    /// bumps its resourceVersion, and its generation when the spec changes).
    pub fn edit(&self, plural: &str, name: &str, patch: Value) {
        let mut store = self.store.lock().unwrap();
        store.resource_version += 1;
        let rv = store.resource_version;
        let (key, mut object) = store
            .objects
            .iter()
            .find(|((p, ns, n), _)| same_plural(p, plural) && ns == "default" && n == name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap_or_else(|| panic!("no {plural}/{name}"));
        let spec_before = object["spec"].clone();
        merge(&mut object, &patch);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["spec"] != spec_before {
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        store.put(key, object);
    }

    /// What the ReplicaSet controller and kubelet would do: every ReplicaSet gets all
    /// its pods ready and available.
    pub fn make_pods_available(&self) {
        for rs in self.all("replicasets") {
            let name = rs["metadata"]["name"].as_str().unwrap().to_owned();
            let replicas = rs["spec"]["replicas"].clone();
            self.edit(
                "replicasets",
                &name,
                json!({"status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}}),
            );
        }
    }

    /// The next request `method target` (e.g. `PUT rollouts/app/status`) is answered
    /// with `code`.
    pub fn fail_next(&self, method: &str, target: &str, code: u16) {
        self.store
            .lock()
            .unwrap()
            .failures
            .push((method.to_owned(), target.to_owned(), code));
    }

    /// The EndpointSlice Kubernetes keeps for `service` with one ready pod at
    /// `address` (and one that is not ready, which must not be routed to).
    pub fn add_endpoint_slice(&self, service: &str, address: std::net::SocketAddr) {
        self.insert(
            "endpointslices",
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("{service}-x1"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address.ip().to_string()], "conditions": {"ready": true}},
                              {"addresses": ["10.9.9.9"], "conditions": {"ready": false}}],
                "ports": [{"port": address.port(), "protocol": "TCP"}],
            }),
        );
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.store.lock().unwrap().calls.clone()
    }

    /// The writes so far (no reads, no events), as `"METHOD kind/name"` lines.
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.method != "GET" && !c.target.starts_with("events"))
            .map(Call::line)
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_calls(&self) {
        self.store.lock().unwrap().calls.clear();
    }

    async fn answer(
        &self,
        request: Request<Body>,
        rules: Option<&[Rule]>,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        // Server-side apply, checked as the API server checks it.
        let (code, answer): (u16, Answer) = if content_type == "application/apply-patch+yaml"
            && (form_value(&query, "fieldManager").is_none()
                || body["apiVersion"].is_null()
                || body["kind"].is_null()
                || body["metadata"]["name"].is_null())
        {
            let (code, value) = status(
                422,
                "Invalid",
                "apply needs fieldManager, apiVersion, kind and metadata.name",
            );
            (code, Answer::Json(value))
        } else if method == Method::GET && query.contains("watch=true") {
            self.watch(&path, &query, rules)
        } else {
            let (code, value) = self.handle(&method, &path, &query, body, rules);
            (code, Answer::Json(value))
        };
        if content_type == "application/apply-patch+yaml" && code < 300 {
            let mut store = self.store.lock().unwrap();
            if let Some(call) = store.calls.last_mut() {
                call.method = format!(
                    "APPLY({})",
                    form_value(&query, "fieldManager").unwrap_or_default()
                );
            }
        }
        let body = match answer {
            // A watch: one JSON event per line, for as long as the client listens.
            Answer::Watch(events) => {
                let lines = futures_util::stream::unfold(events, |mut events| async move {
                    let event = events.recv().await?;
                    let mut line = serde_json::to_vec(&event).unwrap();
                    line.push(b'\n');
                    Some((Ok(Frame::data(Bytes::from(line))), events))
                });
                StreamBody::new(lines).boxed_unsync()
            }
            Answer::Json(value) => {
                Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())).boxed_unsync()
            }
        };
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    }

    /// Opens a watch: events of every later change (the client listed first).
    fn watch(&self, path: &str, query: &str, rules: Option<&[Rule]>) -> (u16, Answer) {
        let parsed = parse_path(path).expect("a watch path");
        let (group, resource) = parsed.plural.split_once('/').unwrap_or_default();
        if let Some(rules) = rules
            && !rules.iter().any(|rule| {
                rule.api_groups.iter().any(|g| g == group)
                    && rule.resources.iter().any(|r| r == resource)
                    && rule.verbs.iter().any(|v| v == "watch")
            })
        {
            let (code, value) = status(
                403,
                "Forbidden",
                &format!("RBAC: watch {group}/{resource} is not allowed"),
            );
            return (code, Answer::Json(value));
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut store = self.store.lock().unwrap();
        store.calls.push(Call {
            verb: "watch".to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            method: "WATCH".to_owned(),
            target: resource.to_owned(),
            body: Value::Null,
        });
        store.watches.push(Watch {
            plural: parsed.plural,
            namespace: (!parsed.namespace.is_empty()).then_some(parsed.namespace),
            selector: form_value(query, "labelSelector").unwrap_or_default(),
            fields: form_value(query, "fieldSelector").unwrap_or_default(),
            events: sender,
        });
        (200, Answer::Watch(receiver))
    }

    fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: Value,
        rules: Option<&[Rule]>,
    ) -> (u16, Value) {
        let Some(parsed) = parse_path(path) else {
            return status(404, "NotFound", &format!("no route {path}"));
        };
        let namespace = if parsed.namespace.is_empty() {
            "default".to_owned()
        } else {
            parsed.namespace.clone()
        };
        let kind = parsed.plural.rsplit('/').next().unwrap_or_default();
        let target = match (&parsed.name, &parsed.subresource) {
            (Some(name), Some(sub)) => format!("{kind}/{name}/{sub}"),
            (Some(name), None) => format!("{kind}/{name}"),
            _ => kind.to_owned(),
        };
        let mut store = self.store.lock().unwrap();
        let verb = match (method.as_str(), &parsed.name) {
            ("GET", None) if query.contains("watch=true") => "watch",
            ("GET", None) => "list",
            ("GET", Some(_)) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => "unknown",
        };
        let (group, kind_plural) = parsed.plural.split_once('/').unwrap_or_default();
        let resource = match &parsed.subresource {
            Some(sub) => format!("{kind_plural}/{sub}"),
            None => kind_plural.to_owned(),
        };
        if let Some(rules) = rules {
            let allowed = rules.iter().any(|rule| {
                rule.api_groups.iter().any(|g| g == group)
                    && rule.resources.contains(&resource)
                    && rule.verbs.iter().any(|v| v == verb)
            });
            if !allowed {
                return status(
                    403,
                    "Forbidden",
                    &format!(
                        "RBAC: {verb} {group}/{resource} is not allowed by deploy/kubernetes/rbac.yaml"
                    ),
                );
            }
        }
        store.calls.push(Call {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.clone(),
            method: method.to_string(),
            target: target.clone(),
            body: body.clone(),
        });
        if let Some(index) = store
            .failures
            .iter()
            .position(|(m, t, _)| m == method.as_str() && *t == target)
        {
            let (_, _, code) = store.failures.remove(index);
            return status(
                code,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        let key = |name: &str| (parsed.plural.clone(), namespace.clone(), name.to_owned());
        match (method.as_str(), &parsed.name) {
            ("GET", None) => {
                let selector = form_value(query, "labelSelector").unwrap_or_default();
                let fields = form_value(query, "fieldSelector").unwrap_or_default();
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|((p, ns, _), _)| {
                        *p == parsed.plural && (parsed.namespace.is_empty() || *ns == namespace)
                    })
                    .map(|(_, v)| v.clone())
                    .filter(|v| matches_labels(v, &selector) && matches_fields(v, &fields))
                    .collect();
                let rv = store.resource_version.to_string();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", Some(name)) => match store.objects.get(&key(name)) {
                Some(object) => (200, object.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", parsed.plural),
                ),
            },
            ("POST", None) => {
                let mut object = body;
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if store.objects.contains_key(&key(&name)) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{} {name:?} already exists", parsed.plural),
                    );
                }
                store.resource_version += 1;
                let rv = store.resource_version;
                object["metadata"]["namespace"] = json!(namespace);
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                object["metadata"]["uid"] = json!(format!("uid-{}-{rv}", parsed.plural));
                object["metadata"]["generation"] = json!(1);
                store.put(key(&name), object.clone());
                (201, object)
            }
            ("PUT", Some(name)) | ("PATCH", Some(name)) => {
                let Some(current) = store.objects.get(&key(name)).cloned() else {
                    return status(
                        404,
                        "NotFound",
                        &format!("{} {name:?} not found", parsed.plural),
                    );
                };
                let sent_rv = body["metadata"]["resourceVersion"].as_str();
                if sent_rv
                    .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
                {
                    return status(
                        409,
                        "Conflict",
                        &format!(
                            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                            parsed.plural
                        ),
                    );
                }
                let mut next = current.clone();
                let status_only = parsed.subresource.as_deref() == Some("status");
                if method == "PUT" {
                    if status_only {
                        next["status"] = body["status"].clone();
                    } else {
                        let kept_status = current["status"].clone();
                        next = body.clone();
                        next["status"] = kept_status;
                        next["metadata"]["uid"] = current["metadata"]["uid"].clone();
                        next["metadata"]["generation"] = current["metadata"]["generation"].clone();
                    }
                } else if status_only {
                    let mut status = current["status"].clone();
                    merge(&mut status, &body["status"]);
                    next["status"] = status;
                } else {
                    let mut patch = body.clone();
                    if let Some(map) = patch.as_object_mut() {
                        map.remove("status");
                    }
                    merge(&mut next, &patch);
                }
                if next["spec"] != current["spec"] {
                    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                    next["metadata"]["generation"] = json!(generation + 1);
                }
                store.resource_version += 1;
                next["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
                if !next["metadata"]["deletionTimestamp"].is_null()
                    && next["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty())
                {
                    store.remove(&key(name));
                } else {
                    store.put(key(name), next.clone());
                }
                (200, next)
            }
            ("DELETE", Some(name)) => {
                let Some(mut current) = store.objects.get(&key(name)).cloned() else {
                    return status(
                        404,
                        "NotFound",
                        &format!("{} {name:?} not found", parsed.plural),
                    );
                };
                if current["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
                {
                    current["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
                    store.put(key(name), current.clone());
                } else {
                    store.remove(&key(name));
                }
                (200, current)
            }
            _ => status(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }
}

/// "apps/replicasets" is "replicasets".
fn same_plural(stored: &str, wanted: &str) -> bool {
    stored == wanted || stored.rsplit('/').next() == Some(wanted)
}

fn form_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A pod on loopback: answers every request on a keep-alive connection with `body`
/// (HTTP/1.1, 200). Runs on the current tokio runtime.
pub async fn pod(body: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buffer.drain(..end);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}
