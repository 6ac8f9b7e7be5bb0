//! OpenID Connect bearer-token authentication and scope/role authorization, shared by both APIs.
//!
//! Tokens are JWTs signed by the provider. A token is accepted only when its algorithm is on the
//! asymmetric allow-list (`none` and HMAC never are), its `kid` names a key of the provider's
//! JWKS, the signature verifies, `iss` is the provider, `aud` holds the configured audience, and
//! `exp`/`nbf` hold within a small leeway.
//!
//! The provider's key set lives in a [`KeySource`]: a background task re-fetches it every
//! `KV_API_AUTH_JWKS_REFRESH_SECONDS`, and requests only ever read the last good set, so a slow
//! or failing provider never holds a request. A token naming an unknown `kid` may start one
//! extra fetch (at most one per [`MIN_UNKNOWN_KID_REFRESH`], and never two at once) and waits a
//! bounded time for it; the fetch runs in its own task, so a request that gives up does not
//! cancel it, and the budget is counted when a fetch ends, not when it starts.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, FromRequest, HttpRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::JsonWebKey;
use serde::Deserialize;
use serde_json::Value;

use crate::settings::prefixes::{KeyAction, PrefixRules};
use crate::settings::{AuthSettings, OidcSettings};
use crate::web::error::{ApiError, ErrorCode};
use crate::web::prefixes::KeyGrant;

/// Least time between two JWKS fetches caused by unknown `kid`s, so forged tokens cannot make
/// the service hammer the provider.
const MIN_UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(10);
/// How long a request naming an unknown `kid` waits for the fetch it started or joined.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(3);

/// What a request wants to do; each may require its own scopes or roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Delete,
    /// The reader's snapshot of its whole replica (KV_API_AUTH_ADMIN).
    Admin,
}

/// Why a request was refused; renders as 401 or 403 with a `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token lacks a required scope or role (one of: {0})")]
    Insufficient(String),
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::Missing => ApiError::new(ErrorCode::Unauthorized, message)
                .with_challenge(r#"Bearer realm="kv""#),
            AuthError::Invalid(reason) => ApiError::new(ErrorCode::Unauthorized, message)
                .with_challenge(format!(
                    r#"Bearer realm="kv", error="invalid_token", error_description="{}""#,
                    reason.replace('"', "'")
                )),
            AuthError::Insufficient(scopes) => ApiError::new(ErrorCode::Forbidden, message)
                .with_challenge(format!(
                    r#"Bearer realm="kv", error="insufficient_scope", scope="{}""#,
                    scopes.replace('"', "'")
                )),
        }
    }
}

/// Why the provider could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the OpenID provider at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// The accepted claims of a verified token.
#[derive(Debug, Clone)]
pub struct Claims(pub Value);

