//! How a request travels: to which reader, with the token, retried after `Retry-After` or to
//! the next reader when one does not answer. Shared by the calls and the watch.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode, Url};

use crate::error::Error;
use crate::paths::retry_after;
use crate::routing::Routing;

pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
    pub(crate) routing: Routing,
    pub(crate) bearer: RwLock<Option<String>>,
    pub(crate) max_retries: u32,
    pub(crate) max_retry_wait: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Transport")
            .field("routing", &self.routing)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Replaces the access token for every later request.
    pub(crate) fn set_bearer(&self, token: String) {
        *self.bearer.write().unwrap_or_else(PoisonError::into_inner) = Some(token);
    }

    /// Sends a read to the readers `routing` picks for `key` (any reader without one), in turn:
    /// the next one when one does not answer, after `Retry-After` when all asked to wait.
    pub(crate) async fn read_request(
        &self,
        key: Option<&[u8]>,
        build: impl Fn(&reqwest::Client, &Url) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let order = self.routing.order(&self.http, key).await;
        if order.is_empty() {
            return Err(Error::Config(
                "no reader URL was given for a read".to_owned(),
            ));
        }
        let mut next = 0usize;
        self.send(|| {
            let base = &order[next % order.len()];
            next += 1;
            build(&self.http, base)
        })
        .await
    }

    /// Sends what `build` makes, retrying a `503`/`429` after its `Retry-After` and a request
    /// that got no answer (both within `max_retries`); every other answer is the caller's.
    pub(crate) async fn send(
        &self,
        mut build: impl FnMut() -> RequestBuilder,
    ) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let request = self.authorized(build());
            let wait = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let busy = status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    match (busy, retry_after(response.headers())) {
                        (true, Some(wait)) if attempt < self.max_retries => wait,
                        _ => return Ok(response),
                    }
                }
                Err(error) if attempt < self.max_retries && !error.is_builder() => {
                    Duration::from_millis(100 << attempt.min(5))
                }
                Err(error) => return Err(Error::transport(error)),
            };
            attempt += 1;
            tokio::time::sleep(wait.min(self.max_retry_wait)).await;
        }
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        let bearer = self.bearer.read().unwrap_or_else(PoisonError::into_inner);
        match bearer.as_deref() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}
