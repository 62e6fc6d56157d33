//! The traffic routers: where the routes point (read) and pointing them (write).
//!
//! - Services: `activeService` and `previewService` select one pod-template hash, as
//!   with Argo Rollouts. Always on.
//! - Istio: a DestinationRule with one subset per color (selected by pod-template hash)
//!   and a VirtualService whose `http` routes teal owns: a preview route matching the
//!   preview cookie or header, then the route every other request takes.
//! - Gateway API: one Service per color (`{rollout}-blue`, `{rollout}-green`) and an
//!   HTTPRoute whose `rules` teal owns, built the same way.
//!
//! A switch through a mesh or gateway route takes effect per request in the proxy;
//! a Service selector flip leaves established connections on the old pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use teal_core::Color;

use crate::crd::{
    HASH_LABEL, MANAGED_BY_ANNOTATION, ROLLOUT_LABEL, RolloutSpec, apply_params, create_params,
};
use crate::plan::{ObservedRoutes, ReplicaSetView};
use crate::{Error, spec_check};

/// Name of teal's preview route in a VirtualService.
pub const PREVIEW_ROUTE: &str = "teal-preview";
/// Name of the route every other request takes.
pub const ACTIVE_ROUTE: &str = "teal-active";

fn virtual_service() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    )
}

fn destination_rule() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"),
        "destinationrules",
    )
}

fn http_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The Service of one color for the Gateway API router.
pub fn color_service_name(rollout: &str, color: Color) -> String {
    format!("{rollout}-{color}")
}

/// The routers of one rollout, bound to its namespace.
pub struct Routers<'a> {
    /// The API client.
    pub client: &'a kube::Client,
    /// The namespace.
    pub namespace: &'a str,
    /// The rollout's name.
    pub rollout: &'a str,
    /// Its spec (validated).
    pub spec: &'a RolloutSpec,
}

