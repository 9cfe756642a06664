//! nanoclass studio: a web page to collect images per category, train a model and watch its
//! live scores, served by the `nanoclass` binary (`nanoclass studio`).
//!
//! - [`app`] builds the router (the page and the JSON API; endpoints in docs/studio.md);
//!   [`serve`] binds and runs it; [`start`] runs it in the background (tests).
//! - Data lives in one folder ([`store`]): an ImageFolder dataset per task, readable by
//!   `nanoclass train`, and one run directory per training.
//! - Training runs on its own thread ([`training`]); live scoring uses
//!   [`nanoclass::live::Live`] ([`live`]); the device camera is shared by every page
//!   ([`source`]).
//! - Bound to a non-loopback address the server requires an access token ([`auth`]).
//! - Other web sites cannot drive it: the `Host` and cross-origin checks of [`guard`].
//! - Every error answer is `{"error": "..."}` ([`error`]; the handlers' extractors in
//!   [`extract`] word axum's rejections for the page).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post, put};

pub mod api;
pub mod error;
pub mod extract;
pub mod guard;
pub mod instant;
pub mod live;
pub mod source;
pub mod store;
pub mod training;

use source::SourceHub;
use store::Store;

/// Default upload limit per request: 25 MiB (a full-size phone photo is 3-12 MB).
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;

/// Name of the cookie that carries the access token after the first visit.
pub const TOKEN_COOKIE: &str = "nanoclass_token";

/// What the studio serves.
#[derive(Debug, Clone)]
pub struct StudioConfig {
    /// The data folder (tasks, datasets, runs); created when missing.
    pub data: PathBuf,
    /// Device camera URI opened at start (see [`nanoclass::camera::open`]).
    pub source: Option<String>,
    /// Access token required on every request; None: no check.
    pub token: Option<String>,
    /// Host names (or addresses), each optionally with `:port`, that requests may be sent to
    /// besides `localhost` and the loopback addresses when there is no token (a reverse
    /// proxy's name, a name in /etc/hosts); also accepted as the `Origin` of changes. See
    /// [`guard`].
    pub allowed_hosts: Vec<String>,
    /// Largest request body (uploads, frames), in bytes; larger ones get 413.
    pub max_upload_bytes: usize,
    /// Frozen-feature cache for training (None: not cached).
    pub feature_cache: Option<PathBuf>,
    /// Weights of the instant preview's backbone (EfficientNet-Lite0; a registry name or a
    /// file); None turns the preview off.
    pub instant_weights: Option<String>,
}

impl StudioConfig {
    /// Defaults for `data`: no source, no token, [`DEFAULT_MAX_UPLOAD_BYTES`], the default
    /// feature cache.
    pub fn new(data: impl Into<PathBuf>) -> StudioConfig {
        StudioConfig {
            data: data.into(),
            source: None,
            token: None,
            allowed_hosts: Vec::new(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            feature_cache: nanoclass::infer::cache::default_dir(),
            instant_weights: Some(instant::ARCH.name().to_string()),
        }
    }
}

/// Shared server state (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    token: Option<String>,
    guard: guard::Guard,
    max_upload: usize,
    feature_cache: Option<PathBuf>,
    source: Arc<SourceHub>,
    trainer: training::Trainer,
    models: live::ModelCache,
    instant: Option<instant::InstantHub>,
}

impl AppState {
    /// Opens the data folder and the device source.
    ///
    /// # Errors
    /// The data folder cannot be created, the source cannot be opened (the camera's message:
    /// device missing, not a capture device, ...), or an allowed host is not a host name.
    pub fn new(config: StudioConfig) -> Result<AppState, String> {
        let guard = guard::Guard::new(config.token.is_some(), &config.allowed_hosts)?;
        let store = Store::open(&config.data)
            .map_err(|e| format!("data folder {}: {e}", config.data.display()))?;
        let instant = config
            .instant_weights
            .clone()
            .map(|w| instant::InstantHub::new(w, config.feature_cache.clone()));
        let source = SourceHub::new();
        if let Some(uri) = &config.source {
            source.set_source(uri)?;
        }
        Ok(AppState {
            inner: Arc::new(Inner {
                store,
                token: config.token,
                guard,
                max_upload: config.max_upload_bytes,
                feature_cache: config.feature_cache,
                source,
                trainer: training::Trainer::default(),
                models: live::ModelCache::default(),
                instant,
            }),
        })
    }

