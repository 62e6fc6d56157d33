//! Which backend one request goes to. Pure functions over a [`RouteTable`] snapshot.

use hyper::HeaderMap;
use hyper::header::{COOKIE, HeaderName};
use teal_core::spec::{NameValue, PreviewMatch};

use crate::{Backend, Role, RouteTable};

/// The route a request ended up on, named in 503 bodies and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Active,
    Preview,
}

impl Route {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Active => "active",
            Route::Preview => "preview",
        }
    }
}

/// Picks the route and backend for one request.
///
/// The backend may be None (nothing deployed yet) or have no instances; the caller
/// answers 503 in both cases.
pub(crate) fn choose<'t>(
    table: &'t RouteTable,
    role: Role,
    headers: &HeaderMap,
) -> (Route, Option<&'t Backend>) {
    match role {
        Role::Active => match &table.preview {
            Some(preview) if matches_preview(&table.preview_match, headers) => {
                (Route::Preview, Some(preview))
            }
            _ => (Route::Active, table.active.as_ref()),
        },
        // Between releases the preview listener shows what users see, like Argo's
        // preview Service pointing at the stable ReplicaSet.
        Role::Preview => match &table.preview {
            Some(preview) => (Route::Preview, Some(preview)),
            None => (Route::Active, table.active.as_ref()),
        },
    }
}

/// True when the request carries the preview cookie or the preview header (either is
/// enough). An empty [`PreviewMatch`] matches nothing.
pub(crate) fn matches_preview(rule: &PreviewMatch, headers: &HeaderMap) -> bool {
    let cookie = rule
        .cookie
        .as_ref()
        .is_some_and(|want| has_cookie(headers, want));
    let header = rule
        .header
        .as_ref()
        .is_some_and(|want| has_header(headers, want));
    cookie || header
}

/// Looks through every `Cookie` header (HTTP/1.1 clients send one, but proxies in
/// front of us may have split them) for `name=value`.
fn has_cookie(headers: &HeaderMap, want: &NameValue) -> bool {
    headers
        .get_all(COOKIE)
        .iter()
        // A cookie header that is not visible ASCII cannot hold our pair; skip it
        // rather than failing the request.
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .any(|(name, value)| name.trim() == want.name && unquote(value.trim()) == want.value)
}

/// RFC 6265 allows a cookie value in double quotes; the quotes are not part of it.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
}

/// Header names compare case-insensitively (HeaderName lowercases them); the value
/// must match exactly.
fn has_header(headers: &HeaderMap, want: &NameValue) -> bool {
    let Ok(name) = HeaderName::from_bytes(want.name.as_bytes()) else {
        // The spec validator should have refused it; a name that cannot be a header
        // simply never matches.
        return false;
    };
    headers
        .get_all(name)
        .iter()
        .any(|value| value.as_bytes() == want.value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use teal_core::Color;

    fn nv(name: &str, value: &str) -> NameValue {
        NameValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn backend(color: Color) -> Backend {
        Backend {
            color,
            revision: 1,
            instances: vec!["127.0.0.1:1".parse().unwrap()],
        }
    }

    #[test]
    fn cookie_is_found_among_others_and_in_any_header() {
        let rule = PreviewMatch {
            cookie: Some(nv("test", "true")),
            header: None,
        };
        assert!(matches_preview(
            &rule,
            &headers(&[("cookie", "a=b; test=true; c=d")])
        ));
        assert!(matches_preview(
            &rule,
            &headers(&[("cookie", "a=b"), ("cookie", "test=\"true\"")])
        ));
        assert!(!matches_preview(
            &rule,
            &headers(&[("cookie", "test=false")])
        ));
        assert!(!matches_preview(
            &rule,
            &headers(&[("cookie", "xtest=true")])
        ));
        assert!(!matches_preview(&rule, &headers(&[("cookie", "test")])));
        // The header rule is not configured, so a header of that name does nothing.
        assert!(!matches_preview(&rule, &headers(&[("test", "true")])));
    }

    #[test]
    fn header_name_is_case_insensitive_and_value_exact() {
        let rule = PreviewMatch {
            cookie: None,
            header: Some(nv("X-Preview", "yes")),
        };
        assert!(matches_preview(&rule, &headers(&[("x-preview", "yes")])));
        assert!(!matches_preview(&rule, &headers(&[("x-preview", "Yes")])));
        assert!(!matches_preview(&rule, &headers(&[])));
        assert!(!matches_preview(&PreviewMatch::default(), &headers(&[])));
    }

    #[test]
    fn preview_listener_falls_back_to_active() {
        let table = RouteTable {
            active: Some(backend(Color::Blue)),
            preview: None,
            preview_match: PreviewMatch::default(),
        };
        let (route, chosen) = choose(&table, Role::Preview, &HeaderMap::new());
        assert_eq!(route, Route::Active);
        assert_eq!(chosen.map(|b| b.color), Some(Color::Blue));
    }

    #[test]
    fn matching_request_without_preview_backend_stays_active() {
        let table = RouteTable {
            active: Some(backend(Color::Blue)),
            preview: None,
            preview_match: PreviewMatch {
                cookie: None,
                header: Some(nv("x-preview", "1")),
            },
        };
        let (route, chosen) = choose(&table, Role::Active, &headers(&[("x-preview", "1")]));
        assert_eq!(route, Route::Active);
        assert_eq!(chosen.map(|b| b.color), Some(Color::Blue));
    }
}
