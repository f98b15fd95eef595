//! The agent's I/O: the Delta ADS stream (reconnected with backoff), the debounce that
//! turns a burst of responses into one reload, and, with a command after `--`, nginx
//! itself as a child in the foreground, with the container's signals forwarded to it.
//! The decisions are [`Client`]'s and [`Nginx`]'s; this loop only moves messages.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::apply::{Applied, Master, Nginx};
use super::client::{Client, Outcome};

/// How the agent runs.
#[derive(Debug)]
pub struct AgentOptions {
    /// The control plane: `http://HOST:PORT`, or `https://` with `tls_dir`.
    pub server: String,
    pub node: Node,
    /// `ca.crt`, `tls.crt`, `tls.key` for mTLS to the control plane.
    pub tls_dir: Option<PathBuf>,
    /// The server name the control plane's certificate is checked against [default:
    /// the host of `server`].
    pub tls_server_name: Option<String>,
    /// Quiet time after a response before rendering: a burst becomes one reload.
    pub debounce: Duration,
    /// The longest a burst may hold a reload back.
    pub debounce_max: Duration,
    /// How long a listener waits for the endpoints and routes it references.
    pub warming_timeout: Duration,
    pub config_dir: PathBuf,
    /// nginx's command line for `nginx -t` when it runs on its own.
    pub nginx_test: Vec<OsString>,
    /// nginx's pid file when it runs on its own.
    pub pid_file: PathBuf,
    pub reload_timeout: Duration,
    /// nginx in the foreground under the agent (e.g. `nginx -g 'daemon off;'`).
    pub exec: Vec<OsString>,
}

/// Runs the agent. With a command, until nginx exits (its exit status is returned);
/// without, until SIGINT or SIGTERM.
pub async fn run(options: AgentOptions) -> anyhow::Result<i32> {
    let supervised = Arc::new(AtomicI32::new(0));
    let (master, test) = if options.exec.is_empty() {
        (
            Master::PidFile(options.pid_file.clone()),
            options.nginx_test.clone(),
        )
    } else {
        (Master::Supervised(supervised.clone()), options.exec.clone())
    };
    let mut nginx = Nginx::new(&options.config_dir, test, master, options.reload_timeout)?;
    nginx.prepare()?;
    tracing::info!(dir = %nginx.dir().display(), "nginx configuration directory");
    let xds = xds_loop(options_for_loop(&options)?, nginx);
    tokio::pin!(xds);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if options.exec.is_empty() {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = &mut xds => {}
        }
        return Ok(0);
    }
    let (program, args) = options.exec.split_first().expect("not empty");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", program.to_string_lossy()))?;
    let pid = child.id().expect("a child that has not been waited for") as i32;
    supervised.store(pid, Ordering::SeqCst);
    tracing::info!(pid, "nginx started");
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let forward = |sig: Signal| {
        tracing::info!(signal = %sig, "forwarding to nginx");
        let _ = kill(Pid::from_raw(pid), sig);
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                supervised.store(0, Ordering::SeqCst);
                let status = status?;
                tracing::info!(%status, "nginx exited");
                use std::os::unix::process::ExitStatusExt;
                return Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            _ = term.recv() => forward(Signal::SIGTERM),
            _ = int.recv() => forward(Signal::SIGINT),
            _ = quit.recv() => forward(Signal::SIGQUIT),
            _ = hup.recv() => forward(Signal::SIGHUP),
            _ = usr1.recv() => forward(Signal::SIGUSR1),
            () = &mut xds => {}
        }
    }
}

/// What the xDS loop needs.
struct LoopOptions {
    endpoint: Endpoint,
    node: Node,
    debounce: Duration,
    debounce_max: Duration,
    warming_timeout: Duration,
}

fn options_for_loop(options: &AgentOptions) -> anyhow::Result<LoopOptions> {
    let mut endpoint = Endpoint::from_shared(options.server.clone())
        .map_err(|e| anyhow::anyhow!("--server {}: {e}", options.server))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(dir) = &options.tls_dir {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(name).display()))
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")?))
            .identity(Identity::from_pem(read("tls.crt")?, read("tls.key")?));
        if let Some(name) = &options.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(LoopOptions {
        endpoint,
        node: options.node.clone(),
        debounce: options.debounce,
        debounce_max: options.debounce_max,
        warming_timeout: options.warming_timeout,
    })
}

