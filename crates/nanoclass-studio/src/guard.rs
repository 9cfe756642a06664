//! Keeps the web pages a user visits from driving the studio (every refusal is 403 with
//! `{"error": ...}` saying what was refused and how to allow it):
//!
//! - **Host** (DNS rebinding): without an access token the studio answers only requests whose
//!   `Host` is `localhost` or a loopback address (any port: an `ssh -L` tunnel may use another
//!   one), or a name given in [`crate::StudioConfig::allowed_hosts`]. A page of another site
//!   whose name was made to resolve to 127.0.0.1 sends its own name and is refused. With a
//!   token every name is answered (other machines reach the studio by address, host name or
//!   mDNS name): such a page has no token, so it gets 401.
//! - **Other sites' requests** (cross-site request forgery, embedding): a browser request marked
//!   `Sec-Fetch-Site: cross-site` or `same-site` (another port of the same host is the same
//!   site) is refused, except a plain navigation to a page (a `GET` of a document, e.g. a link
//!   to the studio's URL). A request that changes something (any method but
//!   GET/HEAD/OPTIONS/TRACE) whose `Origin` is not the studio's own (the `Host` it was sent to,
//!   or an allowed name) is refused too, for browsers without `Sec-Fetch-*`; `Origin: null`
//!   (sandboxed pages, redirects across sites) is never the studio's.
//! - Requests with neither header (curl, scripts, the CLI) pass: browsers send `Origin` with
//!   every cross-origin POST, PUT, PATCH and DELETE, so only non-browser clients omit both.
//! - Every answer forbids framing (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`), so
//!   another site cannot overlay the page to steer the user's clicks.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// A name requests may use besides the loopback ones: `host` (lower case, IPv6 in brackets),
/// any port when `port` is None.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
}

/// The request checks of one studio (see the module documentation).
#[derive(Debug, Clone)]
pub struct Guard {
    check_host: bool,
    allowed: Arc<[AllowedHost]>,
}

/// Splits `host[:port]` (the form of `Host`, and of an origin's authority) into the lower-case
/// host, without a trailing dot, and the port; None when it is not of that form (user info
/// such as `a@b` is not accepted).
fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    let a: Authority = s.parse().ok()?;
    if a.as_str().contains('@') || a.host().is_empty() {
        return None;
    }
    let host = a.host().trim_end_matches('.').to_ascii_lowercase();
    Some((host, a.port_u16()))
}

