//! The admin HTTP listener: `/metrics`, `/livez`, `/readyz`, `/saf` (the store-and-forward
//! entries), `POST /saf/retry|drop?id=N` and `POST /cutover` (the next business date now), every operator action and read behind a bearer
//! token ([`crate::admin_auth`]: 401 without a valid one, 403 for a token of another role;
//! the operator is the token's name). A deliberately small HTTP/1.1
//! server (one request per connection, bounded head size, time and connections): a handful
//! of endpoints do not need a web framework on the switch's dependency list. Keep the admin
//! address off the terminals' network.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin_auth::{AdminAuth, Role};

/// What the endpoints answer from.
pub trait AdminState: Send + Sync + 'static {
    /// The Prometheus text.
    fn metrics(&self) -> Vec<u8>;
    /// `Ok(())` when ready, else the reasons.
    fn readiness(&self) -> Result<(), Vec<String>>;
    /// The store-and-forward entries as JSON (`None`: off).
    fn saf_list(&self) -> Option<String>;
    /// Cut over to the next business date now, as `operator`: the date opened.
    fn cut_over(
        &self,
        operator: &str,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
    /// Put a dead letter back (`drop` false) or remove an entry, as `operator`.
    fn saf_action(
        &self,
        id: u64,
        operator: &str,
        drop: bool,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

const MAX_HEAD: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 32;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Serve until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<impl AdminState>,
    auth: Arc<AdminAuth>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (state, auth) = (state.clone(), auth.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(stream, &*state, &auth)).await;
            drop(permit);
        });
    }
}

async fn refuse(stream: &mut TcpStream, status: &str) -> std::io::Result<()> {
    let body: &[u8] = if status.starts_with("401") {
        b"a valid bearer token is needed (Authorization: Bearer TOKEN)\n"
    } else {
        b"this token may not do that\n"
    };
    respond(stream, status, "text/plain", body).await
}

async fn answer(
    mut stream: TcpStream,
    state: &impl AdminState,
    auth: &AdminAuth,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let needs = match path {
        b"/livez" | b"/readyz" => None,
        b"/metrics" if auth.metrics_open() => None,
        b"/metrics" => Some(Role::Scrape),
        _ => Some(Role::Operator),
    };
    let operator = match needs.map(|role| auth.check(&head, role)) {
        None => None,
        Some(Ok(name)) => Some(name.to_string()),
        Some(Err(refusal)) => {
            tracing::warn!(path = %String::from_utf8_lossy(path), reason = refusal.reason, "admin request refused");
            return refuse(&mut stream, refusal.status).await;
        }
    };
    if method == b"POST" && path == b"/cutover" {
        let operator = operator.unwrap_or_default();
        return match state.cut_over(&operator).await {
            Ok(opened) => {
                respond(
                    &mut stream,
                    "200 OK",
                    "text/plain",
                    format!("business date {opened}\n").as_bytes(),
                )
                .await
            }
            Err(e) => {
                respond(
                    &mut stream,
                    "409 Conflict",
                    "text/plain",
                    format!("{e}\n").as_bytes(),
                )
                .await
            }
        };
    }
    if method == b"POST" && (path == b"/saf/retry" || path == b"/saf/drop") {
        let query = target.split(|&b| b == b'?').nth(1).unwrap_or_default();
        let param = |name: &str| {
            query
                .split(|&b| b == b'&')
                .filter_map(|kv| {
                    let mut it = kv.splitn(2, |&b| b == b'=');
                    (it.next()? == name.as_bytes()).then(|| {
                        String::from_utf8_lossy(it.next().unwrap_or_default()).into_owned()
                    })
                })
                .next()
        };
        let id = param("id").and_then(|v| v.parse::<u64>().ok());
        if param("operator").is_some_and(|named| Some(&named) != operator.as_ref()) {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"the operator is the token's: operator= may not name another\n",
            )
            .await;
        }
        let (Some(id), Some(operator)) = (id, operator) else {
            return respond(&mut stream, "400 Bad Request", "text/plain", b"need id=N\n").await;
        };
        return match state.saf_action(id, &operator, path == b"/saf/drop").await {
            Ok(()) => respond(&mut stream, "200 OK", "text/plain", b"done\n").await,
            Err(e) => {
                respond(
                    &mut stream,
                    "409 Conflict",
                    "text/plain",
                    format!("{e}\n").as_bytes(),
                )
                .await
            }
        };
    }
    if method != b"GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        )
        .await;
    }
    match path {
        b"/saf" => match state.saf_list() {
            Some(json) => respond(&mut stream, "200 OK", "application/json", json.as_bytes()).await,
            None => {
                respond(
                    &mut stream,
                    "404 Not Found",
                    "text/plain",
                    b"store-and-forward is off\n",
                )
                .await
            }
        },
        b"/metrics" => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &state.metrics(),
            )
            .await
        }
        b"/livez" => respond(&mut stream, "200 OK", "text/plain", b"ok\n").await,
        b"/readyz" => match state.readiness() {
            Ok(()) => respond(&mut stream, "200 OK", "text/plain", b"ready\n").await,
            Err(reasons) => {
                let body = format!("not ready: {}\n", reasons.join("; "));
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    body.as_bytes(),
                )
                .await
            }
        },
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"try /metrics, /livez or /readyz\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
