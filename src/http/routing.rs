//! Route builders with the API's manners:
//! - a resource answers a method it does not serve with the JSON 405 (actix-web's default is
//!   an empty 405);
//! - a panic in a handler is a 500 JSON, never a dropped connection: actix-web would let it
//!   unwind through the worker's thread, losing every connection on it. The catch sits on each
//!   resource, not on the app: there the request is routed already, and the 500 needs a handle
//!   on it (the app's router needs the only one while it routes);
//! - `GET` routes answer `HEAD` too (actix-web writes no body for a HEAD request).

use std::panic::AssertUnwindSafe;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{guard, web, Resource, Route};
use futures_util::FutureExt;

use actors::error::ErrorCode;

use super::error::{self, ApiError};

/// A resource at `path` whose unknown methods get the JSON 405 and whose panics the JSON 500.
pub fn resource(
    path: &str,
) -> Resource<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path)
        .default_service(web::to(error::method_not_allowed))
        .wrap(from_fn(catch_panic))
}

/// `GET`, and `HEAD` with the same headers.
pub fn get() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

pub fn post() -> Route {
    web::post()
}

pub fn patch() -> Route {
    web::patch()
}

pub fn delete() -> Route {
    web::delete()
}

/// A panic in a handler is a bug: answer 500 JSON.
async fn catch_panic(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request = req.request().clone();
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(answer) => answer,
        Err(_) => {
            let resp = ApiError::new(ErrorCode::InternalError, "Internal error.").into_response();
            Ok(ServiceResponse::new(request, resp))
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{test, App, HttpResponse};

    use super::*;

    async fn panics() -> HttpResponse {
        panic!("a bug")
    }

    async fn fine() -> HttpResponse {
        HttpResponse::Ok().body("ok")
    }

    #[actix_web::test]
    async fn a_panicking_handler_is_a_json_500_and_the_app_keeps_serving() {
        let app = test::init_service(
            App::new()
                .service(resource("/boom").route(post().to(panics)))
                .service(resource("/fine").route(get().to(fine))),
        )
        .await;
        let resp =
            test::call_service(&app, test::TestRequest::post().uri("/boom").to_request()).await;
        assert_eq!(resp.status().as_u16(), 500);
        let body: serde_json::Value = test::read_body_json(resp).await;
        assert_eq!(body["code"], "internal_error", "{body}");
        // The wrong method: the JSON 405.
        let resp =
            test::call_service(&app, test::TestRequest::get().uri("/boom").to_request()).await;
        assert_eq!(resp.status().as_u16(), 405);
        let body: serde_json::Value = test::read_body_json(resp).await;
        assert_eq!(body["code"], "method_not_allowed", "{body}");
        // HEAD on a GET route.
        let resp = test::call_service(
            &app,
            test::TestRequest::default()
                .method(actix_web::http::Method::HEAD)
                .uri("/fine")
                .to_request(),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200);
    }
}
