//! Who may do what (docs/security.md): credentials with scopes, and the guard every HTTP request
//! and WebSocket handshake passes before its handler runs.
//!
//! The guard answers, in this order:
//! 1. **Host** (DNS rebinding): on a loopback listen address, a `Host` that is not a loopback name
//!    or address (and not in `--allow-host`) is refused with 403. A page on `evil.example` whose
//!    name was made to resolve to 127.0.0.1 sends `Host: evil.example`.
//! 2. **Origin** (cross-site requests and WebSocket hijacking): a request whose `Origin` is not the
//!    server's own (`http(s)://` + its `Host`) and not in `--allow-origin`, or that a browser marks
//!    `Sec-Fetch-Site: cross-site`, is refused with 403, whatever its method or content type.
//!    A cross-site top-level navigation (a link to the console) is let through: it changes nothing
//!    and the linking page cannot read the answer. curl, agents, psql and Grafana's server send no
//!    Origin and are unaffected.
//! 3. **Credential**: `Authorization: Bearer TOKEN` (or Basic with the token as password) names a
//!    scope. With no credential configured at all, everyone is `admin` (the loopback default);
//!    otherwise an anonymous request has no scope, or `read` with `--read-open`. The endpoint's
//!    scope must be allowed by the caller's (401 without a credential, 403 with too small a
//!    one). `POST /v1/sql` checks each statement's scope in its handler, before any runs.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tocsin_sql::Access;

use crate::metrics::Refusal;
use crate::state::AppRef;

/// A PostgreSQL user: its name, role and password (kept only as SCRAM material by the pg side).
#[derive(Clone)]
pub struct PgUser {
    pub name: String,
    pub role: Access,
    pub password: String,
}

impl std::fmt::Debug for PgUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUser({}, {})", self.name, self.role.as_str())
    }
}

impl PgUser {
    /// `NAME:ROLE:PASSWORD` (the password may contain `:`), as `--pg-user` takes it.
    pub fn parse(text: &str) -> Result<PgUser, String> {
        let mut parts = text.splitn(3, ':');
        let (Some(name), Some(role), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(
                "a pg user is NAME:ROLE:PASSWORD, with ROLE one of admin, write, read".into(),
            );
        };
        if name.is_empty() || password.is_empty() {
            return Err("a pg user needs a name and a password (NAME:ROLE:PASSWORD)".into());
        }
        Ok(PgUser {
            name: name.to_string(),
            role: scope(role)?,
            password: password.to_string(),
        })
    }
}

/// A scope by name.
pub fn scope(name: &str) -> Result<Access, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "admin" => Ok(Access::Admin),
        "write" => Ok(Access::Write),
        "read" => Ok(Access::Read),
        other => Err(format!("unknown scope '{other}': use admin, write or read")),
    }
}

/// Every credential the server accepts.
#[derive(Clone, Default)]
pub struct Credentials {
    /// HTTP bearer tokens and their scopes.
    pub tokens: Vec<(String, Access)>,
    /// PostgreSQL users.
    pub pg_users: Vec<PgUser>,
    /// `--pg-password`: the password of any other pg user name, with the admin role.
    pub pg_password: Option<String>,
    /// `--read-open`: reads need no credential even when credentials are configured.
    pub read_open: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tokens", &self.tokens.len())
            .field("pg_users", &self.pg_users)
            .field("pg_password", &self.pg_password.is_some())
            .field("read_open", &self.read_open)
            .finish()
    }
}

impl Credentials {
    /// Whether any credential is configured.
    pub fn any(&self) -> bool {
        !self.tokens.is_empty() || !self.pg_users.is_empty() || self.pg_password.is_some()
    }

    /// The scope of a caller without a credential: everything when none is configured, reads
    /// with `--read-open`, else nothing.
    pub fn anonymous(&self) -> Option<Access> {
        if !self.any() {
            Some(Access::Admin)
        } else if self.read_open {
            Some(Access::Read)
        } else {
            None
        }
    }

    /// The scope of a bearer token, compared in constant time.
    pub fn token(&self, given: &str) -> Option<Access> {
        let mut found = None;
        for (t, s) in &self.tokens {
            if constant_time_eq(t.as_bytes(), given.as_bytes()) {
                found = Some(found.map_or(*s, |f: Access| f.max(*s)));
            }
        }
        found
    }

