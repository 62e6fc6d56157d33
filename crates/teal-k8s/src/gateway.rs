//! `teal gateway`: teal's own proxy in the cluster, for `trafficRouting.tealGateway`.
//!
//! A Service selector flip reaches clients slowly and unevenly: kube-proxy rewrites
//! rules node by node, and connections already established stay on the old pods
//! (conntrack). The gateway instead holds one keep-alive connection pool per color and
//! reads one route table per request, so after a switch the next request on every
//! client connection goes to the new color, and requests in flight finish where they
//! started. It follows the Rollout (teal's state, the same `Status::world` the
//! controller acts on) and the EndpointSlices of the per-color Services
//! (`{rollout}-blue`, `{rollout}-green`) the controller keeps.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use teal_core::Color;
use teal_core::rollout::Status;
use teal_core::spec::{NameValue, PreviewMatch};
use teal_proxy::{Backend, Proxy, Role, RouteTable};
use tokio::net::TcpListener;

use crate::cli::{find, find_in};
use crate::crd::Flavor;
use crate::crd::RolloutSpec;
use crate::routes::color_service_name;
use crate::spec_check;

/// The label Kubernetes puts on an EndpointSlice: the Service it belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Read everything again this often even without a watch event.
const RESYNC: Duration = Duration::from_secs(30);

/// Ready addresses of a color's EndpointSlices, on the slice's first port. An
/// endpoint without a ready condition counts as ready (the API's meaning of unset).
pub fn ready_endpoints(slices: &[EndpointSlice]) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .as_ref()
            .and_then(|ports| ports.first())
            .and_then(|port| port.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    addresses.push(SocketAddr::new(ip, port as u16));
                }
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The route table for a rollout's state and each color's ready endpoints.
pub fn route_table(
    spec: &RolloutSpec,
    state: &Status,
    endpoints: &BTreeMap<Color, Vec<SocketAddr>>,
) -> RouteTable {
    let policy = spec_check::policy(spec);
    let world = state.world(&policy);
    let backend = |color: Color| Backend {
        color,
        revision: world.deployment(color).map_or(0, |d| d.revision),
        instances: endpoints.get(&color).cloned().unwrap_or_default(),
    };
    let matcher = spec_check::blue_green(spec)
        .ok()
        .and_then(|bg| bg.traffic_routing.as_ref())
        .and_then(|routing| routing.preview_match.clone())
        .unwrap_or_default();
    let convert = |pair: Option<crate::crd::NameValue>| {
        pair.map(|p| NameValue {
            name: p.name,
            value: p.value,
        })
    };
    RouteTable {
        active: world.active.map(backend),
        preview: world.preview.map(backend),
        preview_match: PreviewMatch {
            cookie: convert(matcher.cookie),
            header: convert(matcher.header),
        },
    }
}

/// Reads the Rollout and the EndpointSlices of its colors once; the route table.
pub async fn read_routes(
    client: &Client,
    namespace: &str,
    rollout: &str,
) -> anyhow::Result<RouteTable> {
    Ok(read_routes_in(client, namespace, rollout, None).await?.0)
}

/// Like [`read_routes`], looking for the Rollout in the `known` group first (see
/// [`find_in`]); also says which group it was in.
pub async fn read_routes_in(
    client: &Client,
    namespace: &str,
    rollout: &str,
    known: Option<Flavor>,
) -> anyhow::Result<(RouteTable, Flavor)> {
    let found = find_in(client, namespace, rollout, known).await?;
    let state = found.state();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let mut endpoints = BTreeMap::new();
    for color in Color::ALL {
        let service = color_service_name(rollout, color);
        let list = slices
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}")))
            .await?;
        endpoints.insert(color, ready_endpoints(&list.items));
    }
    Ok((
        route_table(&found.rollout.spec, &state, &endpoints),
        found.flavor,
    ))
}

/// Serves `rollout` on `listen` (users, and testers matching the preview cookie or
/// header) and `preview_listen` (testers), following the cluster until Ctrl-C.
pub async fn run(
    client: Client,
    namespace: String,
    rollout: String,
    listen: SocketAddr,
    preview_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let proxy = Proxy::new(&rollout);
    proxy.set_routes(read_routes(&client, &namespace, &rollout).await?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for (address, role) in [
        (Some(listen), Role::Active),
        (preview_listen, Role::Preview),
    ] {
        let Some(address) = address else { continue };
        let listener = TcpListener::bind(address).await?;
        tracing::info!(%address, ?role, rollout, "teal gateway listening");
        let mut stopped = stopped.clone();
        servers.push(tokio::spawn(teal_proxy::serve(
            listener,
            proxy.clone(),
            role,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
    }
    follow(&client, &namespace, &rollout, &proxy).await;
    let _ = stop.send(true);
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// Reads the routes again on every change of the Rollout or an EndpointSlice, and
/// every [`RESYNC`], until Ctrl-C. A failed read keeps the routes it had.
async fn follow(client: &Client, namespace: &str, rollout: &str, proxy: &Arc<Proxy>) {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let names = Color::ALL.map(|c| color_service_name(rollout, c)).join(",");
    let slice_events = watcher(
        slices,
        watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL} in ({names})")),
    )
    .map(|_| ());
    let found = find(client, namespace, rollout).await;
    // Where the Rollout is, so each change reads it with one request.
    let mut flavor = found.as_ref().ok().map(|found| found.flavor);
    let rollout_events = match found {
        Ok(found) => {
            let api: Api<crate::crd::AnyRollout> =
                Api::namespaced_with(client.clone(), namespace, &found.flavor.api_resource());
            watcher(
                api,
                watcher::Config::default().fields(&format!("metadata.name={rollout}")),
            )
            .map(|_| ())
            .boxed()
        }
        Err(_) => futures_util::stream::pending().boxed(),
    };
    let mut changes = futures_util::stream::select(slice_events.boxed(), rollout_events);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = changes.next() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        match read_routes_in(client, namespace, rollout, flavor).await {
            Ok((routes, found_in)) => {
                flavor = Some(found_in);
                if *proxy.routes() != routes {
                    tracing::info!(
                        active = ?routes.active.as_ref().map(|b| (b.color, b.instances.len())),
                        preview = ?routes.preview.as_ref().map(|b| (b.color, b.instances.len())),
                        "routes changed"
                    );
                    proxy.set_routes(routes);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the routes; keeping the current ones")
            }
        }
    }
}
