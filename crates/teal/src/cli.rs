//! The `teal` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::BodyExt;
use hyper::Method;
use teal_core::Color;
use teal_core::api::{
    ApplyRequest, ApplyResponse, CommandResponse, HistoryView, PromoteRequest, RolloutView,
    UndoRequest,
};
use teal_core::rollout::{Phase, Revision};

use crate::client::{ApiError, Client, default_data_dir};
use crate::render;

/// teal: blue-green releases with no downtime and an instant way back.
#[derive(Debug, Parser)]
#[command(
    name = "teal",
    version,
    about,
    long_about = None,
    after_help = "\
Examples:
  teal server &                          # the daemon (API on 127.0.0.1:7070)
  teal apply -f shop.yaml --wait         # release; returns once it is live or waits for you
  teal get shop --watch                  # follow it live: colors, instances, routes
  teal promote shop --revision 2 --wait  # switch users to revision 2
  teal undo shop                         # back to the previous revision, at once while warm

Every command takes -o json, --data-dir (or TEAL_DATA_DIR), --api and --token."
)]
pub struct Cli {
    /// The daemon's data directory (store, token, logs). The CLI reads the API address
    /// and token from it.
    #[arg(long, global = true, env = "TEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's API address. For `server`, where to listen; for the other commands,
    /// where to call (default: the address recorded in the data directory, else
    /// 127.0.0.1:7070).
    #[arg(long, global = true, env = "TEAL_API")]
    pub api: Option<String>,
    /// The API token (default: read from the data directory).
    #[arg(long, global = true, env = "TEAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Steer a Kubernetes cluster instead of the daemon: get, list, promote, abort,
    /// retry and undo act on its Rollouts (teal.dev and argoproj.io), as
    /// `kubectl argo rollouts` does.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubeconfig: the context to use (default: the current one).
    #[arg(long, global = true, requires = "kubeconfig")]
    pub context: Option<String>,
    /// With --kubeconfig: the namespace (default: the context's). For `gateway`, the
    /// rollout's namespace (default: the pod's, $POD_NAMESPACE).
    #[arg(short, long, global = true, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// The default for `--timeout`.
const DEFAULT_TIMEOUT: &str = "10m";

/// Everything teal can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: API, store, reconcilers, proxies.
    ///
    /// The API listens on loopback (--api, default 127.0.0.1:7070; port 0 picks a free
    /// port); the address it bound and the API token are written into --data-dir.
    ///
    /// Started while a daemon runs on the same --data-dir (say, a newer teal), it takes
    /// over without refusing a connection: the running daemon hands over its listening
    /// sockets (the API's too, when --api is the same) and its instances, which keep
    /// running, then answers the requests in flight and exits.
    #[command(after_help = "\
Examples:
  teal server                                           # ~/.local/share/teal, 127.0.0.1:7070
  teal server --data-dir /var/lib/teal --api 127.0.0.1:7070
  teal server &                                         # again, after an upgrade: takes over
  teal server --proxy-threads 2                         # on a machine shared with the apps")]
    Server {
        /// Threads that serve the proxies' client connections (default: one per core).
        /// Each takes connections in turn and serves them to the end.
        #[arg(long, env = "TEAL_PROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        proxy_threads: Option<u16>,
    },
    /// Create or update the rollouts (and analysis templates) of a spec file.
    ///
    /// All or nothing: a file with an error changes nothing. With --wait, blocks until
    /// every rollout in the file is Healthy, or Paused for a promote, printing a line per
    /// change; fails if one becomes Degraded or the timeout passes.
    #[command(after_help = "\
Examples:
  teal apply -f shop.yaml
  teal apply -f shop.yaml --wait --timeout 5m   # for CI: exit 0 once live or paused
  cat shop.yaml | teal apply -f -")]
    Apply {
        /// The spec file (YAML, several documents allowed); `-` reads standard input.
        #[arg(short, long)]
        file: PathBuf,
        /// Wait until every rollout is Healthy, or Paused (BlueGreenPause) for a promote.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits: 30s, 5m, 1h, or seconds.
        #[arg(long, value_parser = parse_duration, default_value = DEFAULT_TIMEOUT, requires = "wait")]
        timeout: Duration,
    },
    /// List rollouts: phase, active color and revision, preview, last change.
    #[command(after_help = "\
Examples:
  teal list
  teal list -o json")]
    List,
    /// Show one rollout as a tree: revisions, colors, instances, readiness, routes.
    ///
    /// With --watch, redraws in place whenever it changes (on a terminal) or prints a
    /// new block per change (when piped), until Ctrl-C. NO_COLOR turns colors off.
    #[command(after_help = "\
Examples:
  teal get shop
  teal get shop --watch
  teal get shop -o json")]
    Get {
        /// The rollout.
        name: String,
        /// Redraw whenever it changes, until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// Promote the revision in preview: scale it up, then switch users to it.
    ///
    /// With --wait, blocks until users are on the promoted revision and the rollout is
    /// Healthy.
    #[command(after_help = "\
Examples:
  teal promote shop
  teal promote shop --revision 4          # refused unless revision 4 is in preview
  teal promote shop --revision 4 --wait   # returns once users are on revision 4")]
    Promote {
        /// The rollout.
        name: String,
        /// Refuse unless this revision is the one in preview.
        #[arg(long)]
        revision: Option<u64>,
        /// Wait until users are switched to the promoted revision.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits: 30s, 5m, 1h, or seconds.
        #[arg(long, value_parser = parse_duration, default_value = DEFAULT_TIMEOUT, requires = "wait")]
        timeout: Duration,
    },
    /// Abort the revision being released: users stay on the stable color.
    ///
    /// Testers are sent to the stable color too; the candidate is stopped after
    /// abortScaleDownDelaySeconds. With --wait, blocks until the preview route no longer
    /// serves the candidate.
    #[command(after_help = "\
Examples:
  teal abort shop
  teal abort shop --wait   # returns once testers no longer reach the candidate")]
    Abort {
        /// The rollout.
        name: String,
        /// Wait until the candidate is no longer served in preview.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits: 30s, 5m, 1h, or seconds.
        #[arg(long, value_parser = parse_duration, default_value = DEFAULT_TIMEOUT, requires = "wait")]
        timeout: Duration,
    },
    /// Release an aborted revision again.
    ///
    /// With --wait, blocks like `apply --wait`: until Healthy, or Paused for a promote.
    #[command(after_help = "\
Examples:
  teal retry shop
  teal retry shop --wait --timeout 2m")]
    Retry {
        /// The rollout.
        name: String,
        /// Wait until it is Healthy, or Paused (BlueGreenPause) for a promote.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits: 30s, 5m, 1h, or seconds.
        #[arg(long, value_parser = parse_duration, default_value = DEFAULT_TIMEOUT, requires = "wait")]
        timeout: Duration,
    },
    /// Release an earlier revision again (instant while the old color is warm).
    ///
    /// The earlier template is released as a new revision. With --wait, blocks until
    /// users are on it and the rollout is Healthy (if it has to start again and
    /// autoPromotionEnabled is false, that includes waiting for a promote).
    #[command(after_help = "\
Examples:
  teal undo shop                      # back to the revision before the active one
  teal undo shop --to-revision 3 --wait")]
    Undo {
        /// The rollout.
        name: String,
        /// The revision to go back to (default: the one before the active revision).
        #[arg(long)]
        to_revision: Option<u64>,
        /// Wait until users are on the released revision and the rollout is Healthy.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits: 30s, 5m, 1h, or seconds.
        #[arg(long, value_parser = parse_duration, default_value = DEFAULT_TIMEOUT, requires = "wait")]
        timeout: Duration,
    },
    /// Run teal as a Kubernetes controller (in a cluster, or against --kubeconfig).
    ///
    /// Reconciles teal.dev and argoproj.io Rollouts with strategy.blueGreen while this
    /// replica holds the leader Lease. Needs a teal built with the `kubernetes` feature.
    #[command(after_help = "\
Examples:
  teal controller                          # in a pod: in-cluster config, all namespaces
  teal controller --kubeconfig ~/.kube/config --watch-namespace shop
  teal controller --print-crd > crd.yaml   # the teal.dev Rollout CRD")]
    Controller {
        /// Only Rollouts of this namespace (default: all).
        #[arg(long)]
        watch_namespace: Option<String>,
        /// The namespace of the leader Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "teal-system")]
        lease_namespace: String,
        /// This replica's name in the Lease and in events.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Print the teal.dev Rollout CRD as YAML and exit.
        #[arg(long)]
        print_crd: bool,
    },
    /// Run teal's proxy in a Kubernetes cluster for one rollout (trafficRouting.tealGateway).
    ///
    /// Follows the Rollout and the EndpointSlices of its per-color Services and switches
    /// every connection at its next request. Needs the `kubernetes` feature.
    #[command(after_help = "\
Examples:
  teal gateway shop --listen 0.0.0.0:8080 --preview-listen 0.0.0.0:8081   # in a pod
  teal gateway shop --kubeconfig ~/.kube/config -n shop --listen 127.0.0.1:8080")]
    Gateway {
        /// The rollout.
        rollout: String,
        /// Where users connect (testers too, with the preview cookie or header).
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Where testers connect to reach the preview.
        #[arg(long)]
        preview_listen: Option<std::net::SocketAddr>,
    },
    /// Analysis runs of a rollout: every metric, its measurements and verdict.
    #[command(after_help = "\
Examples:
  teal analysis shop
  teal analysis shop --revision 3
  teal analysis shop -o json")]
    Analysis {
        /// The rollout.
        name: String,
        /// Only the runs of this revision.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Revisions and the audit trail of a rollout.
    #[command(after_help = "\
Examples:
  teal history shop
  teal history shop -o json")]
    History {
        /// The rollout.
        name: String,
    },
    /// Instance logs, each line tagged with its instance.
    #[command(after_help = "\
Examples:
  teal logs shop
  teal logs shop --color green --follow")]
    Logs {
        /// The rollout.
        name: String,
        /// Only this color.
        #[arg(long)]
        color: Option<Color>,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a rollout's instances and listeners and forget it (its history stays).
    #[command(after_help = "\
Examples:
  teal delete shop")]
    Delete {
        /// The rollout.
        name: String,
    },
    /// A guided tour of a full blue-green cycle that needs nothing but this binary.
    #[command(after_help = "\
Examples:
  teal demo          # leaves the setup running until Ctrl-C
  teal demo --exit")]
    Demo {
        /// Exit after the tour instead of leaving the setup running until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// The demo app: a tiny HTTP server that reports its color and version.
    #[command(after_help = "\
Examples:
  teal demo-app --port 9000
  DEMO_FAIL_RATE=0.2 DEMO_DELAY_MS=300 teal demo-app --port 9000   # misbehave")]
    DemoApp(crate::demo_app::DemoAppOptions),
    /// Print the dashboard's address, with the API token in the link's fragment (the
    /// fragment never leaves the browser; the page keeps the token for the session).
    #[command(after_help = "\
Examples:
  teal dashboard                   # then open the printed link
  xdg-open \"$(teal dashboard)\"")]
    Dashboard,
    /// Print a shell completion script to standard output.
    #[command(after_help = "\
Examples:
  teal completions bash > ~/.local/share/bash-completion/completions/teal
  teal completions zsh > \"${fpath[1]}/_teal\"
  teal completions fish > ~/.config/fish/completions/teal.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Exit status for input the daemon rejected as invalid (sysexits' EX_USAGE).
pub const EXIT_INVALID: i32 = 64;

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TEAL_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(error) => {
            if let Some(api) = error.downcast_ref::<ApiError>() {
                eprintln!("error: {}", api.message);
                for detail in &api.details {
                    eprintln!("  {detail}");
                }
                return if api.status == hyper::StatusCode::BAD_REQUEST {
                    EXIT_INVALID
                } else {
                    1
                };
            }
            eprintln!("error: {error:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    let client = || Client::new(&data_dir, cli.api.clone(), cli.token.clone());
    let json = cli.output == Output::Json;
    if let Command::Controller {
        watch_namespace,
        lease_namespace,
        identity,
        print_crd,
    } = &cli.command
    {
        return crate::kube_cli::controller(crate::kube_cli::ControllerOptions {
            kubeconfig: cli.kubeconfig.clone(),
            context: cli.context.clone(),
            watch_namespace: watch_namespace.clone(),
            lease_namespace: lease_namespace.clone(),
            identity: identity.clone(),
            print_crd: *print_crd,
        })
        .await;
    }
    if let Command::Gateway {
        rollout,
        listen,
        preview_listen,
    } = &cli.command
    {
        return crate::kube_cli::gateway(crate::kube_cli::GatewayOptions {
            kubeconfig: cli.kubeconfig.clone(),
            context: cli.context.clone(),
            namespace: cli.namespace.clone(),
            rollout: rollout.clone(),
            listen: *listen,
            preview_listen: *preview_listen,
        })
        .await;
    }
    if let Some(kubeconfig) = &cli.kubeconfig {
        return crate::kube_cli::run(kubeconfig, &cli, json).await;
    }
    match cli.command {
        Command::Server { proxy_threads } => {
            if let Some(threads) = proxy_threads {
                teal_proxy::set_threads(usize::from(threads));
            }
            let api = cli.api.as_deref().unwrap_or(crate::server::DEFAULT_API);
            let api = api
                .parse()
                .with_context(|| format!("--api {api:?} is not an address like 127.0.0.1:7070"))?;
            let options = crate::server::ServerOptions { data_dir, api };
            crate::server::run(options, shutdown_signal()).await
        }
        Command::Controller { .. } | Command::Gateway { .. } => unreachable!("handled above"),
        Command::Demo { exit } => crate::demo::run(exit).await,
        Command::DemoApp(options) => crate::demo_app::run(options).await,
        Command::Dashboard => {
            let client = client();
            let token = client.token().context(
                "no API token: pass --token, or --data-dir pointing at the daemon's data directory",
            )?;
            println!("{}/#token={token}", client.base_url());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "teal", &mut std::io::stdout());
            Ok(())
        }
        Command::Apply {
            file,
            wait,
            timeout,
        } => {
            let (name, text) = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .context("cannot read standard input")?;
                ("<stdin>".to_owned(), text)
            } else {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                (file.display().to_string(), text)
            };
            let base_dir = std::path::absolute(
                file.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(".".as_ref()),
            )
            .context("cannot resolve the spec file's directory")?;
            let request = ApplyRequest {
                file: name,
                text,
                base_dir: base_dir.display().to_string(),
            };
            let client = client();
            let response: ApplyResponse =
                client.send(Method::POST, "/api/v1/apply", &request).await?;
            print(json, &response, || render::apply(&response))?;
            if !wait {
                return Ok(());
            }
            let names: Vec<String> = response
                .results
                .iter()
                .filter(|r| r.kind == "Rollout")
                .map(|r| r.name.clone())
                .collect();
            let mut waiter = Waiter::new(&client, json, timeout);
            for name in &names {
                waiter.until(name, &ReleaseGoal).await?;
            }
            Ok(())
        }
        Command::List => {
            let rollouts: Vec<RolloutView> = client().get("/api/v1/rollouts").await?;
            print(json, &rollouts, || {
                render::list(&rollouts, crate::daemon::now_ms())
            })
        }
        Command::Get { name, watch } => {
            let client = client();
            if watch {
                return watch_rollout(&client, &name, json).await;
            }
            let rollout: RolloutView = client.get(&rollout_path(&name)).await?;
            if json {
                return print(json, &rollout, String::new);
            }
            let commands = revision_commands(&client, &name).await;
            let style = render::Style::detect(std::io::stdout().is_terminal());
            print(json, &rollout, || render::tree(&rollout, &commands, style))
        }
        Command::Promote {
            name,
            revision,
            wait,
            timeout,
        } => {
            let client = client();
            let request = PromoteRequest { revision };
            let response = command(json, &client, &name, "promote", &request).await?;
            if !wait {
                return Ok(());
            }
            // The candidate's slot; when the switch happened at once, the active one.
            let rollout = &response.rollout;
            let target = match &rollout.status.candidate {
                Some(candidate) => Some((candidate.slot.color, candidate.slot.revision)),
                None => rollout.active_color.zip(rollout.active_revision),
            };
            let Some((color, revision)) = target else {
                anyhow::bail!(
                    "rollout {name}: nothing was promoted, so there is nothing to wait for"
                );
            };
            let mut waiter = Waiter::new(&client, json, timeout);
            waiter.seed(rollout);
            waiter
                .until(
                    &name,
                    &SwitchGoal {
                        color,
                        revision,
                        aim: "switch users to",
                        done: "users switched to",
                    },
                )
                .await
        }
        Command::Abort {
            name,
            wait,
            timeout,
        } => {
            let client = client();
            let response = command(json, &client, &name, "abort", &()).await?;
            if !wait {
                return Ok(());
            }
            let Some(candidate) = response.rollout.status.candidate.as_ref() else {
                return Ok(());
            };
            let mut waiter = Waiter::new(&client, json, timeout);
            waiter
                .preview_leaves(
                    &response.rollout,
                    candidate.slot.color,
                    candidate.slot.revision,
                )
                .await
        }
        Command::Retry {
            name,
            wait,
            timeout,
        } => {
            let client = client();
            let response = command(json, &client, &name, "retry", &()).await?;
            if !wait {
                return Ok(());
            }
            let mut waiter = Waiter::new(&client, json, timeout);
            waiter.seed(&response.rollout);
            waiter.until(&name, &ReleaseGoal).await
        }
        Command::Undo {
            name,
            to_revision,
            wait,
            timeout,
        } => {
            let client = client();
            let request = UndoRequest { to_revision };
            let response = command(json, &client, &name, "undo", &request).await?;
            if !wait {
                return Ok(());
            }
            let rollout = &response.rollout;
            let revision = rollout.revision;
            let color = match &rollout.status.candidate {
                Some(candidate) if candidate.slot.revision == revision => candidate.slot.color,
                _ => match rollout.active_color {
                    Some(color) => color,
                    None => anyhow::bail!("rollout {name}: no color runs revision {revision}"),
                },
            };
            let mut waiter = Waiter::new(&client, json, timeout);
            waiter.seed(rollout);
            waiter
                .until(
                    &name,
                    &SwitchGoal {
                        color,
                        revision,
                        aim: "put users on",
                        done: "users are on",
                    },
                )
                .await
        }
        Command::Analysis { name, revision } => {
            let path = match revision {
                Some(revision) => {
                    format!(
                        "/api/v1/rollouts/{}/analysis?revision={revision}",
                        encode(&name)
                    )
                }
                None => format!("/api/v1/rollouts/{}/analysis", encode(&name)),
            };
            let view: teal_core::api::AnalysisView = client().get(&path).await?;
            print(json, &view, || render::analysis(&view))
        }
        Command::History { name } => {
            let history: HistoryView = client()
                .get(&format!("/api/v1/rollouts/{}/history", encode(&name)))
                .await?;
            print(json, &history, || render::history(&history))
        }
        Command::Logs {
            name,
            color,
            follow,
        } => {
            let mut path = format!("/api/v1/rollouts/{}/logs?follow={follow}", encode(&name));
            if let Some(color) = color {
                path.push_str(&format!("&color={color}"));
            }
            let response = client().request(Method::GET, &path, None::<&()>).await?;
            if !response.status().is_success() {
                // Let the JSON error path produce the sentence.
                let _: serde_json::Value = client().get(&path).await?;
            }
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the log stream broke")?;
                if let Some(data) = frame.data_ref() {
                    let mut stdout = std::io::stdout();
                    stdout.write_all(data)?;
                    stdout.flush()?;
                }
            }
            Ok(())
        }
        Command::Delete { name } => {
            let notes: Vec<String> = client()
                .send(
                    Method::DELETE,
                    &format!("/api/v1/rollouts/{}", encode(&name)),
                    &(),
                )
                .await?;
            print(json, &notes, || notes.join("\n"))
        }
    }
}

async fn command(
    json: bool,
    client: &Client,
    name: &str,
    verb: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<CommandResponse> {
    let path = format!("{}/{verb}", rollout_path(name));
    let response: CommandResponse = client.send(Method::POST, &path, body).await?;
    print(json, &response, || {
        let mut text = response.notes.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text + &format!(
            "{} is {}: {}",
            response.rollout.name,
            render::phase(&response.rollout),
            response.rollout.message
        )
    })?;
    Ok(response)
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let text = text();
        println!("{}", text.trim_end());
    }
    Ok(())
}

fn rollout_path(name: &str) -> String {
    format!("/api/v1/rollouts/{}", encode(name))
}

/// Each revision's command, for the tree's header; empty when the history cannot be
/// read (the tree is still worth showing).
async fn revision_commands(client: &Client, name: &str) -> render::Commands {
    client
        .get::<HistoryView>(&format!("{}/history", rollout_path(name)))
        .await
        .map(|history| render::commands(&history))
        .unwrap_or_default()
}

/// `get --watch`: on a terminal, redraws in place (cursor home, clear) when something
/// changed; piped, appends a block per change, without escapes. Until Ctrl-C, or until
/// whoever reads the output goes away.
async fn watch_rollout(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let style = render::Style::detect(terminal);
    let path = rollout_path(name);
    let mut commands = render::Commands::new();
    let mut last = String::new();
    loop {
        let rollout: RolloutView = client.get(&path).await?;
        let text = if json {
            serde_json::to_string(&rollout)? + "\n"
        } else {
            if !commands.contains_key(&rollout.revision) {
                commands = revision_commands(client, name).await;
            }
            render::tree(&rollout, &commands, style)
        };
        if text != last {
            let block = if json {
                text.clone()
            } else if terminal {
                format!("\x1b[H\x1b[2J{}\n", text.trim_end())
            } else if last.is_empty() {
                format!("{}\n", text.trim_end())
            } else {
                format!("\n{}\n", text.trim_end())
            };
            if write_out(&block).is_err() {
                return Ok(()); // The reader went away (`| head`): nothing left to do.
            }
            last = text;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn write_out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// How often `--watch` and `--wait` ask the daemon.
const POLL: Duration = Duration::from_millis(500);

/// What a `--wait` makes of the rollout's state.
enum Verdict {
    /// Not there yet.
    Pending,
    /// There; the line to print, if any.
    Done(Option<String>),
    /// It will not get there by itself: the sentence saying why.
    Failed(String),
}

/// The state a `--wait` waits for.
trait Goal {
    /// For messages, after "waiting for rollout shop": "to become Healthy, or Paused
    /// for a promote".
    fn describe(&self) -> String;
    /// Judges one observation.
    fn judge(&self, rollout: &RolloutView) -> Verdict;
    /// Once judged done: the route that must be serving which color before the wait
    /// is over. Checked through the rollout's proxy, because the proxy's routes
    /// change just after the status the API reports.
    fn route(&self, rollout: &RolloutView) -> Option<(Route, Color)>;
}

/// `apply --wait` and `retry --wait`: Healthy, or Paused for a person (success too:
/// the new revision is ready in preview).
struct ReleaseGoal;

impl Goal for ReleaseGoal {
    fn describe(&self) -> String {
        "to become Healthy, or Paused for a promote".to_owned()
    }

    fn judge(&self, rollout: &RolloutView) -> Verdict {
        match rollout.phase {
            Phase::Healthy | Phase::Paused => Verdict::Done(None),
            Phase::Degraded => Verdict::Failed(degraded(rollout, &self.describe())),
            Phase::Progressing => Verdict::Pending,
        }
    }

    fn route(&self, rollout: &RolloutView) -> Option<(Route, Color)> {
        match rollout.phase {
            Phase::Healthy => Some((Route::Active, rollout.active_color?)),
            Phase::Paused => {
                let preview = rollout.colors.iter().find(|c| c.role == "preview")?;
                Some((Route::Preview, preview.color))
            }
            _ => None,
        }
    }
}

/// `promote --wait` and `undo --wait`: users on `revision` in `color`, Healthy.
struct SwitchGoal {
    color: Color,
    revision: Revision,
    /// What it does, after "to": "switch users to" (promote), "put users on" (undo).
    aim: &'static str,
    /// The closing line's words: "users switched to", "users are on".
    done: &'static str,
}

impl Goal for SwitchGoal {
    fn describe(&self) -> String {
        format!(
            "to {} {} (revision {})",
            self.aim, self.color, self.revision
        )
    }

    fn judge(&self, rollout: &RolloutView) -> Verdict {
        if rollout.phase == Phase::Healthy && rollout.active_revision == Some(self.revision) {
            return Verdict::Done(Some(format!(
                "{}: {} {} (revision {})",
                rollout.name, self.done, self.color, self.revision
            )));
        }
        if rollout.phase == Phase::Degraded {
            return Verdict::Failed(degraded(rollout, &self.describe()));
        }
        // Another apply replaced the revision we wait for: it will never be promoted.
        if rollout.revision > self.revision && rollout.active_revision != Some(self.revision) {
            return Verdict::Failed(format!(
                "gave up waiting for rollout {} {}: revision {} replaced it ({})",
                rollout.name,
                self.describe(),
                rollout.revision,
                rollout.message
            ));
        }
        Verdict::Pending
    }

    fn route(&self, _: &RolloutView) -> Option<(Route, Color)> {
        Some((Route::Active, self.color))
    }
}

fn degraded(rollout: &RolloutView, waiting_for: &str) -> String {
    format!(
        "rollout {} is {} while waiting for it {waiting_for}: {}",
        rollout.name,
        render::phase(rollout),
        rollout.message
    )
}

/// Polls the daemon until a goal is reached, printing a progress line per change:
/// to standard output, or standard error with `-o json` so the JSON stays parseable.
struct Waiter<'c> {
    client: &'c Client,
    json: bool,
    timeout: Duration,
    deadline: tokio::time::Instant,
    last_line: Option<String>,
}

impl<'c> Waiter<'c> {
    fn new(client: &'c Client, json: bool, timeout: Duration) -> Waiter<'c> {
        Waiter {
            client,
            json,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            last_line: None,
        }
    }

    /// The state a command just answered with, so it is not printed twice.
    fn seed(&mut self, rollout: &RolloutView) {
        self.last_line = Some(progress_line(rollout));
    }

    fn say(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            let _ = write_out(&format!("{line}\n"));
        }
    }

    /// Prints the state if it changed since the last line.
    fn report(&mut self, rollout: &RolloutView) {
        let line = progress_line(rollout);
        if self.last_line.as_ref() != Some(&line) {
            self.say(&line);
            self.last_line = Some(line);
        }
    }

    /// Sleeps one poll interval; false when the deadline has passed.
    async fn tick(&self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep_until((now + POLL).min(self.deadline)).await;
        true
    }

    fn timed_out(&self, what: &str, last: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "timed out after {} waiting for {what}; {last}",
            format_duration(self.timeout)
        )
    }

    async fn until(&mut self, name: &str, goal: &dyn Goal) -> anyhow::Result<()> {
        let path = rollout_path(name);
        loop {
            let rollout: RolloutView = self.client.get(&path).await?;
            self.report(&rollout);
            match goal.judge(&rollout) {
                Verdict::Pending => {}
                Verdict::Failed(sentence) => anyhow::bail!(sentence),
                Verdict::Done(line) => {
                    if let Some((route, color)) = goal.route(&rollout) {
                        self.route_serves(&rollout, route, color, true).await?;
                    }
                    if let Some(line) = line {
                        self.say(&line);
                    }
                    return Ok(());
                }
            }
            if !self.tick().await {
                return Err(self.timed_out(
                    &format!("rollout {name} {}", goal.describe()),
                    &format!("it is {}: {}", render::phase(&rollout), rollout.message),
                ));
            }
        }
    }

    /// `abort --wait`: until the preview route no longer answers with the candidate.
    async fn preview_leaves(
        &mut self,
        rollout: &RolloutView,
        candidate: Color,
        revision: Revision,
    ) -> anyhow::Result<()> {
        if rollout.preview_listen.is_none() && rollout.preview_match.is_empty() {
            return Ok(()); // No preview route: testers never reached it.
        }
        self.route_serves(rollout, Route::Preview, candidate, false)
            .await?;
        self.say(&format!(
            "{}: {candidate} (revision {revision}) is no longer served in preview",
            rollout.name
        ));
        Ok(())
    }

    /// Waits until the daemon reports that the proxy sends `route` to `color`
    /// (`want`), or no longer does (`!want`). The proxy follows a committed status
    /// within a reconcile pass; this closes that gap without touching the app.
    async fn route_serves(
        &mut self,
        rollout: &RolloutView,
        route: Route,
        color: Color,
        want: bool,
    ) -> anyhow::Result<()> {
        let path = rollout_path(&rollout.name);
        let mut current = rollout.clone();
        loop {
            let served = match route {
                Route::Active => current.routes.active,
                Route::Preview => current.routes.effective_preview(),
            };
            if (served == Some(color)) == want {
                return Ok(());
            }
            if !self.tick().await {
                let what = format!(
                    "the {} route of {} {} {color}",
                    route.as_str(),
                    rollout.name,
                    if want { "to serve" } else { "to stop serving" }
                );
                let last = format!(
                    "it still goes to {}",
                    served.map_or("nothing".to_owned(), |c| c.to_string())
                );
                return Err(self.timed_out(&what, &last));
            }
            current = self.client.get(&path).await?;
        }
    }
}

/// `shop: Progressing: waiting for green (revision 2) to become ready: 1/2 ready`.
fn progress_line(rollout: &RolloutView) -> String {
    format!(
        "{}: {}: {}",
        rollout.name,
        render::phase(rollout),
        rollout.message
    )
}

/// The rollout's two routes, as a client reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Active,
    Preview,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Active => "active",
            Route::Preview => "preview",
        }
    }
}

/// Parses `30s`, `5m`, `1h`, `1m30s`, `500ms`, or plain seconds (`90`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 30s, 5m, 1h or 90 (seconds)");
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(invalid)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(invalid)?),
            _ => return Err(invalid()),
        };
        rest = &rest[unit..];
        total = total.checked_add(part).ok_or_else(invalid)?;
    }
    Ok(total)
}

/// `10m`, `1h30m`, `45s`, `500ms`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_millis() != 0 || seconds == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 {
        out.push_str(&format!("{seconds}s"));
    }
    out
}

/// Rollout names are DNS labels, so only a stray character needs escaping.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "5x", "m", "1.5m", "-3s", "s5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn every_command_has_an_example() {
        let command = <Cli as clap::CommandFactory>::command();
        for sub in command.get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("teal "), "{} has no example", sub.get_name());
        }
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