    /// The role of a pg user name: its own entry, else admin when `--pg-password` covers every
    /// other name. (The passwords themselves go only into the pg side's SCRAM secrets.)
    pub fn pg_role(&self, name: &str) -> Option<Access> {
        self.pg_users
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.role)
            .or_else(|| self.pg_password.as_ref().map(|_| Access::Admin))
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request's caller may do, for handlers that check more than the endpoint (`/v1/sql`).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub scope: Access,
    /// No credential was presented: a refusal asks for one (401) rather than forbids (403).
    pub anonymous: bool,
}

/// The scope an endpoint needs; `None`: checked by its handler (any caller may ask).
fn endpoint_scope(method: &Method, path: &str) -> Option<Access> {
    if path == "/v1/sql" && method == Method::POST {
        // Each statement's scope is checked by the handler.
        return None;
    }
    if path.starts_with("/v1/ingest/") || crate::writes::PATHS.contains(&path) {
        return Some(Access::Write);
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        Some(Access::Read)
    } else {
        Some(Access::Admin)
    }
}

/// Options of the browser checks.
#[derive(Clone, Debug, Default)]
pub struct BrowserPolicy {
    /// The listen address is loopback: `Host` must name a loopback host.
    pub loopback: bool,
    /// `--allow-origin`: origins (`https://grafana.example:3000`) allowed besides the server's
    /// own; `*` allows every origin.
    pub allow_origin: Vec<String>,
    /// `--allow-host`: host names allowed besides loopback ones on a loopback address.
    pub allow_host: Vec<String>,
}

/// The host part of a `Host` header value (`[::1]:7654` → `::1`, `a.example:80` → `a.example`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

impl BrowserPolicy {
    /// Whether a `Host` header is acceptable for a request from `peer` (`None`: unknown). The
    /// check applies on a loopback listen address, and to loopback peers on any address: a
    /// browser on the server's own machine is the one DNS rebinding turns against it.
    pub fn host_allowed(&self, host: Option<&str>, peer: Option<IpAddr>) -> bool {
        let Some(host) = host else {
            // HTTP/1.0 clients send none; browsers always do.
            return true;
        };
        if !self.loopback && !peer.is_some_and(crate::limits::is_loopback) {
            return true;
        }
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<IpAddr>().is_ok_and(crate::limits::is_loopback)
            || self
                .allow_host
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&name) || a.eq_ignore_ascii_case(host))
    }

    /// Whether a request's `Origin` and `Sec-Fetch-Site` allow it.
    pub fn origin_allowed(&self, method: &Method, headers: &HeaderMap) -> bool {
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        let host = get("host");
        if let Some(origin) = get("origin") {
            let origin = origin.trim();
            if self.listed(origin) {
                return true;
            }
            let own = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| host.is_some_and(|h| o.eq_ignore_ascii_case(h)));
            return own;
        }
        match get("sec-fetch-site") {
            Some(site) if site.eq_ignore_ascii_case("cross-site") => {
                // A link followed from another site: it reads nothing the page could see.
                matches!(*method, Method::GET | Method::HEAD)
                    && get("sec-fetch-mode").is_some_and(|m| m.eq_ignore_ascii_case("navigate"))
            }
            _ => true,
        }
    }

    /// The `Origin` of a request from a page `--allow-origin` lists (not the server's own), to
    /// answer with CORS headers so that the page may read the responses.
    pub fn cors_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.listed(origin.to_str().ok()?.trim())
            .then(|| origin.clone())
    }

    fn listed(&self, origin: &str) -> bool {
        self.allow_origin
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The token a request carries: `Authorization: Bearer TOKEN`, or Basic with the token as the
/// password (what Grafana's and Prometheus's basic-auth settings send), or, on a WebSocket
/// handshake, which a browser cannot give headers, a `Sec-WebSocket-Protocol` value
/// `bearer.BASE64URL(TOKEN)` (see [`crate::ws::PROTOCOL`]).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix("bearer."))
            .and_then(base64_decode)
            .and_then(|t| String::from_utf8(t).ok());
    };
    let value = value.to_str().ok()?.trim();
    let (kind, rest) = value.split_once(' ')?;
    // `Token` is how InfluxDB clients and Telegraf send theirs.
    if kind.eq_ignore_ascii_case("bearer") || kind.eq_ignore_ascii_case("token") {
        return Some(rest.trim().to_string());
    }
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest.trim())?;
        let text = String::from_utf8(decoded).ok()?;
        return Some(
            text.split_once(':')
                .map_or(text.clone(), |(_, p)| p.to_string()),
        );
    }
    None
}

