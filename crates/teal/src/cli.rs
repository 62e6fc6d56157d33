//! The `teal` command line.

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

use crate::client::{ApiError, Client, default_data_dir};
use crate::render;

/// teal: blue-green releases with no downtime and an instant way back.
#[derive(Debug, Parser)]
#[command(name = "teal", version, about, long_about = None)]
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

/// Everything teal can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: API on loopback (--api, default 127.0.0.1:7070; port 0 picks a
    /// free port), store, reconcilers, proxies.
    #[command(after_help = "Example:\n  teal server --data-dir /var/lib/teal --api 127.0.0.1:7070")]
    Server,
    /// Create or update the rollouts (and analysis templates) of a spec file.
    #[command(after_help = "Example:\n  teal apply -f shop.yaml")]
    Apply {
        /// The spec file (YAML, several documents allowed); `-` reads standard input.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// List rollouts.
    List,
    /// Show one rollout: phase, colors, instances, routes.
    Get {
        /// The rollout.
        name: String,
        /// Redraw whenever it changes, until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// Promote the revision in preview: scale it up, then switch users to it.
    #[command(
        after_help = "Example:\n  teal promote shop --revision 4   # refused unless revision 4 is in preview"
    )]
    Promote {
        /// The rollout.
        name: String,
        /// Refuse unless this revision is the one in preview.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Abort the revision being released: users stay on the stable color.
    Abort {
        /// The rollout.
        name: String,
    },
    /// Release an aborted revision again.
    Retry {
        /// The rollout.
        name: String,
    },
    /// Release an earlier revision again (instant while the old color is warm).
    Undo {
        /// The rollout.
        name: String,
        /// The revision to go back to (default: the one before the active revision).
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Revisions and the audit trail of a rollout.
    History {
        /// The rollout.
        name: String,
    },
    /// Instance logs.
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
    Delete {
        /// The rollout.
        name: String,
    },
    /// A guided tour of a full blue-green cycle that needs nothing but this binary.
    Demo {
        /// Exit after the tour instead of leaving the setup running until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// The demo app: a tiny HTTP server that reports its color and version.
    DemoApp(crate::demo_app::DemoAppOptions),
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
    match cli.command {
        Command::Server => {
            let api = cli.api.as_deref().unwrap_or(crate::server::DEFAULT_API);
            let api = api
                .parse()
                .with_context(|| format!("--api {api:?} is not an address like 127.0.0.1:7070"))?;
            let options = crate::server::ServerOptions { data_dir, api };
            crate::server::run(options, shutdown_signal()).await
        }
        Command::Demo { exit } => crate::demo::run(exit).await,
        Command::DemoApp(options) => crate::demo_app::run(options).await,
        Command::Apply { file } => {
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
            let response: ApplyResponse = client()
                .send(Method::POST, "/api/v1/apply", &request)
                .await?;
            print(json, &response, || render::apply(&response))
        }
        Command::List => {
            let rollouts: Vec<RolloutView> = client().get("/api/v1/rollouts").await?;
            print(json, &rollouts, || {
                render::list(&rollouts, crate::daemon::now_ms())
            })
        }
        Command::Get { name, watch } => {
            let client = client();
            let path = format!("/api/v1/rollouts/{}", encode(&name));
            if !watch {
                let rollout: RolloutView = client.get(&path).await?;
                return print(json, &rollout, || render::rollout(&rollout));
            }
            watch_rollout(&client, &path, json).await
        }
        Command::Promote { name, revision } => {
            let request = PromoteRequest { revision };
            command(json, &client(), &name, "promote", &request).await
        }
        Command::Abort { name } => command(json, &client(), &name, "abort", &()).await,
        Command::Retry { name } => command(json, &client(), &name, "retry", &()).await,
        Command::Undo { name, to_revision } => {
            let request = UndoRequest { to_revision };
            command(json, &client(), &name, "undo", &request).await
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
                    use std::io::Write;
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
) -> anyhow::Result<()> {
    let path = format!("/api/v1/rollouts/{}/{verb}", encode(name));
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
    })
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

async fn watch_rollout(client: &Client, path: &str, json: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let rollout: RolloutView = client.get(path).await?;
        let text = if json {
            serde_json::to_string(&rollout)?
        } else {
            render::rollout(&rollout)
        };
        if text != last {
            if terminal && !json {
                // Redraw in place: home, clear screen.
                print!("\x1b[H\x1b[2J");
            }
            println!("{}", text.trim_end());
            if !terminal && !json {
                println!();
            }
            last = text;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
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