    /// The data folder.
    pub fn data_dir(&self) -> &std::path::Path {
        self.inner.store.root()
    }
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
/// The page's JavaScript modules, served under `/js/` and imported by `app.js` (plain ES
/// modules, no build step).
const MODULES: [(&str, &str); 6] = [
    ("api.js", include_str!("../assets/js/api.js")),
    ("state.js", include_str!("../assets/js/state.js")),
    ("camera.js", include_str!("../assets/js/camera.js")),
    ("collect.js", include_str!("../assets/js/collect.js")),
    ("train.js", include_str!("../assets/js/train.js")),
    ("live.js", include_str!("../assets/js/live.js")),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Every route: its path (axum's syntax: `{task}` is a parameter) and its handlers.
fn routes() -> Vec<(String, MethodRouter<AppState>)> {
    use api::*;
    let task = "/api/tasks/{task}";
    let cat = "/api/tasks/{task}/categories/{category}";
    let img = "/api/tasks/{task}/categories/{category}/images/{image}";
    let run = "/api/tasks/{task}/runs/{run}";
    let modules = MODULES.iter().map(|&(name, body)| {
        let handlers: MethodRouter<AppState> =
            get(move || async move { asset("text/javascript; charset=utf-8", body) });
        (format!("/js/{name}"), handlers)
    });
    let mut routes: Vec<(String, MethodRouter<AppState>)> = vec![
        (
            "/".into(),
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        ),
        (
            "/app.js".into(),
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        ),
        (
            "/style.css".into(),
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        ),
        ("/api/info".into(), get(info)),
        ("/api/tasks".into(), get(list_tasks).post(create_task)),
        (task.into(), get(get_task).delete(delete_task)),
        (format!("{task}/categories"), post(add_category)),
        (cat.into(), patch(rename_category).delete(delete_category)),
        (
            format!("{cat}/images"),
            get(list_images).post(upload_images),
        ),
        (img.into(), get(get_image).delete(delete_image)),
        (format!("{img}/thumb"), get(get_thumb)),
        (format!("{img}/point"), put(move_point)),
        (format!("{cat}/points"), post(save_point)),
        (format!("{cat}/capture"), post(capture)),
        (format!("{cat}/import"), post(import_folder)),
        (
            format!("{task}/train"),
            get(training_status).post(start_training),
        ),
        (format!("{task}/train/stop"), post(stop_training)),
        (format!("{task}/train/estimate"), post(estimate_training)),
        (format!("{task}/train/events"), get(training_events)),
        (format!("{task}/runs"), get(list_runs)),
        (run.into(), get(get_run)),
        (format!("{run}/predict"), post(predict)),
        (format!("{run}/live"), get(live_stream)),
        (format!("{run}/export"), get(export_run)),
        (format!("{task}/instant"), get(instant_status)),
        (format!("{task}/instant/predict"), post(instant_predict)),
        (format!("{task}/instant/live"), get(instant_live)),
        (format!("{task}/instant/uncertain"), get(instant_uncertain)),
        (format!("{task}/instant/frames/{{id}}"), get(instant_frame)),
        (
            format!("{task}/instant/frames/{{id}}/file"),
            post(instant_file_frame),
        ),
        ("/api/source".into(), get(source_status).put(set_source)),
        ("/api/source/frame".into(), get(source_frame)),
        ("/api/source/stream".into(), get(source_stream)),
    ];
    routes.extend(modules);
    routes
}

/// The path of every route [`app`] serves, in axum's syntax (`/api/tasks/{task}`, ...): for
/// tests that walk them all, so that a new route is not left out.
pub fn route_paths() -> Vec<String> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// The studio's router: the page (`/`, `/app.js` and the modules it imports under `/js/`,
/// `/style.css`) and the JSON API under `/api`.
///
/// Layers, outermost first: every error answer made JSON ([`error::json_errors`]), the
/// `Host` and cross-origin checks ([`guard::guard`]), the access token ([`auth`]), the body
/// limit.
pub fn app(state: AppState) -> Router {
    let limit = state.inner.max_upload;
    let g = state.inner.guard.clone();
    let router = routes()
        .into_iter()
        .fold(Router::new(), |r, (path, handlers)| {
            r.route(&path, handlers)
        })
        .fallback(|uri: axum::http::Uri| async move {
            error::ApiError::not_found(format!("no such page or API endpoint: {:?}", uri.path()))
                .into_response()
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(move |req, next| {
            guard::guard(g.clone(), req, next)
        }))
        .with_state(state);
    error::with_json_errors(router, limit)
}

/// Compares two strings in time that depends only on their lengths.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Access control: with a token configured, a request must carry it as
/// `Authorization: Bearer <token>` (the scheme in any case, as RFC 7235 has it), as the
/// `nanoclass_token` cookie, or as `?token=<token>`
/// (the URL the server prints; the answer then sets the cookie so the page's own requests,
/// `<img>` streams and event streams carry it). Anything else gets 401.
pub async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = st.inner.token.as_deref() else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, t)| {
            scheme.eq_ignore_ascii_case("bearer") && same_secret(t.trim(), token)
        });
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == TOKEN_COOKIE && same_secret(v, token));
    let query =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.get("token").cloned())
            .is_some_and(|t| same_secret(&t, token));
    if !(bearer || cookie || query) {
        return error::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "access token required: open the URL the studio printed at start (it ends in ?token=...)",
        )
        .into_response();
    }
    let mut resp = next.run(req).await;
    if query
        && !cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        ))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (`127.0.0.1`, `0.0.0.0`, `::`, `localhost`).
    pub host: String,
    /// Port (0: any free port).
    pub port: u16,
    /// The studio.
    pub config: StudioConfig,
}

