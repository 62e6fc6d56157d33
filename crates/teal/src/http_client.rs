//! One HTTP request with a time limit: what analysis providers, webhooks and
//! notifications send, over `http://` or `https://` (rustls, with the Mozilla roots
//! from webpki-roots, so no system certificate store is needed). The answer's body is
//! capped so a misbehaving server cannot exhaust memory.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest answer read, in bytes.
pub const MAX_ANSWER: usize = 4 << 20;

/// A request to send.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    /// GET, POST, PUT.
    pub method: Method,
    /// An `http://` or `https://` URL.
    pub url: &'a str,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body; sent as JSON when `json` is true.
    pub body: Option<String>,
    /// Content type `application/json`.
    pub json: bool,
    /// For the whole exchange, answer body included.
    pub timeout: Duration,
}

impl<'a> Outgoing<'a> {
    /// A GET of `url`.
    pub fn get(url: &'a str, timeout: Duration) -> Self {
        Outgoing {
            method: Method::GET,
            url,
            headers: Vec::new(),
            body: None,
            json: false,
            timeout,
        }
    }

    /// A POST of a JSON body.
    pub fn post_json(url: &'a str, body: String, timeout: Duration) -> Self {
        Outgoing {
            method: Method::POST,
            url,
            headers: Vec::new(),
            body: Some(body),
            json: true,
            timeout,
        }
    }
}

/// The answer: status and body.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The body (at most [`MAX_ANSWER`] bytes).
    pub body: Bytes,
}

/// Sends one request. Errors are one sentence naming the host (never the full URL,
/// which may carry a secret such as a Slack webhook token).
pub async fn send(request: Outgoing<'_>) -> Result<Answer, String> {
    let uri: Uri = request
        .url
        .parse()
        .map_err(|error| format!("invalid URL: {error}"))?;
    let host = uri.authority().map_or("?", |a| a.as_str()).to_owned();
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "expected an http:// or https:// URL, found {}",
            request.url
        ));
    }
    let mut builder = Request::builder().method(request.method).uri(uri);
    if request.json {
        builder = builder.header("content-type", "application/json");
    }
    builder = builder.header("user-agent", concat!("teal/", env!("CARGO_PKG_VERSION")));
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let outgoing = builder
        .body(Full::new(Bytes::from(request.body.unwrap_or_default())))
        .map_err(|error| format!("{host}: invalid request: {error}"))?;
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<HttpsConnector<HttpConnector>, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let exchange = async {
        let response = client
            .request(outgoing)
            .await
            .map_err(|error| format!("{host}: {}", describe(&error)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|error| format!("{host}: reading the answer: {error}"))?
            .to_bytes();
        Ok(Answer { status, body })
    };
    match tokio::time::timeout(request.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{host}: no answer within {}s",
            request.timeout.as_secs_f64()
        )),
    }
}

/// The innermost cause, which says what actually went wrong ("Connection refused").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    if text == error.to_string() {
        text
    } else {
        format!("{error}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every connection with one plain HTTP response.
    async fn plain_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
                    .await;
            }
        });
        address
    }

    #[tokio::test]
    async fn http_answers_and_https_speaks_tls() {
        let address = plain_server().await;
        let url = format!("http://{address}/");
        let answer = send(Outgoing::get(&url, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"{\"ok\":true}");
        // The same server over https: a TLS handshake is tried, and fails on an answer
        // that is not TLS.
        let url = format!("https://{address}/");
        let error = send(Outgoing::get(&url, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(error.starts_with(&address.to_string()), "{error}");
        assert!(!error.contains("not supported"), "{error}");
        // Nothing listening: one sentence naming the host, not the path.
        drop(answer);
        let closed = crate::http_client::tests::closed_port().await;
        let url = format!("http://{closed}/secret-token");
        let error = send(Outgoing::get(&url, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(error.contains("refused"), "{error}");
        assert!(!error.contains("secret-token"), "{error}");
    }

    async fn closed_port() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }
}
