//! Bearer-token validation against a local OpenID provider stand-in (discovery + JWKS over
//! HTTP) with locally generated keys: every rejection case, and key rotation without restart.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use kv_core::settings::{OidcSettings, ASYMMETRIC_ALGORITHMS};
use kv_core::web::auth::{AuthError, Authenticator, Operation};
use kv_core::web::error::ApiError;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

const AUDIENCE: &str = "kv-api";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A signing key of the stand-in provider.
enum Signer {
    Ec { kid: String, pair: EcdsaKeyPair },
    Rsa { kid: String, pair: RsaKeyPair },
}

impl Signer {
    fn ec(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("parse");
        Signer::Ec {
            kid: kid.to_owned(),
            pair,
        }
    }

    fn rsa(kid: &str) -> Signer {
        let pem = include_str!("../fixtures/test-only-rsa-key.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body).expect("pem body");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("rsa key");
        Signer::Rsa {
            kid: kid.to_owned(),
            pair,
        }
    }

    fn jwk(&self) -> Value {
        match self {
            Signer::Ec { kid, pair } => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::Rsa { kid, pair } => {
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                       "n": b64(&public.n), "e": b64(&public.e)})
            }
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Ec { pair, .. } => pair
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Signer::Rsa { pair, .. } => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .expect("sign");
                out
            }
        };
        format!("{input}.{}", b64(&signature))
    }

    fn header(&self) -> Value {
        match self {
            Signer::Ec { kid, .. } => json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            Signer::Rsa { kid, .. } => json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        }
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// The stand-in provider: discovery and a JWKS that tests can replace (key rotation).
struct Provider {
    issuer: String,
    jwks: Arc<RwLock<Value>>,
    /// JWKS requests served.
    hits: Arc<AtomicUsize>,
    /// How long each JWKS request takes, in milliseconds: a slow provider.
    delay_ms: Arc<AtomicU64>,
    _server: actix_web::dev::ServerHandle,
}

impl Provider {
    async fn start(keys: &[&Signer]) -> Provider {
        let jwks = Arc::new(RwLock::new(
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}),
        ));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let (served_jwks, served_issuer) = (jwks.clone(), issuer.clone());
        let hits = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (served_hits, served_delay) = (hits.clone(), delay_ms.clone());
        let server = HttpServer::new(move || {
            let jwks = served_jwks.clone();
            let issuer = served_issuer.clone();
            let (hits, delay_ms) = (served_hits.clone(), served_delay.clone());
            App::new()
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(move || {
                        let issuer = issuer.clone();
                        async move {
                            HttpResponse::Ok().json(json!({
                                "issuer": issuer,
                                "jwks_uri": format!("{issuer}/jwks"),
                            }))
                        }
                    }),
                )
                .route(
                    "/jwks",
                    web::get().to(move || {
                        let (jwks, hits) = (jwks.clone(), hits.clone());
                        let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let keys = jwks.read().expect("jwks").clone();
                            HttpResponse::Ok().json(keys)
                        }
                    }),
                )
        })
        .workers(2)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Provider {
            issuer,
            jwks,
            hits,
            delay_ms,
            _server: handle,
        }
    }

    fn publish(&self, keys: &[&Signer]) {
        *self.jwks.write().expect("jwks") =
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }

    fn settings(&self) -> OidcSettings {
        OidcSettings {
            idp_address_for_server: Some(self.issuer.clone()),
            audience: Some(AUDIENCE.to_owned()),
            require_https_metadata: false,
            validate_external_certificates: true,
            claim: "scope".to_owned(),
            algorithms: ASYMMETRIC_ALGORITHMS
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            discovery_timeout: Duration::from_secs(5),
            ..OidcSettings::default()
        }
    }

    fn claims(&self) -> Value {
        json!({"iss": self.issuer, "aud": AUDIENCE, "sub": "service-a",
               "exp": now() + 300, "iat": now(), "scope": "kv:read kv:write"})
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn rejected(auth: &Authenticator, token: &str) -> String {
    match auth.authenticate(Some(&bearer(token))).await {
        Err(AuthError::Invalid(reason)) => reason,
        other => panic!("expected an invalid-token rejection, got {other:?}"),
    }
}

#[actix_web::test]
async fn a_valid_es256_or_rs256_token_is_accepted() {
    let (ec, rsa) = (Signer::ec("ec-1"), Signer::rsa("rsa-1"));
    let provider = Provider::start(&[&ec, &rsa]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    for signer in [&ec, &rsa] {
        let claims = auth
            .authenticate(Some(&bearer(&signer.token(&provider.claims()))))
            .await
            .expect("accepted");
        assert_eq!(claims.subject(), Some("service-a"));
    }
}

#[actix_web::test]
async fn missing_and_non_bearer_credentials_are_refused() {
    let ec = Signer::ec("ec-1");
    let provider = Provider::start(&[&ec]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    assert_eq!(
        auth.authenticate(None).await.expect_err("refused"),
        AuthError::Missing
    );
    assert!(matches!(
        auth.authenticate(Some("Basic dXNlcjpwYXNz")).await,
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        auth.authenticate(Some("Bearer not-a-jwt")).await,
        Err(AuthError::Invalid(_))
    ));
}

#[actix_web::test]
async fn alg_none_and_hmac_signed_with_the_public_key_are_refused() {
    let rsa = Signer::rsa("rsa-1");
    let provider = Provider::start(&[&rsa]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    let claims = provider.claims();
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "rsa-1"})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    assert!(rejected(&auth, &unsigned).await.contains("not allowed"));

    // The classic confusion attack: HS256 keyed with the provider's public key material.
    let input = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "kid": "rsa-1"})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        rsa.jwk()["n"].as_str().expect("n").as_bytes(),
    );
    let forged = format!(
        "{input}.{}",
        b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
    );
    assert!(rejected(&auth, &forged).await.contains("not allowed"));
}