impl Routers<'_> {
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    fn dynamic(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.namespace, resource)
    }

    /// Where the routes point now, as colors of `replica_sets`.
    pub async fn observe(&self, replica_sets: &[ReplicaSetView]) -> Result<ObservedRoutes, Error> {
        let Ok(bg) = spec_check::blue_green(self.spec) else {
            return Ok(ObservedRoutes::default());
        };
        let color_of = |hash: Option<&str>| {
            hash.and_then(|hash| {
                replica_sets
                    .iter()
                    .find(|rs| rs.hash == hash && rs.replicas > 0)
                    .and_then(|rs| rs.color)
            })
        };
        let active_hash = self.selected_hash(&bg.active_service).await?;
        let active = color_of(active_hash.as_deref());
        let active_hash = active_hash.clone();
        let preview = match &bg.preview_service {
            Some(service) => {
                let hash = self.selected_hash(service).await?;
                color_of(hash.as_deref()).filter(|color| Some(*color) != active)
            }
            None => None,
        };
        let mut routes = ObservedRoutes {
            active,
            preview,
            active_hash,
            preview_routed: bg.preview_service.is_some(),
        };
        let Some(routing) = &bg.traffic_routing else {
            return Ok(routes);
        };
        if routing.teal_gateway.is_some() {
            // teal gateway follows the Rollout itself; what must be right is the
            // Service of each color it reads EndpointSlices from.
            if !self.color_services_match(replica_sets).await? {
                routes.active = None;
            }
            return Ok(routes);
        }
        let mesh = if let Some(istio) = &routing.istio {
            Some(
                self.observe_istio(
                    &istio.virtual_service.name,
                    &istio.destination_rule.name,
                    replica_sets,
                )
                .await?,
            )
        } else if let Some(gateway) = &routing.gateway_api {
            let mut observed = self.observe_gateway(&gateway.http_route).await?;
            if !self.color_services_match(replica_sets).await? {
                observed.active = None;
            }
            Some(observed)
        } else {
            None
        };
        if let Some(mesh) = mesh {
            // Routes that disagree are pointed again.
            if mesh.active != routes.active {
                routes.active = None;
            }
            if routes.preview_routed && mesh.preview != routes.preview {
                routes.preview = None;
            } else {
                routes.preview = mesh.preview;
            }
            routes.preview_routed = true;
        }
        Ok(routes)
    }

    /// Every running color's Service selects that color's pod-template hash.
    async fn color_services_match(&self, replica_sets: &[ReplicaSetView]) -> Result<bool, Error> {
        for rs in replica_sets.iter().filter(|rs| rs.replicas > 0) {
            let Some(color) = rs.color else { continue };
            let service = color_service_name(self.rollout, color);
            let selected = self
                .services()
                .get_opt(&service)
                .await?
                .and_then(|s| s.spec)
                .and_then(|s| s.selector)
                .and_then(|mut selector| selector.remove(HASH_LABEL));
            if selected.as_deref() != Some(rs.hash.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn selected_hash(&self, service: &str) -> Result<Option<String>, Error> {
        let found = self.services().get_opt(service).await?.ok_or_else(|| {
            Error::Missing(format!(
                "Service {service:?} (spec.strategy.blueGreen) does not exist in namespace {:?}",
                self.namespace
            ))
        })?;
        Ok(found
            .spec
            .and_then(|spec| spec.selector)
            .and_then(|mut selector| selector.remove(HASH_LABEL)))
    }

    async fn get_dynamic(
        &self,
        resource: &ApiResource,
        name: &str,
        field: &str,
    ) -> Result<DynamicObject, Error> {
        self.dynamic(resource).get_opt(name).await?.ok_or_else(|| {
            Error::Missing(format!(
                "{} {name:?} ({field}) does not exist in namespace {:?}",
                resource.kind, self.namespace
            ))
        })
    }

    async fn observe_istio(
        &self,
        virtual_service_name: &str,
        destination_rule_name: &str,
        replica_sets: &[ReplicaSetView],
    ) -> Result<ObservedRoutes, Error> {
        let rule = self
            .get_dynamic(
                &destination_rule(),
                destination_rule_name,
                "trafficRouting.istio.destinationRule",
            )
            .await?;
        let service = self
            .get_dynamic(
                &virtual_service(),
                virtual_service_name,
                "trafficRouting.istio.virtualService",
            )
            .await?;
        // A subset counts only if it selects the hash its color runs now.
        let subset_ok = |color: Color| {
            let want = replica_sets
                .iter()
                .find(|rs| rs.color == Some(color) && rs.replicas > 0)
                .map(|rs| rs.hash.as_str());
            rule.data["spec"]["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == color.as_str())
                .and_then(|s| s["labels"][HASH_LABEL].as_str())
                .is_some_and(|hash| Some(hash) == want)
        };
        let route_color = |route: &str| {
            service.data["spec"]["http"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["name"] == route)
                .and_then(|r| r["route"][0]["destination"]["subset"].as_str())
                .and_then(|subset| subset.parse::<Color>().ok())
                .filter(|color| subset_ok(*color))
        };
        Ok(ObservedRoutes {
            active: route_color(ACTIVE_ROUTE),
            preview: route_color(PREVIEW_ROUTE),
            active_hash: None,
            preview_routed: true,
        })
    }

    async fn observe_gateway(&self, route_name: &str) -> Result<ObservedRoutes, Error> {
        let route = self
            .get_dynamic(
                &http_route(),
                route_name,
                "trafficRouting.gatewayAPI.httpRoute",
            )
            .await?;
        let rules: Vec<Value> = route.data["spec"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let color_of_rule = |rule: &Value| {
            rule["backendRefs"][0]["name"].as_str().and_then(|name| {
                Color::ALL
                    .into_iter()
                    .find(|c| color_service_name(self.rollout, *c) == name)
            })
        };
        let is_preview = |rule: &Value| rule.get("matches").is_some_and(|m| m != &json!([]));
        Ok(ObservedRoutes {
            active: rules
                .iter()
                .find(|r| !is_preview(r))
                .and_then(color_of_rule),
            preview: rules.iter().find(|r| is_preview(r)).and_then(color_of_rule),
            active_hash: None,
            preview_routed: true,
        })
    }

    /// Points every route: Services first (the preview before the active one), then
    /// the mesh or gateway route.
    pub async fn point(
        &self,
        active: Option<&(Color, String)>,
        preview: Option<&(Color, String)>,
        running: &BTreeMap<Color, String>,
    ) -> Result<(), Error> {
        let bg = spec_check::blue_green(self.spec).map_err(Error::Invalid)?;
        let preview_hash = preview.or(active).map(|(_, hash)| hash.as_str());
        if let (Some(service), Some(hash)) = (&bg.preview_service, preview_hash) {
            self.select(service, hash).await?;
        }
        if let Some((_, hash)) = active {
            self.select(&bg.active_service, hash).await?;
        }
        let Some(routing) = &bg.traffic_routing else {
            return Ok(());
        };
        let matcher = routing.preview_match.clone().unwrap_or_default();
        if routing.teal_gateway.is_some() {
            let ports = self.active_ports(&bg.active_service).await?;
            for (color, hash) in running {
                self.ensure_color_service(*color, hash, &ports).await?;
            }
        } else if let Some(istio) = &routing.istio {
            self.point_istio(
                &istio.virtual_service.name,
                &istio.destination_rule.name,
                active.map(|(c, _)| *c),
                preview.map(|(c, _)| *c),
                running,
                &matcher,
            )
            .await?;
        } else if let Some(gateway) = &routing.gateway_api {
            self.point_gateway(
                &gateway.http_route,
                &bg.active_service,
                active.map(|(c, _)| *c),
                preview.map(|(c, _)| *c),
                running,
                &matcher,
            )
            .await?;
        }
        Ok(())
    }

    /// Server-side apply of the fields teal owns in an object: `metadata` (beside its
    /// name) and `spec`, both partial.
    async fn apply(
        &self,
        resource: &ApiResource,
        name: &str,
        mut metadata: Value,
        spec: Value,
    ) -> Result<(), Error> {
        metadata["name"] = json!(name);
        let object = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": metadata,
            "spec": spec,
        });
        self.dynamic(resource)
            .patch(name, &apply_params(), &Patch::Apply(&object))
            .await?;
        Ok(())
    }

    /// Sets a Service's hash selector unless it already is.
    async fn select(&self, service: &str, hash: &str) -> Result<(), Error> {
        if self.selected_hash(service).await?.as_deref() == Some(hash) {
            return Ok(());
        }
        // The two fields teal owns; the person's own fields (the rest of the selector,
        // the ports) stay theirs.
        self.apply(
            &ApiResource::erase::<Service>(&()),
            service,
            json!({"annotations": {MANAGED_BY_ANNOTATION: self.rollout}}),
            json!({"selector": {HASH_LABEL: hash}}),
        )
        .await
    }

    async fn point_istio(
        &self,
        virtual_service_name: &str,
        destination_rule_name: &str,
        active: Option<Color>,
        preview: Option<Color>,
        running: &BTreeMap<Color, String>,
        matcher: &crate::crd::PreviewMatch,
    ) -> Result<(), Error> {
        let rule = self
            .get_dynamic(
                &destination_rule(),
                destination_rule_name,
                "trafficRouting.istio.destinationRule",
            )
            .await?;
        let host = rule.data["spec"]["host"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let subsets: Vec<Value> = running
            .iter()
            .map(|(color, hash)| json!({"name": color.as_str(), "labels": {HASH_LABEL: hash}}))
            .collect();
        if rule.data["spec"]["subsets"] != json!(subsets) {
            self.apply(
                &destination_rule(),
                destination_rule_name,
                json!({}),
                json!({"subsets": subsets}),
            )
            .await?;
        }
        let Some(active) = active else {
            return Ok(());
        };
        let destination =
            |color: Color| json!([{"destination": {"host": host, "subset": color.as_str()}}]);
        let mut http = Vec::new();
        if let Some(preview) = preview {
            let test = PreviewHeader::of(matcher);
            let kind = if test.regex { "regex" } else { "exact" };
            let condition = json!({"headers": {test.name: {kind: test.value}}});
            http.push(
                json!({"name": PREVIEW_ROUTE, "match": [condition], "route": destination(preview)}),
            );
        }
        http.push(json!({"name": ACTIVE_ROUTE, "route": destination(active)}));
        self.apply(
            &virtual_service(),
            virtual_service_name,
            json!({}),
            json!({"http": http}),
        )
        .await
    }

    async fn point_gateway(
        &self,
        route_name: &str,
        active_service: &str,
        active: Option<Color>,
        preview: Option<Color>,
        running: &BTreeMap<Color, String>,
        matcher: &crate::crd::PreviewMatch,
    ) -> Result<(), Error> {
        let ports = self.active_ports(active_service).await?;
        let port = ports.first().map_or(80, |p| p.port);
        for (color, hash) in running {
            self.ensure_color_service(*color, hash, &ports).await?;
        }
        let Some(active) = active else {
            return Ok(());
        };
        let backend =
            |color: Color| json!([{"name": color_service_name(self.rollout, color), "port": port}]);
        let mut rules = Vec::new();
        if let Some(preview) = preview {
            let test = PreviewHeader::of(matcher);
            let kind = if test.regex {
                "RegularExpression"
            } else {
                "Exact"
            };
            let condition =
                json!({"headers": [{"type": kind, "name": test.name, "value": test.value}]});
            rules.push(json!({"matches": [condition], "backendRefs": backend(preview)}));
        }
        rules.push(json!({"backendRefs": backend(active)}));
        self.apply(
            &http_route(),
            route_name,
            json!({}),
            json!({"rules": rules}),
        )
        .await
    }

    /// The ports of the active Service, which the per-color Services copy.
    async fn active_ports(
        &self,
        active_service: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::ServicePort>, Error> {
        let template = self.services().get_opt(active_service).await?.ok_or_else(|| {
            Error::Missing(format!(
                "Service {active_service:?} (spec.strategy.blueGreen.activeService) does not exist in namespace {:?}",
                self.namespace
            ))
        })?;
        Ok(template.spec.and_then(|s| s.ports).unwrap_or_default())
    }

    async fn ensure_color_service(
        &self,
        color: Color,
        hash: &str,
        ports: &[k8s_openapi::api::core::v1::ServicePort],
    ) -> Result<(), Error> {
        let name = color_service_name(self.rollout, color);
        let mut selector = self.spec.selector.match_labels.clone().unwrap_or_default();
        selector.insert(HASH_LABEL.to_owned(), hash.to_owned());
        match self.services().get_opt(&name).await? {
            Some(existing)
                if existing.spec.as_ref().and_then(|s| s.selector.as_ref()) == Some(&selector) =>
            {
                Ok(())
            }
            Some(_) => {
                self.apply(
                    &ApiResource::erase::<Service>(&()),
                    &name,
                    json!({}),
                    json!({"selector": {HASH_LABEL: hash}}),
                )
                .await
            }
            None => {
                let service: Service = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {ROLLOUT_LABEL: self.rollout}},
                    "spec": {"selector": selector, "ports": ports},
                }))
                .expect("a Service built from valid parts");
                self.services().create(&create_params(), &service).await?;
                Ok(())
            }
        }
    }
}

/// The header a mesh or gateway matches to send testers to the preview: the cookie
/// (by a regular expression over the Cookie header) or the header (exactly);
/// `test=true` when the spec names neither.
struct PreviewHeader {
    name: String,
    value: String,
    regex: bool,
}

impl PreviewHeader {
    fn of(matcher: &crate::crd::PreviewMatch) -> PreviewHeader {
        match (&matcher.cookie, &matcher.header) {
            (None, Some(header)) => PreviewHeader {
                name: header.name.to_ascii_lowercase(),
                value: header.value.clone(),
                regex: false,
            },
            (cookie, _) => {
                let (name, value) = cookie
                    .as_ref()
                    .map_or(("test", "true"), |c| (c.name.as_str(), c.value.as_str()));
                PreviewHeader {
                    name: "cookie".to_owned(),
                    value: cookie_regex(name, value),
                    regex: true,
                }
            }
        }
    }
}

/// Istio's and Gateway API's way to match one cookie: a regular expression over the
/// Cookie header.
pub fn cookie_regex(name: &str, value: &str) -> String {
    format!("^(.*?;\\s*)?({name}={value})(;.*)?$")
}