/// Base64, standard or URL-safe (with or without padding).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn refuse(app: &AppRef, status: StatusCode, reason: Refusal, message: String) -> Response {
    app.metrics.refused(reason);
    let mut r = crate::json::error(status, message);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The guard in front of every HTTP request (see the module header).
pub async fn guard(State(app): State<AppRef>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    // An absolute request target (`GET http://name/ HTTP/1.1`) names the host when Host is
    // missing.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let peer = req
        .extensions()
        .get::<crate::limits::Conn>()
        .map(|c| c.peer.ip());
    if !app.browser.host_allowed(host, peer) {
        return refuse(
            &app,
            StatusCode::FORBIDDEN,
            Refusal::Host,
            format!(
                "Host '{}' is not a loopback name: tocsin listens on loopback and answers only to localhost, 127.0.0.1 and ::1 (a foreign name here is how DNS rebinding reaches it; add the name with --allow-host if it is yours)",
                host.unwrap_or_default()
            ),
        );
    }
    if !app.browser.origin_allowed(req.method(), headers) {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("a cross-site page");
        return refuse(
            &app,
            StatusCode::FORBIDDEN,
            Refusal::Origin,
            format!(
                "requests from {origin} are refused: a web page of another origin may not use tocsin's API (allow it with --allow-origin)"
            ),
        );
    }
    let cors = app.browser.cors_origin(headers);
    if let Some(origin) = &cors {
        // A CORS preflight carries no credential: answer it before asking for one.
        if req.method() == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, content-encoding"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            return r;
        }
    }
    // With no credential configured everyone is admin, and a token is not checked: InfluxDB
    // and OpenTelemetry clients send one they were configured with whatever the server.
    let presented = presented_token(headers).filter(|_| app.credentials.any());
    let caller =
        match presented {
            Some(t) => match app.credentials.token(&t) {
                Some(scope) => Some(Caller {
                    scope,
                    anonymous: false,
                }),
                None => return refuse(
                    &app,
                    StatusCode::UNAUTHORIZED,
                    Refusal::Unauthenticated,
                    "the token is not valid here: see --admin-token, --write-token, --read-token"
                        .into(),
                ),
            },
            None => app.credentials.anonymous().map(|scope| Caller {
                scope,
                anonymous: true,
            }),
        };
    let path = req.uri().path();
    // A replica link presents the cluster secret, which its handler checks.
    if path != "/healthz"
        && path != "/readyz"
        && path != crate::cluster::proto::PATH
        && !crate::console::is_console(path)
    {
        let need = endpoint_scope(req.method(), path);
        match caller {
            Some(c) if need.is_none_or(|n| c.scope.allows(n)) => {}
            Some(c) if !c.anonymous => {
                let need = need.unwrap_or(Access::Read);
                return refuse(
                    &app,
                    StatusCode::FORBIDDEN,
                    Refusal::Forbidden,
                    format!(
                        "a {} credential may not do this: it needs scope {}",
                        c.scope.as_str(),
                        need.as_str()
                    ),
                );
            }
            _ => {
                return refuse(
                    &app,
                    StatusCode::UNAUTHORIZED,
                    Refusal::Unauthenticated,
                    format!(
                        "this request needs a token: Authorization: Bearer TOKEN with scope {}",
                        need.unwrap_or(Access::Read).as_str()
                    ),
                )
            }
        }
    }
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
    }
    let mut response = next.run(req).await;
    if let Some(origin) = cors {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The scope each statement of a request needs, for `POST /v1/sql` and the pg handlers: the
/// first statement the caller may not run, as (index, needed scope).
pub fn first_denied(have: Access, statements: &[tocsin_sql::Located]) -> Option<(usize, Access)> {
    statements
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.statement.access()))
        .find(|(_, need)| !have.allows(*need))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hosts_on_loopback() {
        let p = BrowserPolicy {
            loopback: true,
            allow_host: vec!["tocsin.internal".into()],
            ..Default::default()
        };
        for ok in [
            "127.0.0.1:7654",
            "localhost:7654",
            "LOCALHOST",
            "[::1]:7654",
            "127.1.2.3",
            "app.localhost:7654",
            "tocsin.internal:7654",
        ] {
            assert!(p.host_allowed(Some(ok), None), "{ok}");
        }
        for bad in [
            "evil.example:7654",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1:7654",
            "[::2]:7654",
        ] {
            assert!(!p.host_allowed(Some(bad), None), "{bad}");
        }
        // On 0.0.0.0: a browser on this machine is held to the check, other machines are not.
        let open = BrowserPolicy::default();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(open.host_allowed(Some("evil.example"), Some(remote)));
        assert!(!open.host_allowed(Some("evil.example"), Some(local)));
        assert!(!open.host_allowed(Some("evil.example"), Some(mapped)));
        assert!(open.host_allowed(Some("localhost:7654"), Some(local)));
        assert!(p.host_allowed(Some("[::ffff:127.0.0.1]:7654"), None));
    }

    #[test]
    fn origins() {
        let p = BrowserPolicy {
            loopback: true,
            allow_origin: vec!["https://grafana.example:3000/".into()],
            ..Default::default()
        };
        let post = Method::POST;
        assert!(p.origin_allowed(&post, &headers(&[("host", "127.0.0.1:7654")])));
        assert!(p.origin_allowed(
            &post,
            &headers(&[
                ("host", "127.0.0.1:7654"),
                ("origin", "http://127.0.0.1:7654")
            ])
        ));
        assert!(p.origin_allowed(
            &post,
            &headers(&[
                ("host", "127.0.0.1:7654"),
                ("origin", "https://grafana.example:3000")
            ])
        ));
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:7655",
            "http://localhost:7654",
            "file://",
        ] {
            assert!(
                !p.origin_allowed(
                    &post,
                    &headers(&[("host", "127.0.0.1:7654"), ("origin", origin)])
                ),
                "{origin}"
            );
        }
        let cross = headers(&[("host", "127.0.0.1:7654"), ("sec-fetch-site", "cross-site")]);
        assert!(!p.origin_allowed(&post, &cross));
        assert!(!p.origin_allowed(&Method::GET, &cross));
        let mut nav = cross.clone();
        nav.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert!(p.origin_allowed(&Method::GET, &nav));
        assert!(!p.origin_allowed(&post, &nav));
    }

    #[test]
    fn tokens_and_users() {
        let c = Credentials {
            tokens: vec![
                ("a-secret".into(), Access::Admin),
                ("w-secret".into(), Access::Write),
                ("r-secret".into(), Access::Read),
            ],
            ..Default::default()
        };
        assert_eq!(c.token("a-secret"), Some(Access::Admin));
        assert_eq!(c.token("w-secret"), Some(Access::Write));
        assert_eq!(c.token("r-secret"), Some(Access::Read));
        assert_eq!(c.token("r-secre"), None);
        assert_eq!(c.token(""), None);
        assert_eq!(c.anonymous(), None);
        assert_eq!(Credentials::default().anonymous(), Some(Access::Admin));
        let open = Credentials {
            read_open: true,
            ..c.clone()
        };
        assert_eq!(open.anonymous(), Some(Access::Read));
        let u = PgUser::parse("grafana:read:pa:ss").unwrap();
        assert_eq!(
            (u.name.as_str(), u.role, u.password.as_str()),
            ("grafana", Access::Read, "pa:ss")
        );
        assert!(PgUser::parse("grafana:reader:x").is_err());
        assert!(PgUser::parse("grafana:read").is_err());
        assert!(!format!("{u:?}").contains("pa:ss"));
        let mut h = HeaderMap::new();
        // "grafana:r-secret"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z3JhZmFuYTpyLXNlY3JldA=="),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("r-secret"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  w-secret "),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("w-secret"));
    }
}
