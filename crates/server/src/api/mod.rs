//! The HTTP API (API.md): `app(state) -> Router`, kept apart from `main` so
//! tests drive it with `oneshot` and the binary with a socket. The OpenAPI
//! document at `/openapi.json` is generated from the handlers' annotations
//! and the request and response types.

pub mod auth;
pub mod body;
pub mod datasets;
pub mod error;
pub mod events;
pub mod experiments;
pub mod ops;
pub mod runs;
pub mod types;
pub mod validate;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, Uri};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runnel",
        description = "Runs LLM experiments in the background: datasets, experiments, results, live events."
    ),
    components(schemas(error::Problem)),
    tags(
        (name = "datasets", description = "Datasets and their examples"),
        (name = "experiments", description = "Experiments and their lifecycle"),
        (name = "results", description = "Runs, annotations, logs and live events"),
        (name = "operations", description = "Health, readiness and metrics")
    )
)]
struct ApiDoc;

/// The `/v1` routes and their OpenAPI description.
fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(datasets::create, datasets::list))
        .routes(routes!(datasets::get))
        .routes(routes!(datasets::append))
        .routes(routes!(experiments::create, experiments::list))
        .routes(routes!(experiments::get, experiments::delete))
        .routes(routes!(experiments::stop))
        .routes(routes!(experiments::resume))
        .routes(routes!(experiments::attach_evaluator))
        .routes(routes!(runs::page))
        .routes(routes!(runs::jsonl))
        .routes(routes!(runs::logs))
        .routes(routes!(events::events))
}

/// The operations routes (no API key) and their OpenAPI description.
fn operations() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(v1())
        .merge(operations())
        .split_for_parts();
    api
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        what: "route",
        id: uri.path().chars().take(200).collect(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The whole HTTP application over `state`.
pub fn app(state: AppState) -> axum::Router {
    let (v1, _) = v1().split_for_parts();
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_key,
    ));
    let openapi = openapi();
    let (ops, _) = operations().split_for_parts();
    let mut router = axum::Router::new()
        .merge(v1)
        .merge(ops)
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(openapi) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.server.body_limit_bytes))
        .layer(TraceLayer::new_for_http());
    let origins = &state.config.server.cors_origins;
    if !origins.is_empty() {
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Vec<_>>(),
            )
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                ]),
        );
    }
    router.with_state(state)
}
