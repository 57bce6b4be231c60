//! The HTTP front: routes, and the layers every request passes through.
//!
//! Handlers validate input and talk to the actors; they hold no state of their own.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse};

use crate::state::AppState;

pub mod anthropic;
pub mod approvals;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod claude;
pub mod compat;
pub mod config_api;
pub mod dialect;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod observe;
pub mod openai;
pub mod openapi;
pub mod params;
pub mod rate_limit;
pub mod routing;
pub mod run_request;
pub mod schema;
pub mod sessions;
pub mod sse;
pub mod statistics;
pub mod tasks;
pub mod turns;
pub mod unread_body;
pub mod validate;
pub mod webhooks;

/// The application of one HTTP worker: the routes, behind the layers every request passes
/// through. Listed innermost first (`wrap` puts each layer around the ones before it), so
/// authentication runs before rate limiting, which counts under the key it found. Inside all
/// of them, each resource catches its handlers' panics (`routing::resource`).
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .configure(routes)
        .default_service(web::to(error::route_not_found))
        .wrap(from_fn(rate_limit::limit))
        .wrap(from_fn(auth::authenticate))
        // Outside every layer that can refuse a request, so /v1 errors all leave in the shape
        // of the request's dialect (OpenAI's or Anthropic's).
        .wrap(from_fn(dialect::convert_errors))
        // Outside the panic catcher (a caught panic is logged as its 500); sets the request id.
        .wrap(from_fn(observe::observe))
        // Outermost: sees every answer, whichever layer gave it.
        .wrap(from_fn(unread_body::close_if_unread))
}

/// Every route. Each resource answers a method it does not serve with a JSON 405
/// (`routing::resource`); a path no resource matches gets the app's JSON 404.
fn routes(cfg: &mut web::ServiceConfig) {
    use routing::{delete, get, patch, post, resource};
    cfg.service(resource("/health").route(get().to(health::health)))
        .service(resource("/api/openapi.json").route(get().to(openapi::serve_document)))
        // The Swagger UI's files, showing the document above.
        .service(
            utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
                .config(utoipa_swagger_ui::Config::new(["/api/openapi.json"])),
        )
        .service(resource("/docs").route(get().to(docs_redirect)))
        .service(resource("/api/claude").route(post().to(claude::run_claude)))
        .service(resource("/api/claude/batch").route(post().to(batch::run_batch)))
        .service(resource("/metrics").route(get().to(metrics::metrics)))
        .service(
            resource("/api/config")
                .route(get().to(config_api::get_config))
                .route(patch().to(config_api::patch)),
        )
        .service(resource("/api/tasks").route(get().to(tasks::list_tasks)))
        .service(resource("/api/tasks/async").route(post().to(tasks::create_async)))
        .service(resource("/api/tasks/queue/status").route(get().to(tasks::queue_status)))
        .service(
            resource("/api/tasks/{id}")
                .route(get().to(tasks::get_task))
                .route(delete().to(tasks::cancel)),
        )
        .service(resource("/api/tasks/{id}/priority").route(patch().to(tasks::set_priority)))
        .service(resource("/api/tasks/{id}/events").route(get().to(events::task_events)))
        .service(resource("/api/tasks/{id}/webhooks").route(get().to(webhooks::list_deliveries)))
        .service(resource("/api/tasks/{id}/approvals").route(get().to(approvals::task_approvals)))
        .service(
            resource("/api/tasks/{id}/approvals/{approval_id}").route(post().to(approvals::decide)),
        )
        .service(resource("/api/approvals").route(get().to(approvals::list_approvals)))
        .service(
            resource("/api/sessions")
                .route(post().to(sessions::create))
                .route(get().to(sessions::list)),
        )
        .service(resource("/api/sessions/search").route(get().to(sessions::search)))
        .service(
            resource("/api/sessions/{id}")
                .route(get().to(sessions::get))
                .route(delete().to(sessions::delete)),
        )
        .service(resource("/api/sessions/{id}/stats").route(get().to(sessions::stats)))
        .service(resource("/api/sessions/{id}/status").route(patch().to(sessions::set_status)))
        .service(resource("/api/sessions/{id}/messages").route(get().to(sessions::messages)))
        .service(
            resource("/api/sessions/{id}/continue").route(post().to(sessions::continue_session)),
        )
        .service(resource("/api/sessions/{id}/fork").route(post().to(sessions::fork)))
        .service(resource("/api/statistics").route(get().to(statistics::overview)))
        .service(resource("/api/statistics/summary").route(get().to(statistics::summary)))
        .service(resource("/api/statistics/daily").route(get().to(statistics::daily_list)))
        .service(resource("/api/statistics/range").route(get().to(statistics::range)))
        .service(resource("/api/statistics/models").route(get().to(statistics::models)))
        .configure(openai::routes)
        .configure(anthropic::routes);
}

/// `/docs` → the Swagger UI page, `/docs/`.
async fn docs_redirect() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}
