//! The daemon's web listener (`[metrics] listen`): Prometheus metrics at
//! `/metrics` and the read-only status page at `/`. Off by default, and on
//! loopback unless configured otherwise; it only reads the daemon's state
//! ([`snapshot`]) and never touches the lease device.
//!
//! Two threads answer requests one at a time each; a slow or stuck client
//! holds at most one of them and never a lock of the daemon.

pub mod exposition;
pub mod page;
pub mod snapshot;

use crate::context::Context;
use snapshot::Snapshot;
use std::sync::Arc;

/// Threads answering requests.
const WORKERS: usize = 2;
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const PAGE_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Bind `[metrics] listen` and start answering.
pub fn start(context: Arc<Context>, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(listen).map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen} for metrics and the status page: {e} (is the port in use? see [metrics] listen)")
    })?;
    let server = Arc::new(server);
    for worker in 0..WORKERS {
        let (server, context) = (Arc::clone(&server), Arc::clone(&context));
        std::thread::Builder::new()
            .name(format!("web-{worker}"))
            .spawn(move || {
                for request in server.incoming_requests() {
                    answer(&context, request);
                }
            })?;
    }
    tracing::info!("metrics at http://{listen}/metrics, status page at http://{listen}/");
    Ok(())
}

fn answer(context: &Context, request: tiny_http::Request) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let get = matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    let (status, content_type, body) = match (get, path.as_str()) {
        (false, _) => (405, "text/plain", "only GET and HEAD\n".to_string()),
        (true, "/metrics") => (
            200,
            METRICS_CONTENT_TYPE,
            exposition::render(&Snapshot::take(context, 0)),
        ),
        (true, "/" | "/index.html") => (
            200,
            PAGE_CONTENT_TYPE,
            page::render(&Snapshot::take(context, snapshot::PAGE_EVENTS)),
        ),
        (true, _) => (
            404,
            "text/plain",
            "not found: / is the status page, /metrics the metrics\n".to_string(),
        ),
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(header) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
    {
        response = response.with_header(header);
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!("web: answering {path}: {e}");
    }
}
