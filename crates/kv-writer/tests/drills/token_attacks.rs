//! Drill 5 (docs/reliability.md): forged, stolen-and-edited, expired, misdirected and
//! under-scoped tokens against every protected route of the real kv-writer and kv-reader, with
//! auth on and a real OpenID provider process (`scripts/oidc/provider.mjs`) issuing the tokens.
//!
//! Every attack must be refused with `401` (`403` for the under-scoped token) carrying the JSON
//! error contract and a `WWW-Authenticate: Bearer` challenge, and refused *for its own reason*
//! (the challenge's `error_description`), so an attack stopped by an unrelated check does not
//! pass for a defended one. A proper token must be accepted on every route, before and after a
//! key rotation at the provider, and the retired key's tokens must be refused after it, with no
//! restart of either service.
//!
//! The services run with `KV_API_AUTH_LEEWAY_SECONDS=1` (default 30) so that a token of the
//! provider's `kv-short` client (2 s lifetime) is seen accepted, then expired a few seconds
//! later, without waiting half a minute.

use crate::{reader, WRITER};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use kv_testkit::openapi::{fill_parameters, Document};
use kv_testkit::service_env;
use kv_testkit::{eventually, Broker, OidcProvider, Service, OIDC_AUDIENCE};
use reqwest::Method;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

/// Every scope the services know.
const ALL_SCOPES: &str = "kv:read kv:write kv:delete kv:admin";
/// The services' `KV_API_AUTH_LEEWAY_SECONDS` in this drill.
const LEEWAY_SECONDS: f64 = 1.0;
/// A resource of the provider whose tokens carry another audience (`OTHER_AUDIENCE`).
const OTHER_AUDIENCE: &str = "urn:kv-other";
const DEADLINE: Duration = Duration::from_secs(30);
/// A private key of nobody's provider (test-only), for tokens signed by a stranger.
const STRANGER_RSA_KEY: &str =
    include_str!("../../../kv-core/tests/fixtures/test-only-rsa-key.pem");

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A JWT's header and claims, decoded.
fn decode(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let segment = token.split('.').nth(i).expect("a JWT segment");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).expect("base64url")).expect("JSON")
    };
    (part(0), part(1))
}

/// `header.claims`, the JWS signing input.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{input}.{}",
        b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

fn stranger_rsa() -> RsaKeyPair {
    let body: String = STRANGER_RSA_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    RsaKeyPair::from_pkcs8(&STANDARD.decode(body).expect("PEM body")).expect("RSA key")
}

fn rs256(pair: &RsaKeyPair, header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("sign");
    format!("{input}.{}", b64(&signature))
}

fn es256(pair: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let signature = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("sign");
    format!("{input}.{}", b64(signature.as_ref()))
}

/// DER: a tag with its definite length and content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        let length = content.len().to_be_bytes();
        let significant: Vec<u8> = length.iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | significant.len() as u8);
        out.extend(significant);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding the unsigned big-endian `bytes`.
