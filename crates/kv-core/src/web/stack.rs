//! The middlewares every route of both services runs through, in one order.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::App;

use crate::web::http::{close_when_body_unread, correlation_id_middleware};
use crate::web::metrics::metrics_middleware;

/// Wraps `app`, and any middleware it already has (which then runs inside these), in the shared
/// stack, outermost first: [`close_when_body_unread`], [`correlation_id_middleware`],
/// [`metrics_middleware`].
///
/// The order is a safety property. `close_when_body_unread` must be outermost: it holds the
/// unread body of every answer given inside it, so an answer that a middleware gives on its own
/// (the correlation id's `400`) is covered too; placed further in, such an answer would leave a
/// chunked body for actix to drain for as long as the client goes on sending it
/// (docs/reliability.md). The correlation id comes next, so that everything inside it, the
/// metrics, routing and the handler, logs in the request's span.
pub fn with_shared_middleware<T, B>(
    app: App<T>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    app.wrap(from_fn(metrics_middleware))
        .wrap(from_fn(correlation_id_middleware))
        .wrap(from_fn(close_when_body_unread))
}