impl Claims {
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

/// JOSE `typ` values an access token may carry: none, plain JWT, or RFC 9068's `at+jwt`.
/// Anything else (an ID token's `id_token`, a logout token) is not an access token.
fn is_access_token_type(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    matches!(typ, "jwt" | "at+jwt")
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

/// The provider's keys as last fetched, and the one fetch that may be under way.
pub struct KeySource {
    http: reqwest::Client,
    jwks_uri: String,
    keys: RwLock<CoreJsonWebKeySet>,
    fetch: std::sync::Mutex<FetchState>,
    /// Counts finished fetches, so waiters know when the one they joined has ended.
    finished: tokio::sync::watch::Sender<u64>,
    /// Fetches started, exported as `kv_auth_jwks_fetches_total`.
    started: prometheus::IntCounter,
}

#[derive(Debug, Default)]
struct FetchState {
    in_flight: bool,
    /// When the last fetch started for an unknown `kid` ended.
    last_unknown_kid: Option<Instant>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("jwks_uri", &self.jwks_uri)
            .finish_non_exhaustive()
    }
}

impl KeySource {
    fn new(http: reqwest::Client, jwks_uri: String, keys: CoreJsonWebKeySet) -> Arc<Self> {
        Arc::new(Self {
            http,
            jwks_uri,
            keys: RwLock::new(keys),
            fetch: std::sync::Mutex::new(FetchState::default()),
            finished: tokio::sync::watch::channel(0).0,
            started: prometheus::IntCounter::new(
                "kv_auth_jwks_fetches_total",
                "Requests for the OpenID provider's key set since the process started",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        })
    }

    /// Re-fetches every `interval` for as long as an [`Authenticator`] holds the source.
    fn refresh_every(self: &Arc<Self>, interval: Duration) {
        let source = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(source) = source.upgrade() else {
                    return;
                };
                if let Some(mut done) = source.start_fetch(false) {
                    let _ = done.changed().await;
                }
            }
        });
    }

    /// Starts a fetch in its own task unless one is under way (then joins it) or, for an
    /// unknown `kid`, the budget is spent (then `None`). The receiver changes when it ends.
    fn start_fetch(
        self: &Arc<Self>,
        unknown_kid: bool,
    ) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut state = self
            .fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let receiver = self.finished.subscribe();
        if state.in_flight {
            return Some(receiver);
        }
        if unknown_kid
            && state
                .last_unknown_kid
                .is_some_and(|at| at.elapsed() < MIN_UNKNOWN_KID_REFRESH)
        {
            return None;
        }
        state.in_flight = true;
        drop(state);
        self.started.inc();
        let source = Arc::clone(self);
        tokio::spawn(async move {
            source.fetch_keys().await;
            let mut state = source
                .fetch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.in_flight = false;
            if unknown_kid {
                state.last_unknown_kid = Some(Instant::now());
            }
            // Under the lock: a request that starts the next fetch must not take this
            // fetch's end for its own.
            source.finished.send_modify(|n| *n += 1);
            drop(state);
        });
        Some(receiver)
    }

    async fn fetch_keys(&self) {
        match fetch_json::<CoreJsonWebKeySet>(&self.http, &self.jwks_uri).await {
            Ok(keys) => {
                tracing::info!(
                    keys = keys.keys().len(),
                    "refreshed the provider's signing keys"
                );
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
            }
            // Keep serving with the keys we have; a provider blip must not lock everyone out.
            Err(reason) => tracing::warn!(%reason, "cannot refresh the provider's signing keys"),
        }
    }

    /// How many fetches this source started since discovery.
    pub fn fetches_started(&self) -> u64 {
        self.started.get()
    }
}

