//! Header rewriting: hop-by-hop removal (both directions) and `X-Forwarded-*`.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::Entry;
use hyper::header::{
    CONNECTION, HOST, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// `X-Forwarded-For`: the chain of client addresses.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the Host the client asked for.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `Keep-Alive`: hop-by-hop (RFC 9112 appendix C.2.2); http has no constant for it.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`: a legacy hop-by-hop header some clients still send.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the hop-by-hop headers of a message said about its connection.
#[derive(Debug, Default)]
pub(crate) struct Hop {
    /// `Connection: close`: the sender will not use the connection again.
    pub(crate) close: bool,
    /// The `Upgrade` header, when `Connection` lists `upgrade`: the protocol the
    /// sender asks to switch to (request) or switches to (101 response).
    pub(crate) upgrade: Option<HeaderValue>,
    /// `TE` lists `trailers`: the client takes trailer fields (gRPC clients say so).
    pub(crate) trailers: bool,
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including every header named in
/// `Connection`, and says what they asked for.
///
/// hyper frames the message itself (Content-Length or chunked) on each side, so
/// `Transfer-Encoding` from the other connection must not leak through.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> Hop {
    let mut hop = Hop::default();
    // Most messages carry none of them: one pass over the names, no lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return hop;
    }
    // Most messages have no Connection header at all (HTTP/1.1 keeps alive by
    // default); only then is there anything to read.
    if headers.contains_key(CONNECTION) {
        let mut upgrade = false;
        // Collect first: the names live in the map we are about to mutate.
        let mut listed = Vec::new();
        for token in headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
        {
            if token.eq_ignore_ascii_case("close") {
                hop.close = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            } else if token.eq_ignore_ascii_case("keep-alive") || token.is_empty() {
                // Removed below in any case.
            } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
        for name in listed {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
        if upgrade {
            hop.upgrade = headers.remove(UPGRADE);
        }
    }
    headers.remove(UPGRADE);
    if let Some(te) = headers.remove(TE) {
        hop.trailers = te.to_str().is_ok_and(|te| {
            te.split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
        });
    }
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    hop
}

/// Who is at the other end of a client connection, as the forwarded headers say it;
/// made once per connection, not per request.
pub(crate) struct Peer {
    ip: IpAddr,
    /// `ip` as a header value, for the usual request that has no `X-Forwarded-For`.
    forwarded_for: HeaderValue,
    /// The client came over TLS.
    https: bool,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr, https: bool) -> Peer {
        Peer {
            ip,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::try_from(ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            https,
        }
    }
}

/// The hop-by-hop headers every message loses; any other one only when `Connection`
/// names it, and then `Connection` is there.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == UPGRADE
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Adds `X-Forwarded-For` (the client appended to whatever a proxy in front of us
/// already put there), `X-Forwarded-Proto` (`https` when the client came over TLS,
/// else `http`) and `X-Forwarded-Host` from `Host`.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, peer: &Peer) {
    let client = peer.ip;
    let https = peer.https;
    // One lookup for both the check and the insert.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(peer.forwarded_for.clone());
        }
        Entry::Occupied(mut entry) => {
            // Several X-Forwarded-For headers are one comma-separated list; join them
            // so the upstream sees a single, ordered chain.
            let earlier: Vec<&str> = entry
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
            // Built from visible-ASCII header values and an IP address, so always a
            // valid value; the `if let` only keeps a panic out of the request path.
            if let Ok(chain) = HeaderValue::try_from(chain) {
                entry.insert(chain);
            }
        }
    }

    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );

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

/// True when `Connection` lists `upgrade` and an `Upgrade` header says to what: the
/// client asks to switch protocols (RFC 9110 §7.8).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_listed_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, close"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let hop = strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
        assert!(hop.close);
        // Upgrade was not listed in Connection: dropped, not an upgrade.
        assert!(hop.upgrade.is_none());
    }

    #[test]
    fn upgrade_listed_in_connection_is_reported() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        assert!(wants_upgrade(&headers));
        let hop = strip_hop_by_hop(&mut headers);
        assert_eq!(hop.upgrade.unwrap(), "websocket");
        assert!(!hop.close);
        assert_eq!(headers.len(), 1, "{headers:?}");

        let mut plain = HeaderMap::new();
        plain.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&plain));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        headers.insert(HOST, HeaderValue::from_static("shop.example"));
        add_forwarded(&mut headers, &Peer::new("10.0.0.1".parse().unwrap(), false));
        assert_eq!(headers[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "shop.example");

        let mut headers = HeaderMap::new();
        add_forwarded(&mut headers, &Peer::new("::1".parse().unwrap(), true));
        assert_eq!(headers[&X_FORWARDED_FOR], "::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert!(!headers.contains_key(&X_FORWARDED_HOST));
    }
}
