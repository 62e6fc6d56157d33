//! `teal demo`: a scripted tour of a full blue-green cycle, needing nothing but this
//! binary. It runs a daemon in a temporary directory, releases the built-in demo app
//! as v1 (blue) and v2 (green), shows what users and testers get, promotes, undoes,
//! and leaves everything running until Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Method;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use teal_core::api::{ApplyRequest, ApplyResponse, CommandResponse, RolloutView};
use teal_core::rollout::Phase;

use crate::client::Client;

const NAME: &str = "demo";

/// Runs the tour; with `exit`, stops everything afterwards instead of waiting for
/// Ctrl-C.
pub async fn run(exit: bool) -> anyhow::Result<()> {
    let data_dir = tempfile::Builder::new()
        .prefix("teal-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let data = data_dir.path().to_owned();
    let exe = std::env::current_exe().context("cannot find the teal binary")?;
    let active = free_or_any(8080);
    let preview = free_or_any(8081);

    say(
        "Starting a teal daemon",
        &format!("data in {}", data.display()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = crate::server::ServerOptions {
        data_dir: data.clone(),
        api: "127.0.0.1:0".parse().expect("a literal address"),
    };
    let server = tokio::spawn(crate::server::run(options, async move {
        let _ = stopped.await;
    }));
    let tour = async {
        let client = wait_for_daemon(&data).await?;
        tour(&client, &exe, &data, active, preview, exit).await
    };
    let result = tour.await;
    println!("\nStopping the demo...");
    let _ = stop.send(());
    server.await.context("the demo daemon panicked")??;
    drop(data_dir);
    result
}

async fn tour(
    client: &Client,
    exe: &Path,
    data: &Path,
    active: SocketAddr,
    preview: SocketAddr,
    exit: bool,
) -> anyhow::Result<()> {
    let (client, exe, data) = (client, exe.to_owned(), data.to_owned());
    let teal = format!("{} --data-dir {}", exe.display(), data.display());

    say("Release v1", "the first revision goes straight to blue");
    apply(client, &data, &spec(&exe, "v1", active, preview)).await?;
    let rollout = wait_until(client, "v1 is live", |r| {
        r.phase == Phase::Healthy && r.active_revision == Some(1)
    })
    .await?;
    let active = rollout.active_listen.parse::<SocketAddr>()?;
    let preview: SocketAddr = rollout
        .preview_listen
        .as_deref()
        .unwrap_or_default()
        .parse()?;
    show(&format!("curl http://{active}/"), active, None).await?;

    say(
        "Release v2",
        "it starts in green; users stay on blue, testers can reach green",
    );
    apply(client, &data, &spec(&exe, "v2", active, preview)).await?;
    wait_until(client, "v2 is ready in preview", |r| {
        r.phase == Phase::Paused
    })
    .await?;
    show(
        &format!("curl http://{active}/                       # users"),
        active,
        None,
    )
    .await?;
    show(
        &format!("curl http://{preview}/                       # testers, preview address"),
        preview,
        None,
    )
    .await?;
    show(
        &format!(
            "curl --cookie test=true http://{active}/    # testers, cookie on the users' address"
        ),
        active,
        Some("test=true"),
    )
    .await?;
    println!("\n  {teal} get {NAME}\n");
    println!(
        "{}",
        indent(&crate::render::rollout(
            &client.get(&format!("/api/v1/rollouts/{NAME}")).await?
        ))
    );

    say("Promote", &format!("{teal} promote {NAME}"));
    let response: CommandResponse = client
        .send(
            Method::POST,
            &format!("/api/v1/rollouts/{NAME}/promote"),
            &(),
        )
        .await?;
    notes(&response);
    wait_until(client, "users are on green", |r| {
        r.phase == Phase::Healthy && r.active_revision == Some(2)
    })
    .await?;
    show(&format!("curl http://{active}/"), active, None).await?;
    println!("  blue stays warm for 30s, so going back is a route switch, not a start.");

    say("Undo", &format!("{teal} undo {NAME}"));
    let started = Instant::now();
    let response: CommandResponse = client
        .send(Method::POST, &format!("/api/v1/rollouts/{NAME}/undo"), &())
        .await?;
    notes(&response);
    wait_until(client, "users are back on blue", |r| {
        r.active_color == Some(teal_core::Color::Blue)
    })
    .await?;
    println!("  back on blue in {} ms", started.elapsed().as_millis());
    show(&format!("curl http://{active}/"), active, None).await?;

    say("Your turn", "everything keeps running");
    println!("  curl http://{active}/");
    println!("  curl http://{preview}/");
    println!("  {teal} get {NAME} --watch");
    println!("  {teal} history {NAME}");
    println!("  {teal} logs {NAME}");
    println!("  Change the version in a spec and `{teal} apply -f FILE` to release it.");

    if !exit {
        println!("\nPress Ctrl-C to stop the demo.");
        crate::cli::shutdown_signal().await;
    }
    Ok(())
}

fn say(title: &str, detail: &str) {
    println!("\n== {title}\n   {detail}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn notes(response: &CommandResponse) {
    for note in &response.notes {
        println!("  - {note}");
    }
}

/// The preferred port when it is free, else any free port.
fn free_or_any(port: u16) -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpListener::bind(preferred).is_ok() {
        preferred
    } else {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}

fn spec(exe: &Path, version: &str, active: SocketAddr, preview: SocketAddr) -> String {
    format!(
        r#"apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata:
  name: {NAME}
spec:
  replicas: 2
  template:
    process:
      command: ["{exe}", "demo-app", "--port", "$(PORT)"]
      env:
        - {{name: DEMO_VERSION, value: "{version}"}}
    readinessProbe:
      httpGet: {{path: /ready}}
      periodSeconds: 1
  strategy:
    blueGreen:
      activeService: {{listen: "{active}"}}
      previewService: {{listen: "{preview}"}}
      previewMatch: {{cookie: {{name: test, value: "true"}}}}
      autoPromotionEnabled: false
      scaleDownDelaySeconds: 30
"#,
        exe = exe.display()
    )
}

async fn wait_for_daemon(data: &Path) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if data.join(crate::server::ADDRESS_FILE).exists() {
            return Ok(Client::new(data, None, None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the demo daemon did not start within 10s")
}

async fn apply(client: &Client, data: &Path, text: &str) -> anyhow::Result<()> {
    let request = ApplyRequest {
        file: "demo.yaml".to_owned(),
        text: text.to_owned(),
        base_dir: data.display().to_string(),
    };
    let response: ApplyResponse = client.send(Method::POST, "/api/v1/apply", &request).await?;
    print!("{}", indent(&crate::render::apply(&response)));
    Ok(())
}

async fn wait_until(
    client: &Client,
    what: &str,
    done: impl Fn(&RolloutView) -> bool,
) -> anyhow::Result<RolloutView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rollout: RolloutView = client.get(&format!("/api/v1/rollouts/{NAME}")).await?;
        if done(&rollout) {
            println!("  ✓ {what}");
            return Ok(rollout);
        }
        if Instant::now() > deadline {
            bail!(
                "the demo waited 60s for \"{what}\"; the rollout says: {}",
                rollout.message
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends the request a user would type and prints the answer.
async fn show(command: &str, address: SocketAddr, cookie: Option<&str>) -> anyhow::Result<()> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = hyper::Request::get(format!("http://{address}/"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = http.request(request.body(Empty::new())?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "\n  $ {command}\n  {}",
        String::from_utf8_lossy(&body).trim()
    );
    Ok(())
}
