//! The HTTP side of the streaming server: `/{exec,attach,portforward}/<token>`, upgraded to a
//! WebSocket (RFC 6455, by `Sec-WebSocket-Protocol`) or to SPDY/3.1 (by `Upgrade: SPDY/3.1` and
//! `X-Stream-Protocol-Version`), as kubelet's streaming server does.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Pending, Streaming, spdy, websocket};
use crate::Cri;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, text: impl Into<String>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r
}

fn header(headers: &HeaderMap, name: impl header::AsHeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Whether `headers` ask for an upgrade to `protocol` (case-insensitive).
fn upgrade_to(headers: &HeaderMap, protocol: &str) -> bool {
    header(headers, header::UPGRADE)
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case(protocol))
}

/// Accepts connections on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, cri: Arc<Cri>, streaming: Arc<Streaming>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (cri, streaming) = (cri.clone(), streaming.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (cri, streaming) = (cri.clone(), streaming.clone());
                async move { Ok::<_, Infallible>(handle(request, cri, streaming)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "streaming connection ended");
            }
        });
    }
}

/// Routes one request: takes its token and upgrades the connection.
fn handle(mut request: Request<Incoming>, cri: Arc<Cri>, streaming: Arc<Streaming>) -> Reply {
    let path = request.uri().path().to_owned();
    let Some((kind, token)) = path.trim_start_matches('/').split_once('/') else {
        return reply(StatusCode::NOT_FOUND, format!("no such stream {path}"));
    };
    let pending = match streaming.tokens.take(token) {
        Some(p) if p.kind() == kind => p,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                format!("unknown, used or expired stream token for {kind}"),
            );
        }
    };
    let headers = request.headers().clone();
    let on_upgrade = hyper::upgrade::on(&mut request);
    if upgrade_to(&headers, "websocket") {
        let supported: &[&'static str] = match pending {
            Pending::PortForward(_) => &websocket::PORT_FORWARD_PROTOCOLS,
            _ => &websocket::STREAM_PROTOCOLS,
        };
        let offered = header(&headers, header::SEC_WEBSOCKET_PROTOCOL);
        let Some(protocol) = websocket::choose(offered, supported) else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("no supported subprotocol in {offered:?}: use one of {supported:?}"),
            );
        };
        let key = header(&headers, header::SEC_WEBSOCKET_KEY);
        if key.is_empty() {
            return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        }
        let ports = match query_ports(request.uri().query().unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => return reply(StatusCode::BAD_REQUEST, e),
        };
        let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
        *r.body_mut() = Full::new(Bytes::new());
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            match pending {
                Pending::Stream(target) => websocket::stream(ws, protocol, cri, target).await,
                Pending::PortForward(target) => websocket::port_forward(ws, target, ports).await,
            }
        });
        return r;
    }
    if upgrade_to(&headers, "SPDY/3.1") {
        let supported: &[&'static str] = match pending {
            Pending::PortForward(_) => &spdy::PORT_FORWARD_PROTOCOLS,
            _ => &spdy::STREAM_PROTOCOLS,
        };
        let offered: Vec<&str> = headers
            .get_all("X-Stream-Protocol-Version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let Some(protocol) = offered
            .iter()
            .find_map(|p| supported.iter().find(|s| *s == p).copied())
        else {
            return reply(
                StatusCode::FORBIDDEN,
                format!(
                    "no supported X-Stream-Protocol-Version in {offered:?}: use one of {supported:?}"
                ),
            );
        };
        let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
        *r.body_mut() = Full::new(Bytes::new());
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            "X-Stream-Protocol-Version",
            HeaderValue::from_static(protocol),
        );
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(error = %e, "SPDY upgrade failed"),
            };
            let conn = TokioIo::new(upgraded);
            match pending {
                Pending::Stream(target) => spdy::stream(conn, cri, target).await,
                Pending::PortForward(target) => spdy::port_forward(conn, target).await,
            }
        });
        return r;
    }
    reply(
        StatusCode::BAD_REQUEST,
        "expected an upgrade to websocket or SPDY/3.1",
    )
}

/// The `port` parameters of a port-forward URL's query.
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "port")
        .map(|(_, v)| v.parse::<u16>().map_err(|_| format!("bad port {v:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_the_query() {
        assert_eq!(query_ports("port=80&port=8080"), Ok(vec![80, 8080]));
        assert_eq!(query_ports(""), Ok(vec![]));
        assert!(query_ports("port=x").is_err());
    }
}