#[actix_web::test]
async fn a_key_not_in_the_jwks_and_a_tampered_payload_are_refused() {
    let (known, stranger) = (Signer::ec("known"), Signer::ec("stranger"));
    let provider = Provider::start(&[&known]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    let reason = rejected(&auth, &stranger.token(&provider.claims())).await;
    assert!(reason.contains("not in the provider's key set"), "{reason}");

    // Signed by a stranger but claiming the known kid: the signature must not verify.
    let impostor = stranger.sign(&known.header(), &provider.claims());
    assert_eq!(rejected(&auth, &impostor).await, "bad signature");

    let token = known.token(&provider.claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = provider.claims();
    claims["scope"] = json!("kv:admin");
    parts[1] = b64(claims.to_string().as_bytes());
    assert_eq!(rejected(&auth, &parts.join(".")).await, "bad signature");
}

#[actix_web::test]
async fn wrong_audience_wrong_issuer_and_expired_tokens_are_refused() {
    let ec = Signer::ec("ec-1");
    let provider = Provider::start(&[&ec]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");

    let mut claims = provider.claims();
    claims["aud"] = json!(["account", "someone-else"]);
    assert!(rejected(&auth, &ec.token(&claims))
        .await
        .contains("audience"));

    let mut claims = provider.claims();
    claims["iss"] = json!("https://evil.example/realms/demo");
    assert!(rejected(&auth, &ec.token(&claims)).await.contains("issuer"));

    let mut claims = provider.claims();
    claims["exp"] = json!(now() - 120);
    assert!(rejected(&auth, &ec.token(&claims))
        .await
        .contains("expired"));

    let mut claims = provider.claims();
    claims["nbf"] = json!(now() + 600);
    assert!(rejected(&auth, &ec.token(&claims))
        .await
        .contains("not valid yet"));

    let mut claims = provider.claims();
    claims.as_object_mut().expect("object").remove("exp");
    assert!(rejected(&auth, &ec.token(&claims))
        .await
        .contains("no expiry"));
}

#[actix_web::test]
async fn small_clock_skew_is_tolerated() {
    let ec = Signer::ec("ec-1");
    let provider = Provider::start(&[&ec]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    let mut claims = provider.claims();
    claims["exp"] = json!(now() - 5);
    claims["nbf"] = json!(now() + 5);
    auth.authenticate(Some(&bearer(&ec.token(&claims))))
        .await
        .expect("within leeway");
}

#[actix_web::test]
async fn a_rotated_key_is_picked_up_without_restarting() {
    let (old, new) = (Signer::ec("2026-old"), Signer::ec("2026-new"));
    let provider = Provider::start(&[&old]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    auth.authenticate(Some(&bearer(&old.token(&provider.claims()))))
        .await
        .expect("old key");

    provider.publish(&[&new]);
    auth.authenticate(Some(&bearer(&new.token(&provider.claims()))))
        .await
        .expect("the new key after an unknown-kid refresh");
}

#[actix_web::test]
async fn scopes_and_keycloak_roles_authorize_per_operation() {
    let ec = Signer::ec("ec-1");
    let provider = Provider::start(&[&ec]).await;
    let mut settings = provider.settings();
    settings.read = vec!["kv:read".to_owned()];
    settings.delete = vec!["kv:admin".to_owned()];
    let auth = Authenticator::discover(&settings).await.expect("discover");
    let claims = auth
        .authenticate(Some(&bearer(&ec.token(&provider.claims()))))
        .await
        .expect("valid");
    auth.authorize(&claims, Operation::Read)
        .expect("has kv:read");
    auth.authorize(&claims, Operation::Write)
        .expect("nothing required");
    let refusal = auth
        .authorize(&claims, Operation::Delete)
        .expect_err("lacks kv:admin");
    let response = ApiError::from(refusal).error_response();
    assert_eq!(response.status(), 403);
    let challenge = response
        .headers()
        .get(actix_web::http::header::WWW_AUTHENTICATE)
        .expect("challenge")
        .to_str()
        .expect("ascii");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );

    let mut settings = provider.settings();
    settings.claim = "realm_access.roles".to_owned();
    settings.write = vec!["writer".to_owned()];
    let auth = Authenticator::discover(&settings).await.expect("discover");
    let mut claims = provider.claims();
    claims["realm_access"] = json!({"roles": ["offline_access", "writer"]});
    let claims = auth
        .authenticate(Some(&bearer(&ec.token(&claims))))
        .await
        .expect("valid");
    auth.authorize(&claims, Operation::Write)
        .expect("has the writer role");
}

#[actix_web::test]
async fn an_invalid_token_renders_401_with_a_bearer_challenge() {
    let response =
        ApiError::from(AuthError::Invalid("the token has expired".into())).error_response();
    assert_eq!(response.status(), 401);
    let challenge = response
        .headers()
        .get(actix_web::http::header::WWW_AUTHENTICATE)
        .expect("challenge")
        .to_str()
        .expect("ascii");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
}

#[actix_web::test]
async fn an_unreachable_provider_fails_discovery_with_its_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let settings = OidcSettings {
        idp_address_for_server: Some(format!("http://127.0.0.1:{port}/realms/x")),
        audience: Some(AUDIENCE.to_owned()),
        algorithms: vec!["ES256".to_owned()],
        discovery_timeout: Duration::from_secs(1),
        ..OidcSettings::default()
    };
    let error = Authenticator::discover(&settings)
        .await
        .expect_err("unreachable");
    assert!(error.to_string().contains(&port.to_string()), "{error}");
}

/// Against the real provider process the end-to-end tests use: tokens it issues are accepted,
/// and a key rotation at the provider is picked up without a new Authenticator.
#[actix_web::test]
async fn tokens_from_a_real_openid_provider_verify_across_a_key_rotation() {
    use kv_testkit::{OidcProvider, OIDC_AUDIENCE};

    let mut provider = OidcProvider::start("rotation-1");
    let settings = OidcSettings {
        idp_address_for_server: Some(provider.issuer()),
        audience: Some(OIDC_AUDIENCE.to_owned()),
        claim: "scope".to_owned(),
        read: vec!["kv:read".to_owned()],
        write: vec!["kv:write".to_owned()],
        algorithms: ASYMMETRIC_ALGORITHMS
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
        leeway: Duration::from_secs(30),
        jwks_refresh: Duration::from_secs(300),
        discovery_timeout: Duration::from_secs(10),
        ..OidcSettings::default()
    };
    let auth = Authenticator::discover(&settings).await.expect("discover");
    let reader_token = provider.token("kv-reader", "kv:read").await;
    let claims = auth
        .authenticate(Some(&bearer(&reader_token)))
        .await
        .expect("a token of the provider");
    auth.authorize(&claims, Operation::Read).expect("kv:read");
    assert!(matches!(
        auth.authorize(&claims, Operation::Write),
        Err(AuthError::Insufficient(_))
    ));

    provider.rotate("rotation-2", None);
    let rotated = provider.token("kv-full", "kv:read kv:write").await;
    auth.authenticate(Some(&bearer(&rotated)))
        .await
        .expect("a token signed with the rotated key");
    assert!(
        matches!(
            auth.authenticate(Some(&bearer(&reader_token))).await,
            Err(AuthError::Invalid(_))
        ),
        "a token signed with the retired key must be refused"
    );
}

#[actix_web::test]
async fn the_authorized_extractor_guards_a_route_and_leaves_others_anonymous() {
    use actix_web::test;
    use kv_core::web::auth::{operation, AuthGate, Authorized};

    async fn write(_: Authorized<operation::Write>) -> HttpResponse {
        HttpResponse::Ok().finish()
    }
    async fn health() -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    let ec = Signer::ec("ec-1");
    let provider = Provider::start(&[&ec]).await;
    let mut settings = provider.settings();
    settings.write = vec!["kv:write".to_owned()];
    let gate = AuthGate::Enabled(Arc::new(
        Authenticator::discover(&settings).await.expect("discover"),
    ));
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(gate))
            .route("/write", web::put().to(write))
            .route("/healthz", web::get().to(health)),
    )
    .await;
    let call = |token: Option<String>| {
        let mut request = test::TestRequest::put().uri("/write");
        if let Some(token) = token {
            request = request.insert_header(("Authorization", bearer(&token)));
        }
        request.to_request()
    };

    let anonymous = test::call_service(&app, call(None)).await;
    assert_eq!(anonymous.status(), 401);
    let body: Value = test::read_body_json(anonymous).await;
    assert_eq!(body["error"]["code"], "unauthorized");

    let mut claims = provider.claims();
    claims["scope"] = json!("kv:read");
    let read_only = test::call_service(&app, call(Some(ec.token(&claims)))).await;
    assert_eq!(read_only.status(), 403);

    let allowed = test::call_service(&app, call(Some(ec.token(&provider.claims())))).await;
    assert_eq!(allowed.status(), 200);

    let health =
        test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(health.status(), 200);

    let open = test::init_service(
        App::new()
            .app_data(web::Data::new(AuthGate::Disabled))
            .route("/write", web::put().to(write)),
    )
    .await;
    assert_eq!(test::call_service(&open, call(None)).await.status(), 200);
}

#[actix_web::test]
async fn a_flood_of_tokens_with_made_up_kids_costs_the_provider_at_most_one_fetch() {
    let real = Signer::ec("real");
    let provider = Provider::start(&[&real]).await;
    let auth = Arc::new(
        Authenticator::discover(&provider.settings())
            .await
            .expect("discover"),
    );
    let before = provider.hits.load(Ordering::SeqCst);
    let forged: Vec<String> = (0..300)
        .map(|i| Signer::ec(&format!("made-up-{i}")).token(&provider.claims()))
        .collect();
    let attempts = forged.iter().map(|token| {
        let auth = auth.clone();
        async move { auth.authenticate(Some(&bearer(token))).await.is_err() }
    });
    let refused = futures::future::join_all(attempts).await;
    assert!(refused.iter().all(|r| *r), "every forged token is refused");
    let fetches = provider.hits.load(Ordering::SeqCst) - before;
    println!("provider fetches under a flood of 300 forged kids: {fetches}");
    assert!(fetches <= 1, "{fetches} JWKS fetches for one flood");
    assert_eq!(auth.key_source().fetches_started(), 1);
}

#[actix_web::test]
async fn a_slow_provider_never_holds_a_request_whose_key_is_known() {
    let real = Signer::ec("real");
    let provider = Provider::start(&[&real]).await;
    let mut settings = provider.settings();
    settings.jwks_refresh = Duration::from_secs(1);
    let auth = Authenticator::discover(&settings).await.expect("discover");
    provider.delay_ms.store(5_000, Ordering::SeqCst);
    // Past the first background refresh, which now hangs at the provider.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let token = real.token(&provider.claims());
    let started = std::time::Instant::now();
    for _ in 0..20 {
        auth.authenticate(Some(&bearer(&token)))
            .await
            .expect("the last good key set verifies");
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "20 verifications took {:?} while the provider hung",
        started.elapsed()
    );
}

#[actix_web::test]
async fn a_request_that_gives_up_does_not_spend_the_unknown_kid_budget() {
    let (old, new) = (Signer::ec("old"), Signer::ec("new"));
    let provider = Provider::start(&[&old]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    provider.delay_ms.store(300, Ordering::SeqCst);
    provider.publish(&[&old, &new]);
    let token = new.token(&provider.claims());
    // The caller goes away while the fetch it started is still at the provider.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(20),
        auth.authenticate(Some(&bearer(&token))),
    )
    .await;
    assert!(gave_up.is_err(), "the first call was meant to be cancelled");
    auth.authenticate(Some(&bearer(&token)))
        .await
        .expect("the next call gets the key the cancelled one asked for");
}

#[actix_web::test]
async fn a_key_rotated_in_is_accepted_within_one_interval_despite_made_up_kids() {
    let (old, new) = (Signer::ec("old"), Signer::ec("new"));
    let provider = Provider::start(&[&old]).await;
    let mut settings = provider.settings();
    settings.jwks_refresh = Duration::from_secs(2);
    let auth = Authenticator::discover(&settings).await.expect("discover");
    // Someone spends the unknown-kid budget just before the real rotation.
    let forged = Signer::ec("made-up").token(&provider.claims());
    assert!(auth.authenticate(Some(&bearer(&forged))).await.is_err());
    provider.publish(&[&new]);
    let token = new.token(&provider.claims());
    let started = std::time::Instant::now();
    loop {
        assert!(auth.authenticate(Some(&bearer(&forged))).await.is_err());
        if auth.authenticate(Some(&bearer(&token))).await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the rotated key was not picked up within one interval"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn an_id_token_or_a_refresh_token_is_not_taken_for_an_access_token() {
    let signer = Signer::ec("k");
    let provider = Provider::start(&[&signer]).await;
    let auth = Authenticator::discover(&provider.settings())
        .await
        .expect("discover");
    let mut header = signer.header();
    header["typ"] = json!("id_token");
    let reason = rejected(&auth, &signer.sign(&header, &provider.claims())).await;
    assert!(reason.contains("not an access token"), "{reason}");
    for typ in ["ID", "Refresh"] {
        let mut claims = provider.claims();
        claims["typ"] = json!(typ);
        let reason = rejected(&auth, &signer.token(&claims)).await;
        assert!(reason.contains("not an access token"), "{typ}: {reason}");
    }
    for typ in ["JWT", "at+jwt", "application/at+jwt"] {
        let mut header = signer.header();
        header["typ"] = json!(typ);
        auth.authenticate(Some(&bearer(&signer.sign(&header, &provider.claims()))))
            .await
            .unwrap_or_else(|e| panic!("{typ} is an access token: {e:?}"));
    }
    let mut claims = provider.claims();
    claims["typ"] = json!("Bearer");
    auth.authenticate(Some(&bearer(&signer.token(&claims))))
        .await
        .expect("Keycloak's access tokens say Bearer");
}

#[actix_web::test]
async fn with_an_allow_list_only_the_listed_clients_tokens_are_accepted() {
    let signer = Signer::ec("k");
    let provider = Provider::start(&[&signer]).await;
    let mut settings = provider.settings();
    settings.allowed_clients = vec!["orders".to_owned()];
    let auth = Authenticator::discover(&settings).await.expect("discover");
    let mut claims = provider.claims();
    claims["azp"] = json!("orders");
    auth.authenticate(Some(&bearer(&signer.token(&claims))))
        .await
        .expect("a listed client");
    let mut claims = provider.claims();
    claims["client_id"] = json!("orders");
    auth.authenticate(Some(&bearer(&signer.token(&claims))))
        .await
        .expect("a listed client named by RFC 9068's client_id");
    for other in [Some("billing"), None] {
        let mut claims = provider.claims();
        if let Some(other) = other {
            claims["azp"] = json!(other);
        }
        let reason = rejected(&auth, &signer.token(&claims)).await;
        assert!(reason.contains("KV_API_AUTH_ALLOWED_CLIENTS"), "{reason}");
    }
}
