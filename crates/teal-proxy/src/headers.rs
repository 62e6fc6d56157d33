//! Header rewriting: hop-by-hop removal (both directions) and `X-Forwarded-*`.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{
    CONNECTION, HOST, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// `X-Forwarded-For`: the chain of client addresses.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the Host the client asked for.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// legacy ones clients still send. `Connection` itself is handled separately because
/// it also names further headers to drop.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
///
/// hyper frames the message itself (Content-Length or chunked) on each side, so
/// `Transfer-Encoding` from the other connection must not leak through.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collect first: the names live in the map we are about to mutate.
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    headers.remove(UPGRADE);
    headers.remove(TE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Adds `X-Forwarded-For` (the client appended to whatever a proxy in front of us
/// already put there), `X-Forwarded-Proto: http` and `X-Forwarded-Host` from `Host`.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    // Several X-Forwarded-For headers are one comma-separated list; join them so the
    // upstream sees a single, ordered chain.
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    let chain = if earlier.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    // Built from visible-ASCII header values and an IP address, so always a valid
    // value; the `if let` only keeps a panic out of the request path.
    if let Ok(chain) = HeaderValue::try_from(chain) {
        headers.insert(X_FORWARDED_FOR, chain);
    }

    // teal listens on plain HTTP only.
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    // teal is the edge: any X-Forwarded-Host the client sent is replaced by the Host
    // it actually asked us for.
    match headers.get(HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_listed_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        headers.insert(HOST, HeaderValue::from_static("shop.example"));
        add_forwarded(&mut headers, "10.0.0.1".parse().unwrap());
        assert_eq!(headers[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "shop.example");

        let mut headers = HeaderMap::new();
        add_forwarded(&mut headers, "::1".parse().unwrap());
        assert_eq!(headers[&X_FORWARDED_FOR], "::1");
        assert!(!headers.contains_key(&X_FORWARDED_HOST));
    }
}
