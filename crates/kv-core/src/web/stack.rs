//! The middlewares every route of both services runs through, in one order.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::App;

use crate::otlp::SpanExport;
use crate::web::http::{close_when_body_unread, correlation_id_middleware};
use crate::web::metrics::metrics_middleware;

/// Wraps `app`, and any middleware it already has (which then runs inside these), in the shared
/// stack, outermost first: [`close_when_body_unread`], [`correlation_id_middleware`] (which hands
/// each request's span to `spans`), [`metrics_middleware`].
///
/// The order is a safety property. `close_when_body_unread` must be outermost: it holds the
/// unread body of every answer given inside it, so an answer that a middleware gives on its own
/// (the correlation id's `400`) is covered too; placed further in, such an answer would leave a
/// chunked body for actix to drain for as long as the client goes on sending it
/// (docs/reliability.md). The correlation id comes next, so that everything inside it, the
/// metrics, routing and the handler, logs in the request's span.
pub fn with_shared_middleware<T, B>(
    app: App<T>,
    spans: &SpanExport,
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
    app.app_data(spans.clone())
        .wrap(from_fn(metrics_middleware))
        .wrap(from_fn(correlation_id_middleware))
        .wrap(from_fn(close_when_body_unread))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::{web, App, HttpResponse, HttpServer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::with_shared_middleware;
    use crate::otlp::SpanExport;

    /// The correlation-id middleware refuses a bad id before anything reads the body; being
    /// inside `close_when_body_unread`, its answer still closes the connection rather than
    /// leaving a chunked body to be drained.
    #[actix_web::test]
    async fn an_answer_a_middleware_gives_on_its_own_closes_a_connection_with_an_unread_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = HttpServer::new(|| {
            with_shared_middleware(App::new(), &SpanExport::off())
                .route("/body", web::post().to(|_: web::Bytes| HttpResponse::Ok()))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
        let server_handle = server.handle();
        actix_web::rt::spawn(server);

        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        // One chunk, and no end: a kept-alive connection would wait for the rest.
        stream
            .write_all(
                b"POST /body HTTP/1.1\r\nHost: test\r\nX-Correlation-Id: not valid\r\n\
                  Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            )
            .await
            .expect("request");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buffer = [0u8; 4096];
            // The server may end with a reset once it stops reading: keep what came before.
            while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                answer.extend_from_slice(&buffer[..n]);
            }
        })
        .await;
        server_handle.stop(false).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(read.is_ok(), "the connection stayed open: {answer}");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }
}
