//! `teal --kubeconfig ...` and `teal controller`: the CLI against a Kubernetes cluster.
//! The work is in the `teal-k8s` crate, built only with the `kubernetes` feature so the
//! one-machine binary stays lean.

use std::path::{Path, PathBuf};

use crate::cli::Cli;

/// `teal controller`'s options.
pub struct ControllerOptions {
    /// A kubeconfig; None: in-cluster config (or the default kubeconfig).
    pub kubeconfig: Option<PathBuf>,
    /// Its context.
    pub context: Option<String>,
    /// Only this namespace.
    pub watch_namespace: Option<String>,
    /// Where the leader Lease lives.
    pub lease_namespace: String,
    /// This replica's name.
    pub identity: Option<String>,
    /// Print the CRD and exit.
    pub print_crd: bool,
}

/// `teal gateway`'s options.
pub struct GatewayOptions {
    /// A kubeconfig; None: in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// Its context.
    pub context: Option<String>,
    /// The rollout's namespace.
    pub namespace: Option<String>,
    /// The rollout.
    pub rollout: String,
    /// Where users connect.
    pub listen: std::net::SocketAddr,
    /// Where testers connect.
    pub preview_listen: Option<std::net::SocketAddr>,
}

/// Runs the gateway.
#[cfg(not(feature = "kubernetes"))]
pub async fn gateway(_options: GatewayOptions) -> anyhow::Result<()> {
    anyhow::bail!("teal gateway: {NOT_BUILT}")
}

#[cfg(not(feature = "kubernetes"))]
const NOT_BUILT: &str = "this teal was built without Kubernetes support; build it with `cargo build --release --features kubernetes`";

/// Runs a command of the CLI against the cluster `kubeconfig` names.
#[cfg(not(feature = "kubernetes"))]
pub async fn run(_kubeconfig: &Path, _cli: &Cli, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("--kubeconfig: {NOT_BUILT}")
}

/// Runs the controller.
#[cfg(not(feature = "kubernetes"))]
pub async fn controller(_options: ControllerOptions) -> anyhow::Result<()> {
    anyhow::bail!("teal controller: {NOT_BUILT}")
}

#[cfg(feature = "kubernetes")]
pub use enabled::{controller, gateway, run};

#[cfg(feature = "kubernetes")]
mod enabled {
    use std::io::{IsTerminal, Write};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures_util::future::BoxFuture;
    use teal_core::analysis::{Measurement, Metric, Provider};
    use teal_k8s::analysis::Measurer;
    use teal_k8s::cli as k8s;

    use super::*;
    use crate::cli::Command;