fn der_unsigned(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The forms in which an RSA public key is commonly handed to an HMAC: what a confused
/// verifier would use as the secret. `token`, signed with the key, proves the encoding right.
fn public_key_forms(jwk: &Value, token: &str) -> Vec<(&'static str, Vec<u8>)> {
    let field = |name: &str| jwk[name].as_str().expect("RSA JWK field").to_owned();
    let (n_text, e_text) = (field("n"), field("e"));
    let n = URL_SAFE_NO_PAD.decode(&n_text).expect("n");
    let e = URL_SAFE_NO_PAD.decode(&e_text).expect("e");
    let pkcs1 = der(0x30, &[der_unsigned(&n), der_unsigned(&e)].concat());
    let rsa_encryption = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let spki = der(
        0x30,
        &[
            der(0x30, &rsa_encryption),
            der(0x03, &[&[0u8][..], &pkcs1].concat()),
        ]
        .concat(),
    );
    let spki_pem = pem("PUBLIC KEY", &spki);
    let (input, signature) = token.rsplit_once('.').expect("a signed JWT");
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &pkcs1)
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).expect("signature"),
        )
        .expect("the DER encoding of the provider's public key");
    vec![
        ("PEM (SubjectPublicKeyInfo)", spki_pem.clone().into_bytes()),
        (
            "PEM without the final newline",
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        ("PEM (PKCS#1)", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        ("DER (SubjectPublicKeyInfo)", spki),
        ("DER (PKCS#1)", pkcs1),
        ("n as published (base64url)", n_text.into_bytes()),
        ("n as bytes", n),
        ("e as published", e_text.into_bytes()),
        ("the JWK as JSON", jwk.to_string().into_bytes()),
    ]
}

/// The provider's published key `kid`, fetched the way a service finds it (discovery, then
/// `jwks_uri`).
async fn published_key(http: &reqwest::Client, issuer: &str, kid: &str) -> Value {
    let discovery: Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("discovery JSON");
    let jwks: Value = http
        .get(discovery["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .expect("JWKS")
        .json()
        .await
        .expect("JWKS JSON");
    jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|key| key["kid"] == kid)
        .cloned()
        .unwrap_or_else(|| panic!("no key {kid} in {jwks}"))
}

/// An access token from `issuer` for `client`, optionally for another resource (audience).
async fn token(
    http: &reqwest::Client,
    issuer: &str,
    client: &str,
    scope: &str,
    resource: Option<&str>,
) -> String {
    let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let response = http
        .post(format!("{issuer}/token"))
        .basic_auth(client, Some(format!("{client}-secret")))
        .form(&form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    let body: Value = response.json().await.expect("token response");
    assert!(status.is_success(), "token refused: {status} {body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Writer,
    Reader,
}

/// One protected operation of a service, with a request the route would serve.
#[derive(Debug, Clone)]
struct Route {
    side: Side,
    method: Method,
    path: String,
    body: Option<Value>,
    raw: bool,
}

impl Route {
    fn name(&self) -> String {
        let service = match self.side {
            Side::Writer => "kv-writer",
            Side::Reader => "kv-reader",
        };
        format!("{service} {} {}", self.method, self.path)
    }
}

/// Every operation of the service's served OpenAPI document that needs a token, with the
/// document's example body.
async fn protected_routes(http: &reqwest::Client, service: &Service, side: Side) -> Vec<Route> {
    let yaml = http
        .get(service.url("/openapi.yaml"))
        .send()
        .await
        .expect("the OpenAPI document")
        .text()
        .await
        .expect("YAML");
    let document = Document::parse(&yaml);
    document
        .operations()
        .into_iter()
        .filter(|(_, anonymous)| !anonymous)
        .map(|((method, path), _)| {
            let json = document.takes_json(&method, &path);
            let example = &document.get()["paths"][&path][method.to_lowercase()]["requestBody"]
                ["content"]["application/json"]["example"];
            Route {
                side,
                method: Method::from_bytes(method.as_bytes()).expect("method"),
                path: fill_parameters(&path),
                body: json.then(|| {
                    if example.is_null() {
                        json!({})
                    } else {
                        example.clone()
                    }
                }),
                raw: !json && (method == "PUT" || method == "POST"),
            }
        })
        .collect()
}

/// What a service answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    code: Option<String>,
}

impl Answer {
    fn refused(&self) -> bool {
        self.status == 401 || self.status == 403
    }

    /// The challenge's `error_description`.
    fn reason(&self) -> &str {
        self.challenge
            .as_deref()
            .and_then(|c| c.split("error_description=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
    }
}

async fn call(
    http: &reqwest::Client,
    service: &Service,
    route: &Route,
    authorization: Option<&str>,
) -> Answer {
    let mut request = http.request(route.method.clone(), service.url(&route.path));
    if let Some(body) = &route.body {
        request = request.json(body);
    } else if route.raw {
        request = request.body("drill value");
    }
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let response = request.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        challenge,
        code: body["error"]["code"].as_str().map(str::to_owned),
    }
}

/// How an attack must be refused.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 401 with the bare `Bearer realm="kv"` challenge.
    Missing,
    /// 401 with `error="invalid_token"` and a description holding one of these.
    Invalid(&'static [&'static str]),
    /// 403 with `error="insufficient_scope"`.
    Insufficient,
}

#[derive(Debug)]
struct Attack {
    name: String,
    /// The `Authorization` header sent to the writer and to the reader.
    writer: Option<String>,
    reader: Option<String>,
    expect: Expect,
}

impl Attack {
    fn same(name: impl Into<String>, authorization: Option<String>, expect: Expect) -> Attack {
        Attack {
            name: name.into(),
            writer: authorization.clone(),
            reader: authorization,
            expect,
        }
    }

    fn bearer(name: impl Into<String>, token: &str, expect: Expect) -> Attack {
        Attack::same(name, Some(format!("Bearer {token}")), expect)
    }
}

/// What is wrong with `answer` as the refusal `expect` asks for: `Err(true)` when the request
/// was not refused at all.
fn judge(answer: &Answer, expect: Expect) -> Result<(), (bool, String)> {
    if !answer.refused() {
        return Err((true, format!("accepted with {}", answer.status)));
    }
    let challenge = answer.challenge.as_deref().unwrap_or_default();
    let (status, code, error) = match expect {
        Expect::Missing => (401, "unauthorized", None),
        Expect::Invalid(_) => (401, "unauthorized", Some(r#"error="invalid_token""#)),
        Expect::Insufficient => (403, "forbidden", Some(r#"error="insufficient_scope""#)),
    };
    let problem = if answer.status != status {
        Some(format!("status {} instead of {status}", answer.status))
    } else if answer.code.as_deref() != Some(code) {
        Some(format!("error code {:?} instead of {code}", answer.code))
    } else if !challenge.starts_with("Bearer ") {
        Some(format!("WWW-Authenticate {:?}", answer.challenge))
    } else if error.is_some_and(|e| !challenge.contains(e))
        || (error.is_none() && challenge.contains("error="))
    {
        Some(format!("challenge {challenge:?}"))
    } else if let Expect::Invalid(reasons) = expect {
        (!reasons.iter().any(|r| answer.reason().contains(r))).then(|| {
            format!(
                "refused for {:?}, not for one of {reasons:?}",
                answer.reason()
            )
        })
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err((false, p)))
}

/// The tally of attacks sent.
#[derive(Debug, Default)]
struct Tally {
    attacks: usize,
    accepted: usize,
    failures: Vec<String>,
}

impl Tally {
    async fn run(
        &mut self,
        http: &reqwest::Client,
        services: [&Service; 2],
        routes: &[Route],
        attack: &Attack,
    ) {
        self.attacks += 1;
        for route in routes {
            let (service, authorization) = match route.side {
                Side::Writer => (services[0], &attack.writer),
                Side::Reader => (services[1], &attack.reader),
            };
            let answer = call(http, service, route, authorization.as_deref()).await;
            if let Err((accepted, problem)) = judge(&answer, attack.expect) {
                self.accepted += usize::from(accepted);
                self.failures
                    .push(format!("{}: {}: {problem}", attack.name, route.name()));
            }
        }
    }
}

/// Routes on which `token` is not accepted (refused, or failing on the server).
async fn not_accepted(
    http: &reqwest::Client,
    services: [&Service; 2],
    routes: &[Route],
    token: &str,
) -> Vec<String> {
    let mut refused = Vec::new();
    for route in routes {
        let service = match route.side {
            Side::Writer => services[0],
            Side::Reader => services[1],
        };
        let answer = call(http, service, route, Some(&format!("Bearer {token}"))).await;
        if answer.refused() || answer.status >= 500 {
            refused.push(format!("{}: {answer:?}", route.name()));
        }
    }
    refused
}

#[tokio::test]
#[ignore = "a drill: make drills runs it"]
async fn drill_token_attacks_on_every_protected_route_of_both_services_are_all_refused() {
    let http = reqwest::Client::new();
    let broker = Broker::start();
    let topic = broker.create_topic("drill-tokens", 1).await;
    let keys = tempfile::tempdir().expect("key folder");
    let key_file = keys.path().join("signing-key.json");
    let key_file = key_file.to_str().expect("UTF-8 path");
    let mut idp = OidcProvider::start_with("drill-key-1", &[("EXPORT_KEY_FILE", key_file)]);
    // A second provider signing with the very same key (and kid), under its own issuer: only
    // the issuer check stands between its tokens and the services.
    let impostor = OidcProvider::start_with("unused", &[("IMPORT_KEY_FILE", key_file)]);

    let mut env = service_env(&broker, &topic);
    env.extend([
        ("KV_API_DISABLE_API_AUTH", "false".to_owned()),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
        ("KV_API_AUTH_DELETE", "kv:delete".to_owned()),
        ("KV_API_AUTH_LEEWAY_SECONDS", LEEWAY_SECONDS.to_string()),
    ]);
    env.extend(idp.service_env());
    let mut writer = Service::start(WRITER, &env);
    let mut reader = Service::start(reader(), &env);
    let services = [&writer, &reader];
    let mut routes = protected_routes(&http, &writer, Side::Writer).await;
    routes.extend(protected_routes(&http, &reader, Side::Reader).await);
    assert!(
        routes.iter().any(|r| r.side == Side::Writer)
            && routes.iter().any(|r| r.side == Side::Reader),
        "{routes:?}"
    );

    // Real tokens: accepted everywhere, and the material the forgeries start from.
    let issuer = idp.issuer();
    let full = idp.token("kv-full", ALL_SCOPES).await;
    let short = token(&http, &issuer, "kv-short", ALL_SCOPES, None).await;
    let firsts: Vec<Route> = [Side::Writer, Side::Reader]
        .iter()
        .filter_map(|side| routes.iter().find(|r| r.side == *side).cloned())
        .collect();
    let short_refused = not_accepted(&http, services, &firsts, &short).await;
    let short_exp = decode(&short).1["exp"].as_f64().expect("exp");
    assert_eq!(
        not_accepted(&http, services, &routes, &full).await,
        Vec::<String>::new(),
        "a proper token must be accepted on every route"
    );
    assert!(
        short_refused.is_empty(),
        "the short-lived token must work before it expires: {short_refused:?}"
    );
    let read_only = idp.token("kv-reader", "kv:read").await;
    let write_only = idp.token("kv-full", "kv:write").await;
    let other_audience = token(&http, &issuer, "kv-full", ALL_SCOPES, Some(OTHER_AUDIENCE)).await;
    assert_eq!(decode(&other_audience).1["aud"], OTHER_AUDIENCE);
    let foreign_issuer = impostor.token("kv-full", ALL_SCOPES).await;
    assert_eq!(decode(&foreign_issuer).0["kid"], "drill-key-1");

    let (header, claims) = decode(&full);
    let kid = header["kid"].as_str().expect("kid").to_owned();
    assert_eq!(claims["aud"], OIDC_AUDIENCE);
    let published = published_key(&http, &issuer, &kid).await;
    let rsa = stranger_rsa();
    let rng = SystemRandom::new();
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("EC key");
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
        &rng,
    )
    .expect("EC key");
    let point = ec.public_key().as_ref();
    let ec_jwk =
        json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])});

    let bad_signature: &[&str] = &["bad signature"];
    let mut attacks = vec![
        Attack::same("no token", None, Expect::Missing),
        Attack::same(
            "Basic credentials",
            Some(format!(
                "Basic {}",
                STANDARD.encode("kv-full:kv-full-secret")
            )),
            Expect::Invalid(&["Bearer"]),
        ),
        Attack::bearer("garbage", "garbage", Expect::Invalid(&["not a signed JWT"])),
        Attack::bearer(
            "garbage in three parts",
            "not.a.token",
            Expect::Invalid(&["malformed JWT header"]),
        ),
        Attack::bearer(
            "alg none",
            &format!(
                "{}.",
                signing_input(
                    &json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
                    &claims
                )
            ),
            Expect::Invalid(&["algorithm none is not allowed"]),
        ),
        Attack::bearer(
            "alg NONE",
            &format!(
                "{}.",
                signing_input(&json!({"alg": "NONE", "typ": "JWT"}), &claims)
            ),
            Expect::Invalid(&["algorithm NONE is not allowed"]),
        ),
        Attack::bearer(
            "signature stripped",
            &format!("{}.", signing_input(&header, &claims)),
            Expect::Invalid(bad_signature),
        ),
    ];
    for (form, secret) in public_key_forms(&published, &full) {
        let forged = hs256(
            &json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
            &claims,
            &secret,
        );
        attacks.push(Attack::bearer(
            format!("HS256 keyed with the provider's public key, {form}"),
            &forged,
            Expect::Invalid(&["algorithm HS256 is not allowed"]),
        ));
    }
    let mut widened = decode(&read_only).1;
    widened["scope"] = json!(ALL_SCOPES);
    let read_only_header = decode(&read_only).0;
    let read_only_signature = read_only.rsplit('.').next().expect("signature");
    let mut extended = claims.clone();
    extended["exp"] = json!(claims["exp"].as_i64().expect("exp") + 86_400);
    let full_signature = full.rsplit('.').next().expect("signature");
    attacks.extend([
        Attack::bearer(
            "unknown kid (a stranger's key)",
            &rs256(
                &rsa,
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": "drill-stranger"}),
                &claims,
            ),
            Expect::Invalid(&["not in the provider's key set"]),
        ),
        Attack::bearer(
            "a stranger's key under the provider's kid",
            &rs256(
                &rsa,
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}),
                &claims,
            ),
            Expect::Invalid(bad_signature),
        ),
        Attack::bearer(
            "a stranger's key embedded in the header (jwk), no kid",
            &es256(
                &ec,
                &json!({"alg": "ES256", "typ": "at+jwt", "jwk": ec_jwk}),
                &claims,
            ),
            Expect::Invalid(&["bad signature", "not in the provider's key set"]),
        ),
        Attack::bearer(
            "tampered payload (scope widened)",
            &format!(
                "{}.{read_only_signature}",
                signing_input(&read_only_header, &widened)
            ),
            Expect::Invalid(bad_signature),
        ),
        Attack::bearer(
            "tampered payload (expiry extended)",
            &format!("{}.{full_signature}", signing_input(&header, &extended)),
            Expect::Invalid(bad_signature),
        ),
        Attack::bearer(
            "wrong audience",
            &other_audience,
            Expect::Invalid(&["audience"]),
        ),
        Attack::bearer(
            "wrong issuer (a second provider with the same key)",
            &foreign_issuer,
            Expect::Invalid(&["unexpected issuer"]),
        ),
        Attack {
            name: "under-scoped".to_owned(),
            writer: Some(format!("Bearer {read_only}")),
            reader: Some(format!("Bearer {write_only}")),
            expect: Expect::Insufficient,
        },
    ]);

    let mut tally = Tally::default();
    for attack in &attacks {
        tally.run(&http, services, &routes, attack).await;
    }

    // Expired: the short-lived token, once its expiry plus the leeway passed.
    eventually(
        "the short-lived token to expire beyond the leeway",
        DEADLINE,
        || async move { (now() > short_exp + LEEWAY_SECONDS + 0.5).then_some(()) },
    )
    .await;
    let expired = Attack::bearer("expired", &short, Expect::Invalid(&["expired"]));
    tally.run(&http, services, &routes, &expired).await;

    // Key rotation at the provider: new tokens work without restarting anything, tokens of
    // the retired key do not. A forged unknown kid above may have used the services' JWKS
    // refresh for the next 10 s, so the first new token is polled for.
    idp.rotate("drill-key-2", None);
    let rotated = idp.token("kv-full", ALL_SCOPES).await;
    for route in &firsts {
        let service = match route.side {
            Side::Writer => &writer,
            Side::Reader => &reader,
        };
        let authorization = format!("Bearer {rotated}");
        eventually("a token of the new key accepted", DEADLINE, || {
            let answer = call(&http, service, route, Some(&authorization));
            async move { (!answer.await.refused()).then_some(()) }
        })
        .await;
    }
    let rotation_refused = not_accepted(&http, services, &routes, &rotated).await;
    let retired = Attack::bearer(
        "a token of the retired key",
        &full,
        Expect::Invalid(&["not in the provider's key set"]),
    );
    tally.run(&http, services, &routes, &retired).await;
    let restarts = usize::from(!writer.is_running()) + usize::from(!reader.is_running());
    let rotation = rotation_refused.is_empty() && restarts == 0;

    let malformed = tally.failures.len() - tally.accepted;
    println!(
        "drill token attacks: {} attacks x {} routes, accepted {}{}, rotation {}",
        tally.attacks,
        routes.len(),
        tally.accepted,
        if malformed > 0 {
            format!(", refused without the contract {malformed}")
        } else {
            String::new()
        },
        if rotation {
            "picked up"
        } else {
            "NOT picked up"
        },
    );
    assert!(
        tally.failures.is_empty(),
        "attacks not refused as they must be:\n{}\n--- kv-writer:\n{}\n--- kv-reader:\n{}",
        tally.failures.join("\n"),
        writer.output(),
        reader.output()
    );
    assert_eq!(
        rotation_refused,
        Vec::<String>::new(),
        "after the rotation a new token must be accepted everywhere"
    );
    assert_eq!(restarts, 0, "no service may restart");
}