/// Streams from the control plane for ever, reconnecting with backoff; nginx keeps
/// serving the last configuration meanwhile.
async fn xds_loop(options: LoopOptions, mut nginx: Nginx) {
    let mut client = Client::new(options.node.clone());
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut received = false;
        match session(&options, &mut client, &mut nginx, &mut received).await {
            Ok(()) => tracing::warn!("the control plane ended the stream"),
            Err(e) => tracing::warn!(error = %e, "xDS stream failed"),
        }
        if received {
            // The stream worked: the next failure starts the backoff again.
            backoff = Duration::from_millis(100);
        }
        // Some jitter, so that a fleet does not come back in step.
        let jitter = Duration::from_millis(u64::from(std::process::id() % 100));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One stream; `received` says whether it received anything.
async fn session(
    options: &LoopOptions,
    client: &mut Client,
    nginx: &mut Nginx,
    received: &mut bool,
) -> anyhow::Result<()> {
    let channel = options.endpoint.connect().await?;
    let mut ads = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let send = |requests: Vec<DeltaDiscoveryRequest>| {
        for r in requests {
            let _ = tx.send(r);
        }
    };
    send(client.start());
    let mut inbound = ads
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(node = %options.node.id, "connected to the control plane");
    // When to apply: after `debounce` of quiet, at most `debounce_max` after the first
    // response of a burst; a warming configuration waits up to `warming_timeout`.
    let mut apply_at: Option<Instant> = None;
    let mut burst_start = Instant::now();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(response) = message? else { return Ok(()) };
                *received = true;
                let now = Instant::now();
                if apply_at.is_none() {
                    burst_start = now;
                }
                apply_at = Some((now + options.debounce).min(burst_start + options.debounce_max));
                send(client.receive(response));
            }
            () = sleep_until(apply_at), if apply_at.is_some() => {
                let now = Instant::now();
                if client.warming() {
                    if now < burst_start + options.warming_timeout {
                        apply_at = Some(burst_start + options.warming_timeout);
                        continue;
                    }
                    // What has not come by now is applied when it comes.
                    client.stop_warming();
                }
                apply_at = None;
                send(apply_batch(client, nginx).await);
            }
        }
    }
}

/// Renders what the client holds, has nginx take it, and answers the batch's responses.
async fn apply_batch(client: &mut Client, nginx: &mut Nginx) -> Vec<DeltaDiscoveryRequest> {
    let rendered = client.render();
    for r in &rendered.refused {
        tracing::warn!(resource = %r.name, kind = r.ty.short_name(), reason = %r.reason, "not rendered for nginx");
    }
    if !rendered.missing.is_empty() {
        tracing::debug!(missing = ?rendered.missing, "referenced resources not received");
    }
    if !client.dirty() {
        return client.applied(&Outcome::Applied, &rendered.refused);
    }
    let reason = match nginx.apply(&rendered).await {
        Ok(applied) => {
            log_applied(applied);
            return client.applied(&Outcome::Applied, &rendered.refused);
        }
        Err(reason) => reason,
    };
    tracing::warn!(%reason, "nginx refused the configuration; the previous one stays");
    // The batch's endpoint changes and removals on what nginx holds: they must not be
    // lost with the rest (the server sends nothing twice).
    if let Some(fallback) = client.fallback() {
        let partial = super::render::render(&fallback);
        match nginx.apply(&partial).await {
            Ok(applied) => {
                log_applied(applied);
                tracing::info!("applied the batch's endpoint changes and removals alone");
                return client.applied_fallback(&reason, &partial.refused);
            }
            Err(again) => tracing::warn!(reason = %again, "nginx refused those too"),
        }
    }
    client.applied(&Outcome::Failed(reason), &rendered.refused)
}

fn log_applied(applied: Applied) {
    match applied {
        Applied::Reloaded(took) => tracing::info!(?took, "nginx reloaded"),
        Applied::Written => tracing::info!("configuration written; nginx is not running"),
        Applied::Unchanged => {}
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The agent's node: like an Envoy's (id, cluster, listener families in the metadata),
/// with a user agent of its own.
pub fn node(id: &str, cluster: &str, families: crate::model::ListenerFamilies) -> Node {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    Node {
        id: id.to_owned(),
        cluster: cluster.to_owned(),
        user_agent_name: super::USER_AGENT.to_owned(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        metadata: Some(Struct {
            fields: [(
                crate::translate::LISTENER_FAMILIES_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(families.to_string())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}