    /// Runs a command of the CLI against the cluster `kubeconfig` names.
    pub async fn run(kubeconfig: &Path, cli: &Cli, json: bool) -> anyhow::Result<()> {
        if !matches!(
            cli.command,
            Command::List
                | Command::Get { .. }
                | Command::Promote { .. }
                | Command::Abort { .. }
                | Command::Retry { .. }
                | Command::Undo { .. }
        ) {
            anyhow::bail!(
                "--kubeconfig works with get, list, promote, abort, retry and undo; this command runs against the local daemon only"
            );
        }
        let (client, namespace) =
            k8s::connect(kubeconfig, cli.context.clone(), cli.namespace.clone()).await?;
        let ns = namespace.as_str();
        match &cli.command {
            Command::List => {
                let rollouts = k8s::list(&client, ns).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rollouts)?);
                } else {
                    print!("{}", k8s::render_list(&rollouts));
                }
                Ok(())
            }
            Command::Get { name, watch } => {
                if !watch {
                    let details = k8s::get(&client, ns, name).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&details)?);
                    } else {
                        print!("{}", k8s::render_details(&details));
                    }
                    return Ok(());
                }
                let terminal = std::io::stdout().is_terminal();
                let mut last = String::new();
                loop {
                    let text = k8s::render_details(&k8s::get(&client, ns, name).await?);
                    if text != last {
                        let mut out = std::io::stdout().lock();
                        if terminal {
                            write!(out, "\x1b[H\x1b[2J")?;
                        }
                        write!(out, "{text}")?;
                        if !terminal {
                            writeln!(out, "---")?;
                        }
                        out.flush()?;
                        last = text;
                    }
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            Command::Promote {
                name,
                revision,
                wait,
                timeout,
            } => {
                println!("{}", k8s::promote(&client, ns, name, *revision).await?);
                if *wait {
                    wait_for(
                        &client,
                        ns,
                        name,
                        *timeout,
                        "users on the promoted revision",
                        |s| s.phase == "Healthy" && s.active == s.current,
                    )
                    .await?;
                }
                Ok(())
            }
            Command::Abort {
                name,
                wait,
                timeout,
            } => {
                println!("{}", k8s::abort(&client, ns, name).await?);
                if *wait {
                    wait_for(&client, ns, name, *timeout, "aborted", |s| {
                        s.phase == "Degraded" && s.preview == s.active
                    })
                    .await?;
                }
                Ok(())
            }
            Command::Retry {
                name,
                wait,
                timeout,
            } => {
                println!("{}", k8s::retry(&client, ns, name).await?);
                if *wait {
                    wait_for(&client, ns, name, *timeout, "Healthy or Paused", |s| {
                        s.phase == "Healthy" || s.phase == "Paused"
                    })
                    .await?;
                }
                Ok(())
            }
            Command::Undo {
                name,
                to_revision,
                wait,
                timeout,
            } => {
                println!("{}", k8s::undo(&client, ns, name, *to_revision).await?);
                if *wait {
                    wait_for(&client, ns, name, *timeout, "Healthy", |s| {
                        s.phase == "Healthy" && s.active == s.current
                    })
                    .await?;
                }
                Ok(())
            }
            _ => unreachable!("checked above"),
        }
    }

    /// Polls until `goal` holds, printing each phase change.
    async fn wait_for(
        client: &kube::Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        goal: impl Fn(&k8s::Summary) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let details = k8s::get(client, namespace, name).await?;
            let summary = &details.summary;
            let line = format!("{}: {} {}", name, summary.phase, summary.message);
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            if goal(summary) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{name}: not {what} after {}s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs the controller until Ctrl-C or SIGTERM... (Ctrl-C in a terminal; in a pod,
    /// Kubernetes' SIGTERM ends the process and another replica takes the Lease when it
    /// expires).
    pub async fn controller(options: ControllerOptions) -> anyhow::Result<()> {
        if options.print_crd {
            print!("{}", teal_k8s::crd::crd_yaml());
            return Ok(());
        }
        let client = match &options.kubeconfig {
            Some(path) => k8s::connect(path, options.context.clone(), None).await?.0,
            None => kube::Client::try_default().await?,
        };
        let identity = options
            .identity
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("teal-controller-{}", std::process::id()));
        teal_k8s::run::run(
            client,
            teal_k8s::run::Options {
                namespace: options.watch_namespace,
                identity,
                lease_namespace: options.lease_namespace,
                lease_name: "teal-controller".to_owned(),
                lease_duration: Duration::from_secs(15),
            },
            Arc::new(Providers),
        )
        .await
    }

    /// Runs `teal gateway` until Ctrl-C.
    pub async fn gateway(options: GatewayOptions) -> anyhow::Result<()> {
        let (client, namespace) = match &options.kubeconfig {
            Some(path) => {
                k8s::connect(path, options.context.clone(), options.namespace.clone()).await?
            }
            None => {
                let client = kube::Client::try_default().await?;
                let namespace = options
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned());
                (client, namespace)
            }
        };
        teal_k8s::gateway::run(
            client,
            namespace,
            options.rollout,
            options.listen,
            options.preview_listen,
        )
        .await
    }

    /// The one-machine providers, measuring for the controller.
    pub struct Providers;

    impl Measurer for Providers {
        fn measure<'a>(&'a self, metric: &'a Metric) -> BoxFuture<'a, Measurement> {
            Box::pin(async move {
                match &metric.provider {
                    Provider::Prometheus(prometheus) => {
                        crate::providers::prometheus(prometheus).await
                    }
                    Provider::Web(web) => crate::providers::web(web).await,
                    Provider::Builtin(_) => Measurement::failed(
                        "builtin metrics come from teal's own proxy, which does not serve this rollout on Kubernetes; use prometheus or web",
                    ),
                    Provider::KubernetesJob(_) => Measurement::failed(
                        "a Kubernetes Job is run by the controller itself, not by a measurer",
                    ),
                    Provider::Job(_) => Measurement::failed(
                        "job metrics run local commands, which the controller does not do on Kubernetes; use prometheus or web",
                    ),
                }
            })
        }
    }
}