pub struct Authenticator {
    issuers: Vec<String>,
    audience: String,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    leeway: Duration,
    claim_path: Vec<String>,
    read: Vec<String>,
    write: Vec<String>,
    delete: Vec<String>,
    admin: Vec<String>,
    allowed_clients: Vec<String>,
    prefixes: Option<PrefixRules>,
    keys: Arc<KeySource>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn trim_slash(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

impl Authenticator {
    /// Discovers the provider and fetches its keys, retrying until `discovery_timeout`.
    pub async fn discover(settings: &OidcSettings) -> Result<Self, DiscoveryError> {
        let server = settings.idp_address_for_server.as_deref().ok_or_else(|| {
            DiscoveryError::Config("OIDC_IDP_ADDRESS_FOR_SERVER is required".to_owned())
        })?;
        let audience = settings
            .audience
            .clone()
            .ok_or_else(|| DiscoveryError::Config("OIDC_AUDIENCE is required".to_owned()))?;
        if settings.require_https_metadata && !server.starts_with("https://") {
            return Err(DiscoveryError::Config(format!(
                "OIDC_IDP_ADDRESS_FOR_SERVER={server} is not https while \
                 OIDC_REQUIRE_HTTPS_METADATA is true"
            )));
        }
        let algorithms = settings
            .algorithms
            .iter()
            .map(|name| {
                serde_json::from_value::<CoreJwsSigningAlgorithm>(Value::String(name.clone()))
                    .map_err(|_| DiscoveryError::Config(format!("unknown algorithm {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = crate::settings::client_trusting(settings.ca.as_ref())
            .danger_accept_invalid_certs(!settings.validate_external_certificates)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DiscoveryError::Config(format!("HTTP client: {e}")))?;

        let deadline = Instant::now() + settings.discovery_timeout;
        let discovery_url = format!("{}/.well-known/openid-configuration", trim_slash(server));
        let (issuer, discovered_jwks) = loop {
            match fetch_json::<DiscoveryDocument>(&http, &discovery_url).await {
                Ok(doc) => break (doc.issuer, doc.jwks_uri),
                Err(reason) if Instant::now() >= deadline => {
                    return Err(DiscoveryError::Unreachable {
                        url: discovery_url,
                        reason,
                    })
                }
                Err(reason) => {
                    tracing::warn!(url = %discovery_url, %reason, "OpenID provider not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let jwks_uri = settings.jwks_uri.clone().unwrap_or(discovered_jwks);
        if settings.require_https_metadata && !jwks_uri.starts_with("https://") {
            return Err(DiscoveryError::Config(format!(
                "the JWKS URI {jwks_uri} is not https while OIDC_REQUIRE_HTTPS_METADATA is true"
            )));
        }
        let keys = fetch_json::<CoreJsonWebKeySet>(&http, &jwks_uri)
            .await
            .map_err(|reason| DiscoveryError::Unreachable {
                url: jwks_uri.clone(),
                reason,
            })?;
        // The issuer users see may differ from the address the server uses (split horizon).
        let mut issuers = vec![trim_slash(&issuer), trim_slash(server)];
        if let Some(users) = &settings.idp_address_for_users {
            issuers.push(trim_slash(users));
        }
        issuers.dedup();
        tracing::info!(?issuers, %jwks_uri, keys = keys.keys().len(), "OpenID provider discovered");
        Ok(Self {
            issuers,
            audience,
            algorithms,
            leeway: settings.leeway,
            claim_path: settings.claim.split('.').map(str::to_owned).collect(),
            read: settings.read.clone(),
            write: settings.write.clone(),
            delete: settings.delete.clone(),
            admin: settings.admin.clone(),
            allowed_clients: settings.allowed_clients.clone(),
            prefixes: settings.prefixes.clone(),
            keys: {
                let source = KeySource::new(http, jwks_uri, keys);
                source.refresh_every(settings.jwks_refresh);
                source
            },
        })
    }

    /// Verifies an `Authorization` header value and returns the token's claims.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Claims, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Invalid("expected `Authorization: Bearer <token>`".into()))?;
        let invalid = |reason: &str| AuthError::Invalid(reason.to_owned());
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a signed JWT"));
        };
        let jose: JoseHeader = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| invalid("malformed JWT header"))?;
        if let Some(typ) = jose.typ.as_deref().filter(|typ| !is_access_token_type(typ)) {
            return Err(AuthError::Invalid(format!(
                "a token of type {typ:?} is not an access token"
            )));
        }
        let algorithm =
            serde_json::from_value::<CoreJwsSigningAlgorithm>(Value::String(jose.alg.clone()))
                .ok()
                .filter(|alg| self.algorithms.contains(alg))
                .ok_or_else(|| {
                    AuthError::Invalid(format!("algorithm {} is not allowed", jose.alg))
                })?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| invalid("malformed signature"))?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];

        let key = match self.find_key(jose.kid.as_deref(), &algorithm) {
            Some(key) => key,
            None => {
                if let Some(mut done) = self.keys.start_fetch(true) {
                    let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, done.changed()).await;
                }
                self.find_key(jose.kid.as_deref(), &algorithm)
                    .ok_or_else(|| invalid("the token's key is not in the provider's key set"))?
            }
        };
        key.verify_signature(&algorithm, signing_input.as_bytes(), &signature)
            .map_err(|_| invalid("bad signature"))?;

        let claims: Value = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(Value::is_object)
            .ok_or_else(|| invalid("malformed JWT payload"))?;
        self.check_claims(&claims)?;
        Ok(Claims(claims))
    }

    fn check_claims(&self, claims: &Value) -> Result<(), AuthError> {
        let invalid = |reason: String| Err(AuthError::Invalid(reason));
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !self
            .issuers
            .iter()
            .any(|i| i == issuer.trim_end_matches('/'))
        {
            return invalid(format!("unexpected issuer {issuer:?}"));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == &self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&self.audience)),
            _ => false,
        };
        if !audience_ok {
            return invalid(format!("the token is not for audience {:?}", self.audience));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        match claims.get("exp").and_then(Value::as_f64) {
            Some(exp) if now <= exp + leeway => {}
            Some(_) => return invalid("the token has expired".to_owned()),
            None => return invalid("the token has no expiry".to_owned()),
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
            if now + leeway < nbf {
                return invalid("the token is not valid yet".to_owned());
            }
        }
        // Keycloak says what a token is in its payload: an ID or refresh token is no access token.
        if let Some(typ) = claims.get("typ").and_then(Value::as_str) {
            if !typ.eq_ignore_ascii_case("bearer") && !is_access_token_type(typ) {
                return invalid(format!("a token of type {typ:?} is not an access token"));
            }
        }
        if !self.allowed_clients.is_empty() {
            // `azp` is OpenID Connect's authorized party; RFC 9068 access tokens say `client_id`.
            let client = claims
                .get("azp")
                .or_else(|| claims.get("client_id"))
                .and_then(Value::as_str);
            if !client.is_some_and(|c| self.allowed_clients.iter().any(|a| a == c)) {
                return invalid(format!(
                    "the token's client {client:?} is not in KV_API_AUTH_ALLOWED_CLIENTS"
                ));
            }
        }
        Ok(())
    }

    /// Checks that the claims carry one of the scopes or roles `operation` requires.
    pub fn authorize(&self, claims: &Claims, operation: Operation) -> Result<(), AuthError> {
        let required = match operation {
            Operation::Read => &self.read,
            Operation::Write => &self.write,
            Operation::Delete => &self.delete,
            Operation::Admin => &self.admin,
        };
        if required.is_empty() {
            return Ok(());
        }
        if required.iter().any(|wanted| self.holds(claims, wanted)) {
            Ok(())
        } else {
            Err(AuthError::Insufficient(required.join(" ")))
        }
    }

    /// Whether the token carries the scope or role `wanted` where KV_API_AUTH_CLAIM says
    /// they are: the one definition of a token's grants, for operations and prefixes alike.
    fn holds(&self, claims: &Claims, wanted: &str) -> bool {
        let mut granted = &claims.0;
        for segment in &self.claim_path {
            granted = granted.get(segment).unwrap_or(&Value::Null);
        }
        match granted {
            Value::String(list) => list.split_whitespace().any(|g| g == wanted),
            Value::Array(items) => items.iter().any(|g| g.as_str() == Some(wanted)),
            _ => false,
        }
    }

    /// The keys these claims may touch for `action` under KV_API_AUTH_PREFIXES (every key
    /// when it is unset).
    pub fn key_grant(&self, claims: &Claims, action: KeyAction) -> KeyGrant {
        match &self.prefixes {
            None => KeyGrant::all(action),
            Some(rules) => KeyGrant::compile(rules, action, |scope| self.holds(claims, scope)),
        }
    }

    fn find_key(
        &self,
        kid: Option<&str>,
        algorithm: &CoreJwsSigningAlgorithm,
    ) -> Option<CoreJsonWebKey> {
        let set = self
            .keys
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = set.keys();
        match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
                .cloned(),
            // Without a `kid`, only an unambiguous key of the right type will do.
            None => {
                let mut fitting = keys.iter().filter(|k| {
                    k.key_type() == &signing_key_type(algorithm) && k.key_id().is_none()
                        || keys.len() == 1
                });
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Some(key.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Where the provider's keys come from.
    pub fn key_source(&self) -> &KeySource {
        &self.keys
    }
}

fn signing_key_type(
    algorithm: &CoreJwsSigningAlgorithm,
) -> openidconnect::core::CoreJsonWebKeyType {
    use openidconnect::core::CoreJsonWebKeyType as T;
    use CoreJwsSigningAlgorithm as A;
    match algorithm {
        A::EcdsaP256Sha256 | A::EcdsaP384Sha384 | A::EcdsaP521Sha512 => T::EllipticCurve,
        A::EdDsa => T::OctetKeyPair,
        A::HmacSha256 | A::HmacSha384 | A::HmacSha512 => T::Symmetric,
        _ => T::RSA,
    }
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("unexpected document: {e}"))
}

/// Whether and how requests are authenticated; shared with handlers as app data.
#[derive(Debug, Clone)]
pub enum AuthGate {
    /// KV_API_DISABLE_API_AUTH=true: everyone may do everything (development only).
    Disabled,
    Enabled(Arc<Authenticator>),
}

impl AuthGate {
    /// Discovers the provider unless auth is disabled; start-up fails when it cannot.
    /// `service` names the binary in the warning logged when auth is off.
    pub async fn from_settings(
        settings: &AuthSettings,
        service: &str,
    ) -> Result<Self, DiscoveryError> {
        if settings.disabled {
            tracing::warn!(
                "API auth is DISABLED (KV_API_DISABLE_API_AUTH=true): anyone who can reach \
                 {service} can use it; this is for local development only"
            );
            return Ok(Self::Disabled);
        }
        for (operation, scopes, var) in [
            ("write", &settings.oidc.write, "KV_API_AUTH_WRITE"),
            ("delete", &settings.oidc.delete, "KV_API_AUTH_DELETE"),
        ] {
            if scopes.is_empty() && service_does(service, operation) {
                tracing::warn!(
                    "{var} is empty: any valid token for the audience may {operation} keys; \
                     set it to the scopes or roles that may"
                );
            }
        }
        Ok(Self::Enabled(Arc::new(
            Authenticator::discover(&settings.oidc).await?,
        )))
    }

    /// Authenticates the request and checks it may perform `operation`.
    pub async fn check(
        &self,
        request: &HttpRequest,
        operation: Operation,
    ) -> Result<Option<Claims>, AuthError> {
        let Self::Enabled(authenticator) = self else {
            return Ok(None);
        };
        let header = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map_err(|_| AuthError::Invalid("unreadable Authorization header".into()))
            })
            .transpose()?;
        let claims = authenticator.authenticate(header).await?;
        authenticator.authorize(&claims, operation)?;
        Ok(Some(claims))
    }

    /// Authenticates a bare access token, as a protocol without headers hands it over (the
    /// reader's Redis-protocol `AUTH`), exactly as [`AuthGate::check`] does a bearer header,
    /// and checks it may perform `operation`. `Ok(None)` when auth is off.
    pub async fn check_token(
        &self,
        token: &str,
        operation: Operation,
    ) -> Result<Option<Claims>, AuthError> {
        let Self::Enabled(authenticator) = self else {
            return Ok(None);
        };
        let claims = authenticator
            .authenticate(Some(&format!("Bearer {token}")))
            .await?;
        authenticator.authorize(&claims, operation)?;
        Ok(Some(claims))
    }

    /// The last moment, in milliseconds since the Unix epoch, at which [`AuthGate::check`]
    /// would still accept the token these claims came from: its `exp` plus the leeway. A
    /// session that outlives one request compares its clock with it before each command.
    pub fn valid_until_ms(&self, claims: &Claims) -> Option<u64> {
        let Self::Enabled(authenticator) = self else {
            return None;
        };
        let exp = claims.0.get("exp").and_then(Value::as_f64)?;
        let until = (exp + authenticator.leeway.as_secs_f64()) * 1000.0;
        Some(until.max(0.0) as u64)
    }

    /// Exports the auth metrics (provider key-set fetches) on `registry`; none when auth is off.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        match self {
            Self::Disabled => Ok(()),
            Self::Enabled(authenticator) => {
                registry.register(Box::new(authenticator.keys.started.clone()))
            }
        }
    }

    /// The keys the caller with these claims may touch for `action`: every key with auth off
    /// or KV_API_AUTH_PREFIXES unset; none without claims while it is set.
    pub fn key_grant(&self, claims: Option<&Claims>, action: KeyAction) -> KeyGrant {
        match (self, claims) {
            (Self::Disabled, _) => KeyGrant::all(action),
            (Self::Enabled(authenticator), Some(claims)) => authenticator.key_grant(claims, action),
            (Self::Enabled(authenticator), None) => match &authenticator.prefixes {
                None => KeyGrant::all(action),
                Some(rules) => KeyGrant::compile(rules, action, |_| false),
            },
        }
    }

    /// Checks already-authenticated claims for a further operation (a batch that also deletes).
    pub fn allows(&self, claims: Option<&Claims>, operation: Operation) -> Result<(), AuthError> {
        match (self, claims) {
            (Self::Disabled, _) => Ok(()),
            (Self::Enabled(authenticator), Some(claims)) => {
                authenticator.authorize(claims, operation)
            }
            (Self::Enabled(_), None) => Err(AuthError::Missing),
        }
    }
}

/// Whether `service` performs `operation` at all: only the writer writes and deletes.
fn service_does(service: &str, operation: &str) -> bool {
    service == "kv-writer" || operation == "read"
}

/// Marker types naming the operation an [`Authorized`] extractor checks.
pub mod operation {
    pub trait Kind {
        const OPERATION: super::Operation;
    }
    #[derive(Debug)]
    pub struct Read;
    #[derive(Debug)]
    pub struct Write;
    #[derive(Debug)]
    pub struct Delete;
    #[derive(Debug)]
    pub struct Admin;
    impl Kind for Admin {
        const OPERATION: super::Operation = super::Operation::Admin;
    }
    impl Kind for Read {
        const OPERATION: super::Operation = super::Operation::Read;
    }
    impl Kind for Write {
        const OPERATION: super::Operation = super::Operation::Write;
    }
    impl Kind for Delete {
        const OPERATION: super::Operation = super::Operation::Delete;
    }
}

/// A handler parameter that admits only requests allowed to perform `K`'s operation; the
/// handler never runs otherwise (401/403 with a `WWW-Authenticate` challenge). Routes without
/// it, such as health checks, stay anonymous.
#[derive(Debug)]
pub struct Authorized<K> {
    pub claims: Option<Claims>,
    gate: web::Data<AuthGate>,
    _kind: std::marker::PhantomData<K>,
}

impl<K> Authorized<K> {
    /// Whether the same caller may also perform `operation` (a batch that also deletes).
    pub fn permits(&self, operation: Operation) -> Result<(), ApiError> {
        Ok(self.gate.allows(self.claims.as_ref(), operation)?)
    }

    /// The keys this caller may touch for `action` (KV_API_AUTH_PREFIXES); compile it once
    /// per request and ask it per key.
    pub fn keys(&self, action: KeyAction) -> KeyGrant {
        self.gate.key_grant(self.claims.as_ref(), action)
    }

    /// `403 forbidden` unless this caller may take `action` on `key`.
    pub fn check_key(&self, action: KeyAction, key: &[u8]) -> Result<(), ApiError> {
        self.keys(action).check(key)
    }
}

impl<K: operation::Kind + 'static> FromRequest for Authorized<K> {
    type Error = ApiError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, ApiError>>>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            let gate = request
                .app_data::<web::Data<AuthGate>>()
                .cloned()
                .ok_or_else(|| ApiError::internal("auth is not configured for this route"))?;
            let claims = gate.check(&request, K::OPERATION).await?;
            Ok(Self {
                claims,
                gate,
                _kind: std::marker::PhantomData,
            })
        })
    }
}