/// A studio running in the background.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The URL to open (with `?token=` when a token is required).
    pub url: String,
    /// The token in force, if any.
    pub token: Option<String>,
    /// The server task.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A random access token: 32 hex digits (128 bits from `rand`'s thread generator, a CSPRNG
/// seeded by the operating system).
pub fn new_token() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Binds and starts serving in the background. A host that is not a loopback address requires
/// a token: the given one, or a new random one ([`new_token`]).
///
/// # Errors
/// An unparseable host, an address that cannot be bound, a source that cannot be opened.
pub async fn start(opts: ServeOptions) -> Result<Running, String> {
    let ip: IpAddr = if opts.host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        opts.host.parse().map_err(|_| {
            format!(
                "--host {}: not an IP address (use 127.0.0.1, 0.0.0.0 or an interface address)",
                opts.host
            )
        })?
    };
    let mut config = opts.config;
    if !ip.is_loopback() && config.token.is_none() {
        config.token = Some(new_token());
    }
    let token = config.token.clone();
    let state = tokio::task::spawn_blocking(move || AppState::new(config))
        .await
        .map_err(|e| e.to_string())??;
    let listener = tokio::net::TcpListener::bind((ip, opts.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shown = match addr.ip() {
        IpAddr::V6(v6) if !v6.is_unspecified() => format!("[{v6}]"),
        IpAddr::V4(v4) if v4.is_unspecified() => "<this machine's address>".to_string(),
        IpAddr::V6(_) => "<this machine's address>".to_string(),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let url = match &token {
        Some(t) => format!("http://{shown}:{}/?token={t}", addr.port()),
        None => format!("http://{shown}:{}/", addr.port()),
    };
    let router = app(state);
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(Running {
        addr,
        url,
        token,
        task,
    })
}

/// Serves until the process ends, after printing the URL on stdout.
///
/// # Errors
/// Those of [`start`], and a server failure.
pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    let running = start(opts).await?;
    println!("nanoclass studio: {}", running.url);
    if running.token.is_some() {
        println!(
            "requests without the access token get 401; plain http from another machine also \
             blocks the browser camera (use the device source, or https)"
        );
    }
    match running.task.await {
        Ok(r) => r.map_err(|e| format!("server: {e}")),
        Err(e) => Err(format!("server: {e}")),
    }
}