/// `localhost` or a loopback address (`127.0.0.0/8`, `[::1]`).
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `Host` a request was sent to: the header, or the URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<Result<(String, Option<u16>), String>> {
    let raw = match req.headers().get(header::HOST) {
        Some(v) => v.to_str().map(str::to_string).unwrap_or_default(),
        None => req.uri().authority()?.to_string(),
    };
    Some(split_authority(&raw).ok_or(raw))
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The default port of an origin's scheme.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl Guard {
    /// The checks for a studio that requires an access token (`token_required`: every `Host`
    /// is answered) or not (only loopback names and `allowed_hosts`). Each allowed host is a
    /// name or address, optionally with `:port` (without: any port).
    ///
    /// # Errors
    /// An allowed host that is not `name`, `name:port`, `address` or `[ipv6]:port`.
    pub fn new(token_required: bool, allowed_hosts: &[String]) -> Result<Guard, String> {
        let allowed = allowed_hosts
            .iter()
            .map(|s| {
                split_authority(s.trim())
                    .map(|(host, port)| AllowedHost { host, port })
                    .ok_or_else(|| {
                        format!(
                            "allowed host {s:?}: not a host name or address, with an optional \
                             :port (e.g. studio.lan or studio.lan:8443)"
                        )
                    })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Guard {
            check_host: !token_required,
            allowed: allowed.into(),
        })
    }

    fn listed(&self, host: &str, port: Option<u16>) -> bool {
        self.allowed
            .iter()
            .any(|a| a.host == host && (a.port.is_none() || a.port == port))
    }

    /// Whether `origin` (an `Origin` header value) is the studio's own: the `Host` the request
    /// was sent to (`own`), or an allowed name.
    fn same_origin(&self, origin: &str, own: Option<&(String, Option<u16>)>) -> bool {
        let Ok(uri) = origin.parse::<Uri>() else {
            return false;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        let Some((host, port)) = split_authority(authority.as_str()) else {
            return false;
        };
        let port = port.or(default_port(scheme));
        own.is_some_and(|(h, p)| *h == host && p.or(default_port(scheme)) == port)
            || self.listed(&host, port)
    }

    /// Checks one request; the refusal to answer otherwise.
    fn check(&self, req: &Request) -> Result<(), ApiError> {
        let host = match request_host(req) {
            Some(Ok(h)) => Some(h),
            Some(Err(raw)) => {
                return Err(ApiError::bad_request(format!(
                    "Host {raw:?} is not a host name or address with an optional port"
                )));
            }
            None => None,
        };
        if self.check_host
            && let Some((name, port)) = &host
            && !is_loopback_host(name)
            && !self.listed(name, *port)
        {
            let at = port.map(|p| format!(":{p}")).unwrap_or_default();
            return Err(ApiError::forbidden(format!(
                "this studio answers only at localhost and loopback addresses, not at \
                 Host {:?}: open http://localhost{at}/ instead, or, if that name is meant to \
                 reach it (a reverse proxy, a name in /etc/hosts), start it with \
                 --allowed-host {name:?}",
                format!("{name}{at}")
            )));
        }
        let h = req.headers();
        let method = req.method();
        if let Some(site) = header_str(h, "sec-fetch-site")
            && site != "same-origin"
            && site != "none"
        {
            let navigation = method.is_safe()
                && header_str(h, "sec-fetch-mode") == Some("navigate")
                && header_str(h, "sec-fetch-dest").is_none_or(|d| d == "document");
            if !navigation {
                return Err(ApiError::forbidden(format!(
                    "refused a {method} request from another web site (Sec-Fetch-Site {site:?}): \
                     the studio answers only its own page and clients that are not browsers \
                     (curl, scripts)"
                )));
            }
        }
        if !method.is_safe()
            && let Some(origin) = h.get(header::ORIGIN)
        {
            let origin = origin.to_str().unwrap_or("");
            if !self.same_origin(origin, host.as_ref()) {
                return Err(ApiError::forbidden(format!(
                    "refused a {method} request from another web site (Origin {origin:?}): the \
                     studio accepts changes only from its own page; if a reverse proxy serves it \
                     under another name, start it with --allowed-host NAME"
                )));
            }
        }
        Ok(())
    }
}

/// Middleware: answers 403 (or 400 for a `Host` that is not a host) to a refused request,
/// and forbids framing on every answer.
pub async fn guard(g: Guard, req: Request, next: Next) -> Response {
    if let Err(e) = g.check(&req) {
        let mut resp = e.into_response();
        no_framing(&mut resp);
        return resp;
    }
    let mut resp = next.run(req).await;
    no_framing(&mut resp);
    resp
}

fn no_framing(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_and_loopback_names_known() {
        assert_eq!(
            split_authority("LocalHost.:8080"),
            Some(("localhost".into(), Some(8080)))
        );
        assert_eq!(split_authority("[::1]:9"), Some(("[::1]".into(), Some(9))));
        assert_eq!(
            split_authority("studio.lan"),
            Some(("studio.lan".into(), None))
        );
        assert_eq!(split_authority("a@b:1"), None);
        assert_eq!(split_authority("a b"), None);
        for h in ["localhost", "127.0.0.1", "127.1.2.3", "[::1]"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "evil.example",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn origins_compare_with_default_ports_and_allowed_names() {
        let g = Guard::new(false, &["studio.lan".into(), "proxy.lan:8443".into()]).unwrap();
        let own = ("127.0.0.1".to_string(), Some(8080));
        assert!(g.same_origin("http://127.0.0.1:8080", Some(&own)));
        assert!(!g.same_origin("http://127.0.0.1:8081", Some(&own)));
        assert!(!g.same_origin("http://localhost:8080", Some(&own)));
        assert!(!g.same_origin("null", Some(&own)));
        assert!(!g.same_origin("http://127.0.0.1:8080", None));
        let plain = ("example.org".to_string(), None);
        assert!(g.same_origin("https://example.org", Some(&plain)));
        assert!(g.same_origin("http://example.org:80", Some(&plain)));
        assert!(!g.same_origin("https://example.org:8443", Some(&plain)));
        assert!(g.same_origin("https://studio.lan", None));
        assert!(g.same_origin("https://proxy.lan:8443", None));
        assert!(!g.same_origin("https://proxy.lan", None));
        assert!(Guard::new(false, &["http://x/".into()]).is_err());
    }
}
