//! Every variable the services read: the one table `--help` prints and the settings code is
//! checked against (in debug builds each getter asserts its variable, and its built-in default,
//! are here), so the two cannot drift. docs/configuration.md holds the long explanations; a test
//! checks that it names every variable of this table.

use std::fmt::Write as _;

/// Which binary reads a group's variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer,
    Reader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Kafka,
    Service,
    Oidc,
    Encryption,
    Tracing,
    Writer,
    Reader,
}

impl Group {
    const ALL: [Group; 7] = [
        Group::Kafka,
        Group::Service,
        Group::Oidc,
        Group::Encryption,
        Group::Tracing,
        Group::Writer,
        Group::Reader,
    ];

    fn title(self) -> &'static str {
        match self {
            Group::Kafka => "Kafka connection (any other librdkafka property: KAFKA_<NAME>, e.g. KAFKA_SASL_USERNAME)",
            Group::Service => "Service",
            Group::Oidc => "OpenID Connect (auth)",
            Group::Encryption => "Encryption on the topic",
            Group::Tracing => "Export of request spans over OTLP (OpenTelemetry's variables)",
            Group::Writer => "kv-writer",
            Group::Reader => "kv-reader",
        }
    }

    pub fn read_by(self, role: Role) -> bool {
        match self {
            Group::Writer => role == Role::Writer,
            Group::Reader => role == Role::Reader,
            Group::Kafka | Group::Service | Group::Oidc | Group::Encryption | Group::Tracing => {
                true
            }
        }
    }
}

/// A variable's value when it is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// Must be set.
    Required,
    /// Nothing: the feature it configures is off or derived from others.
    Unset,
    /// This literal, exactly as the getter's built-in default prints.
    Value(&'static str),
    /// Depends on other variables; said in words.
    Described(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    pub group: Group,
    pub default: Default,
    pub help: &'static str,
}

pub fn find(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|var| var.name == name)
}

/// The variables' part of a binary's `--help`: grouped, each with its default.
pub fn help(role: Role) -> String {
    let mut text =
        String::from("Environment variables (also accepted as keys of KV_API_CONFIG_FILE):\n");
    for group in Group::ALL.into_iter().filter(|g| g.read_by(role)) {
        let _ = write!(text, "\n{}:\n", group.title());
        for var in VARS.iter().filter(|var| var.group == group) {
            let default = match var.default {
                Default::Required => " [required]".to_owned(),
                Default::Unset => String::new(),
                Default::Value(value) => format!(" [default: {value}]"),
                Default::Described(words) => format!(" [default: {words}]"),
            };
            let _ = writeln!(text, "  {}{default}\n      {}", var.name, var.help);
        }
    }
    text
}

/// Debug builds only: the getter's variable and built-in default must be in the table.
#[track_caller]
pub(super) fn check(name: &str, default: Option<&dyn std::fmt::Display>) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(var) = find(name) else {
        panic!("{name} is read by the settings code but missing from settings::catalogue::VARS");
    };
    if let (Some(default), Default::Value(listed)) = (default, var.default) {
        let default = default.to_string();
        assert_eq!(
            default, listed,
            "{name}: the getter's default {default:?} differs from the catalogue's {listed:?}"
        );
    }
}

pub static VARS: &[Var] = &[
    Var {
        name: "KAFKA_BOOTSTRAP_SERVERS",
        group: Group::Kafka,
        default: Default::Required,
        help: "host:port,... of the brokers (bootstrap.servers)",
    },
    Var {
        name: "KAFKA_SECURITY_PROTOCOL",
        group: Group::Kafka,
        default: Default::Value("plaintext"),
        help: "plaintext, ssl, sasl_plaintext, sasl_ssl; the .NET names Ssl, SaslSsl, ... are accepted",
    },
    Var {
        name: "KAFKA_SASL_MECHANISM",
        group: Group::Kafka,
        default: Default::Unset,
        help: "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, GSSAPI; the .NET names ScramSha256, ... are accepted",
    },
    Var {
        name: "KAFKA_SSL_CA_PEM_LOCATION",
        group: Group::Kafka,
        default: Default::Unset,
        help: "file with the CA certificates that signed the brokers' (ssl.ca.location)",
    },
    Var {
        name: "KAFKA_SSL_CERTIFICATE_LOCATION",
        group: Group::Kafka,
        default: Default::Unset,
        help: "the client certificate, for mutual TLS (ssl.certificate.location)",
    },
    Var {
        name: "KAFKA_SSL_KEY_LOCATION",
        group: Group::Kafka,
        default: Default::Unset,
        help: "the client's private key (ssl.key.location)",
    },
    Var {
        name: "KAFKA_SSL_KEY_PASSWORD_LOCATION",
        group: Group::Kafka,
        default: Default::Unset,
        help: "a *file* whose first line is the key's password (ssl.key.password)",
    },
    Var {
        name: "KV_API_KAFKA_KEY_VALUE_TOPIC",
        group: Group::Service,
        default: Default::Required,
        help: "the topic; checked against Kafka's naming rule",
    },
    Var {
        name: "KV_API_LISTEN",
        group: Group::Service,
        default: Default::Value("0.0.0.0:8080"),
        help: "host:port to listen on; port 0 picks a free port (logged)",
    },
    Var {
        name: "ASPNETCORE_URLS",
        group: Group::Service,
        default: Default::Unset,
        help: "original: used when KV_API_LISTEN is unset; the first http:// entry, +/* meaning every interface (http://+:8080)",
    },
    Var {
        name: "KV_API_DISABLE_API_AUTH",
        group: Group::Service,
        default: Default::Value("false"),
        help: "true serves without authentication: development only, logged loudly at start",
    },
    Var {
        name: "RUST_LOG",
        group: Group::Service,
        default: Default::Unset,
        help: "a tracing filter (info, info,kv_reader=debug); wins over the next",
    },
    Var {
        name: "LOGGING__LOGLEVEL__DEFAULT",
        group: Group::Service,
        default: Default::Value("Information"),
        help: "original: Trace, Debug, Information, Warning, Error, Critical, None",
    },
    Var {
        name: "KV_API_LOG_FORMAT",
        group: Group::Service,
        default: Default::Value("text"),
        help: "text for terminals, json for one JSON object per line",
    },
    Var {
        name: "KV_API_REQUIRE_COMPACTED_TOPIC",
        group: Group::Service,
        default: Default::Value("false"),
        help: "both roles read the topic's configuration at start-up (DescribeConfigs) and log UNSAFE TOPIC CONFIGURATION when it is not compacted, or keeps a ...",
    },
    Var {
        name: "KV_API_STATE_RULES",
        group: Group::Service,
        default: Default::Unset,
        help: "path of a YAML rules file: keys under a rule's prefix are computed from agents' reports (PUT /v1/reports/{key}) by majority, at least one, all, latest or count, with optional holds and a sink topic; both roles must read the same file",
    },
    Var {
        name: "KV_API_DISABLE_READ",
        group: Group::Service,
        default: Default::Value("false"),
        help: "original: true made an instance write-only, which is kv-writer: kv-reader refuses it at start-up",
    },
    Var {
        name: "KV_API_DISABLE_WRITE",
        group: Group::Service,
        default: Default::Value("false"),
        help: "original: true made an instance read-only, which is kv-reader: kv-writer refuses it at start-up",
    },
    Var {
        name: "KV_API_CONFIG_FILE",
        group: Group::Service,
        default: Default::Unset,
        help: "a YAML, TOML or JSON file whose top-level keys are these variables; the environment wins over it",
    },
    Var {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        group: Group::Tracing,
        default: Default::Unset,
        help: "the collector's OTLP/HTTP base URL (http://collector:4318): each request's span is exported to its /v1/traces; unset, nothing is exported and the variables below are not read",
    },
    Var {
        name: "OTEL_EXPORTER_OTLP_PROTOCOL",
        group: Group::Tracing,
        default: Default::Value("http/protobuf"),
        help: "the only protocol built in; any other value is refused",
    },
    Var {
        name: "OTEL_EXPORTER_OTLP_HEADERS",
        group: Group::Tracing,
        default: Default::Unset,
        help: "name=value,... sent with every export (values percent-encoded), e.g. a collector's API key",
    },
    Var {
        name: "OTEL_EXPORTER_OTLP_TIMEOUT",
        group: Group::Tracing,
        default: Default::Value("10000"),
        help: "milliseconds one export may take; a failed export's spans are dropped and counted",
    },
    Var {
        name: "OTEL_SERVICE_NAME",
        group: Group::Tracing,
        default: Default::Described("kv-writer or kv-reader"),
        help: "the spans' service.name",
    },
    Var {
        name: "OTEL_BSP_MAX_QUEUE_SIZE",
        group: Group::Tracing,
        default: Default::Value("2048"),
        help: "spans waiting for export; past it new spans are dropped and counted, and no request ever waits",
    },
    Var {
        name: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        group: Group::Tracing,
        default: Default::Value("512"),
        help: "most spans in one export, at most OTEL_BSP_MAX_QUEUE_SIZE",
    },
    Var {
        name: "OTEL_BSP_SCHEDULE_DELAY",
        group: Group::Tracing,
        default: Default::Value("5000"),
        help: "milliseconds a span waits at most for its batch to fill",
    },
    Var {
        name: "OIDC_IDP_ADDRESS_FOR_SERVER",
        group: Group::Oidc,
        default: Default::Unset,
        help: "issuer address the service uses for discovery",
    },
    Var {
        name: "OIDC_IDP_ADDRESS_FOR_USERS",
        group: Group::Oidc,
        default: Default::Unset,
        help: "issuer address users see (split-horizon set-ups such as compose); accepted as iss",
    },
    Var {
        name: "OIDC_AUDIENCE",
        group: Group::Oidc,
        default: Default::Unset,
        help: "the audience tokens must carry",
    },
    Var {
        name: "OIDC_REQUIRE_HTTPS_METADATA",
        group: Group::Oidc,
        default: Default::Value("true"),
        help: "refuse a provider (and key set) reached over plain HTTP",
    },
    Var {
        name: "OIDC_HTTPCLIENT_VALIDATE_EXTERNAL_CERTIFICATES",
        group: Group::Oidc,
        default: Default::Value("true"),
        help: "validate the provider's TLS certificate",
    },
    Var {
        name: "OIDC_JWKS_URI",
        group: Group::Oidc,
        default: Default::Described("discovered"),
        help: "where to fetch the provider's keys (split horizon: the address the server can reach)",
    },
    Var {
        name: "OIDC_TOKEN_ENDPOINT",
        group: Group::Oidc,
        default: Default::Unset,
        help: "accepted for compatibility; the services only validate tokens, so they do not use them",
    },
    Var {
        name: "OIDC_AUTHORIZATION_ENDPOINT",
        group: Group::Oidc,
        default: Default::Unset,
        help: "accepted for compatibility; the services only validate tokens, so they do not use them",
    },
    Var {
        name: "OIDC_END_SESSION_ENDPOINT",
        group: Group::Oidc,
        default: Default::Unset,
        help: "accepted for compatibility; the services only validate tokens, so they do not use them",
    },
    Var {
        name: "KV_API_AUTH_CLAIM",
        group: Group::Oidc,
        default: Default::Value("scope"),
        help: "where scopes or roles are read: a dotted path to a space-separated string or an array (realm_access.roles for Keycloak realm roles)",
    },
    Var {
        name: "KV_API_AUTH_READ",
        group: Group::Oidc,
        default: Default::Unset,
        help: "scopes/roles of which a token needs one to read (comma or space separated); empty: any valid token",
    },
    Var {
        name: "KV_API_AUTH_WRITE",
        group: Group::Oidc,
        default: Default::Unset,
        help: "the same for writes (PUT, /store, /store/b64, batch puts)",
    },
    Var {
        name: "KV_API_AUTH_DELETE",
        group: Group::Oidc,
        default: Default::Unset,
        help: "the same for deletes (DELETE, /remove, batch deletes)",
    },
    Var {
        name: "KV_API_AUTH_ADMIN",
        group: Group::Oidc,
        default: Default::Value("kv:admin"),
        help: "the scopes or roles of which a token needs one for a reader's snapshot route (GET /admin/v1/snapshot, a copy of the whole replica)",
    },
    Var {
        name: "KV_API_AUTH_PREFIXES",
        group: Group::Oidc,
        default: Default::Unset,
        help: "per-prefix authorisation: rules `<scope-or-role> <actions> <prefix>` separated by `;` or line breaks (actions: a comma list of read, write, delete, watch, report, or *; prefix `*`: every key); a key is allowed for an action only when a rule of one of the token's scopes grants it on a prefix of the key; unset: every key; an error with KV_API_DISABLE_API_AUTH=true",
    },
    Var {
        name: "KV_API_AUTH_ALLOWED_CLIENTS",
        group: Group::Oidc,
        default: Default::Unset,
        help: "when set (comma or space separated), a token's azp (or RFC 9068's client_id) must name one of these clients",
    },
    Var {
        name: "KV_API_AUTH_ALGORITHMS",
        group: Group::Oidc,
        default: Default::Described("RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"),
        help: "accepted JWS algorithms, a subset of these",
    },
    Var {
        name: "KV_API_AUTH_LEEWAY_SECONDS",
        group: Group::Oidc,
        default: Default::Value("30"),
        help: "clock skew tolerated on exp and nbf",
    },
    Var {
        name: "KV_API_AUTH_JWKS_REFRESH_SECONDS",
        group: Group::Oidc,
        default: Default::Value("300"),
        help: "how often the provider's keys are re-fetched",
    },
    Var {
        name: "KV_API_AUTH_DISCOVERY_TIMEOUT_SECONDS",
        group: Group::Oidc,
        default: Default::Value("60"),
        help: "how long start-up keeps trying to reach the provider",
    },
    Var {
        name: "OIDC_CA_PEM_LOCATION",
        group: Group::Oidc,
        default: Default::Unset,
        help: "a PEM file of CA certificates trusted for the provider, beside the system's CA store",
    },
    Var {
        name: "KV_API_ENCRYPT_DATA_ON_KAFKA",
        group: Group::Encryption,
        default: Default::Value("false"),
        help: "encrypt records on the topic (format: wire-format.md); writers and readers of one topic must agree",
    },
    Var {
        name: "KV_API_AES_KEY",
        group: Group::Encryption,
        default: Default::Unset,
        help: "64 hex characters (256 bits); wins over the file",
    },
    Var {
        name: "KV_API_AES_KEY_LOCATION",
        group: Group::Encryption,
        default: Default::Unset,
        help: "a file whose first line is the 64 hex characters",
    },
    Var {
        name: "KAFKA_ACKS",
        group: Group::Writer,
        default: Default::Value("all"),
        help: "what acknowledges a write: all (-1), leader (1), none (0)",
    },
    Var {
        name: "KV_API_PRODUCE_TIMEOUT_MS",
        group: Group::Writer,
        default: Default::Value("10000"),
        help: "longest wait for Kafka's acknowledgement (message.timeout.ms); then 503 with Retry-After",
    },
    Var {
        name: "KV_API_MAX_KEY_BYTES",
        group: Group::Writer,
        default: Default::Value("16384"),
        help: "larger keys get 413",
    },
    Var {
        name: "KV_API_MAX_VALUE_BYTES",
        group: Group::Writer,
        default: Default::Value("1048576"),
        help: "larger values get 413, before the body is read when Content-Length says so",
    },
    Var {
        name: "KV_API_SHUTDOWN_TIMEOUT_MS",
        group: Group::Writer,
        default: Default::Value("30000"),
        help: "on SIGTERM: how long in-flight writes may finish, then the producer is flushed",
    },
    Var {
        name: "KV_API_MAX_BATCH_ITEMS",
        group: Group::Writer,
        default: Default::Value("1000"),
        help: "most writes in one POST /v1/kv:batch; more gets 413 naming items",
    },
    Var {
        name: "KV_API_MAX_BATCH_BYTES",
        group: Group::Writer,
        default: Default::Value("16777216"),
        help: "largest batch body (16 MiB); larger gets 413",
    },
    Var {
        name: "KV_API_BODY_TIMEOUT_MS",
        group: Group::Writer,
        default: Default::Value("30000"),
        help: "longest time a request body may take to arrive, counted from when the writer starts reading it; a slower body gets 408 request_timeout and the ...",
    },
    Var {
        name: "KV_API_MAX_TTL_SECONDS",
        group: Group::Writer,
        default: Default::Value("31536000"),
        help: "the longest TTL a write may ask for (a year); a longer one gets 400 naming the field",
    },
    Var {
        name: "KV_API_MAX_BUFFERED_BODY_BYTES",
        group: Group::Writer,
        default: Default::Value("67108864"),
        help: "most bytes of request bodies the writer holds at once, all requests together (64 MiB)",
    },
    Var {
        name: "KV_API_READERS",
        group: Group::Writer,
        default: Default::Unset,
        help: "readers (a base URL or a comma list, http:// or https://) a conditional write asks its outcome of; unset: If-Match, If-None-Match, ...",
    },
    Var {
        name: "KV_API_CONDITIONAL_TIMEOUT_MS",
        group: Group::Writer,
        default: Default::Value("10000"),
        help: "longest wait after Kafka's acknowledgement for a reader to tell a conditional write's outcome; then 503 outcome_unknown",
    },
    Var {
        name: "KV_API_SEED_AES_KEY",
        group: Group::Writer,
        default: Default::Described("KV_API_AES_KEY"),
        help: "migrate-seed-topic only: the original service's AES key (64 hex characters) the source topic was sealed with; wins over the file",
    },
    Var {
        name: "KV_API_SEED_AES_KEY_LOCATION",
        group: Group::Writer,
        default: Default::Described("KV_API_AES_KEY_LOCATION"),
        help: "migrate-seed-topic only: a file whose first line is that key",
    },
    Var {
        name: "KAFKA_GROUP_ID",
        group: Group::Reader,
        default: Default::Required,
        help: "the group the replica commits its progress to, so lag shows in Kafka tooling",
    },
    Var {
        name: "KAFKA_ENABLE_AUTO_COMMIT",
        group: Group::Reader,
        default: Default::Value("true"),
        help: "commit progress to the group (only offsets already in the local store)",
    },
    Var {
        name: "KAFKA_AUTO_COMMIT_INTERVAL_MS",
        group: Group::Reader,
        default: Default::Value("1000"),
        help: "how often progress is committed",
    },
    Var {
        name: "KAFKA_SCHEMA_REGISTRY_URL",
        group: Group::Reader,
        default: Default::Unset,
        help: "optional (the original required it)",
    },
    Var {
        name: "KV_API_STATE_STORAGE_TYPE",
        group: Group::Reader,
        default: Default::Described("in memory, or on disk if a location is given"),
        help: "memory or disk; the original's dict (memory) and sqlite (memory unless a location is given) are accepted as aliases and logged",
    },
    Var {
        name: "KV_API_STATE_STORAGE_DISK_LOCATION",
        group: Group::Reader,
        default: Default::Unset,
        help: "a directory (the store is kv-reader.redb inside it) or a file path",
    },
    Var {
        name: "KV_API_STATE_STORAGE_PASSWORD",
        group: Group::Reader,
        default: Default::Unset,
        help: "encrypts a disk replica at rest; original KV_API_STATE_STORAGE_SQLITE_PASSWORD is an alias",
    },
    Var {
        name: "KV_API_STATE_STORAGE_CACHE_MB",
        group: Group::Reader,
        default: Default::Value("32"),
        help: "redb's page cache, in MiB",
    },
    Var {
        name: "KV_API_STATE_STORAGE_MIN_FREE_MB",
        group: Group::Reader,
        default: Default::Value("64"),
        help: "free space (MiB) a disk store keeps beyond the next batch; below it the replica stops applying, is not ready, and resumes by itself",
    },
    Var {
        name: "KV_API_READ_YOUR_WRITES_TIMEOUT_MS",
        group: Group::Reader,
        default: Default::Value("5000"),
        help: "longest a read carrying a consistency token waits for the replica",
    },
    Var {
        name: "KV_API_MAX_READ_YOUR_WRITES_WAITERS",
        group: Group::Reader,
        default: Default::Value("10000"),
        help: "most reads waiting for their consistency token at once; one more is answered 503 not_ready with Retry-After at once",
    },
    Var {
        name: "KV_API_RESP_LISTEN",
        group: Group::Reader,
        default: Default::Unset,
        help: "host:port of the Redis-protocol (RESP) read port; off unless set (docs/api.md)",
    },
    Var {
        name: "KV_API_RESP_MAX_CONNECTIONS",
        group: Group::Reader,
        default: Default::Value("1000"),
        help: "most connections the RESP port holds at once; one more is answered an error and closed",
    },
    Var {
        name: "KV_API_RESP_MAX_UNAUTHENTICATED",
        group: Group::Reader,
        default: Default::Described("half of KV_API_RESP_MAX_CONNECTIONS"),
        help: "with auth on, most RESP connections not yet authenticated; past it the oldest of them is closed",
    },
    Var {
        name: "KV_API_RESP_AUTH_TIMEOUT_MS",
        group: Group::Reader,
        default: Default::Value("10000"),
        help: "with auth on, how long a RESP connection has from its accept to a successful AUTH",
    },
    Var {
        name: "KV_API_RESP_REQUEST_TIMEOUT_MS",
        group: Group::Reader,
        default: Default::Value("10000"),
        help: "how long a RESP request has from its first byte to its last",
    },
    Var {
        name: "KV_API_RESP_REPLY_BUDGET_BYTES",
        group: Group::Reader,
        default: Default::Value("268435456"),
        help: "most bytes of MGET replies the RESP port holds at once across its connections",
    },
    Var {
        name: "KV_API_REPLAY_PROGRESS_INTERVAL_MS",
        group: Group::Reader,
        default: Default::Value("10000"),
        help: "how often a replaying reader logs how far it got (applied/total, records/s, ETA)",
    },
    Var {
        name: "KV_API_PARTITION_DISCOVERY_INTERVAL_MS",
        group: Group::Reader,
        default: Default::Value("30000"),
        help: "how often the reader looks for partitions added to the topic",
    },
    Var {
        name: "KV_API_OWNER",
        group: Group::Reader,
        default: Default::Value("false"),
        help: "true makes this reader a candidate owner of the partitions it holds: one live candidate per partition acts on it (TTL tombstones, repairs), and another takes over within about 10 s when it dies",
    },
    Var {
        name: "KV_API_TTL_SWEEPER",
        group: Group::Reader,
        default: Default::Value("false"),
        help: "the older name of KV_API_OWNER; if both are set they must agree",
    },
    Var {
        name: "KV_API_OWNER_TOPIC",
        group: Group::Reader,
        default: Default::Described("<topic>-owners"),
        help: "the one-partition topic unsharded owner candidates hold their leases on (created when missing); sharded candidates use the shards' readiness instead",
    },
    Var {
        name: "KV_API_MAX_BATCH_GET_BYTES",
        group: Group::Reader,
        default: Default::Value("16777216"),
        help: "most value bytes one POST /v1/kv:batchGet answer may carry; a key named several times counts each time but is looked up and held once",
    },
    Var {
        name: "KV_API_SHARD",
        group: Group::Reader,
        default: Default::Described("unset: a full replica"),
        help: "i/N: this reader is shard i (from 0) of N (1 to 256) and holds only its partitions; reads of other keys are forwarded to a shard that holds them ...",
    },
    Var {
        name: "KV_API_SHARD_REPLICAS",
        group: Group::Reader,
        default: Default::Value("1"),
        help: "R, 1 to N: how many shards hold each partition",
    },
    Var {
        name: "KV_API_SHARD_PEERS",
        group: Group::Reader,
        default: Default::Described("required with N > 1"),
        help: "where every shard answers: a template with {i} (http://kv-reader-{i}.kv-reader-headless:8080) or a comma list of N URLs (http:// or https://, no ...",
    },
    Var {
        name: "KV_API_SHARD_FORWARD_TIMEOUT_MS",
        group: Group::Reader,
        default: Default::Described("KV_API_READ_YOUR_WRITES_TIMEOUT_MS + 5000"),
        help: "longest a forwarded read may take, waiting for its consistency token on the owner included; past it the next owner is tried, then 503 ...",
    },
    Var {
        name: "KV_API_BOOTSTRAP_PEERS",
        group: Group::Reader,
        default: Default::Unset,
        help: "comma list of readers (http:// or https://) a reader whose store holds no replica yet (a new one, a memory store at every start, a store emptied ...",
    },
    Var {
        name: "KV_API_BOOTSTRAP_CLIENT_ID",
        group: Group::Reader,
        default: Default::Unset,
        help: "when the peers check tokens: the client a bootstrapping reader gets an access token for the admin scope with (client-credentials grant at ...",
    },
    Var {
        name: "KV_API_BOOTSTRAP_CLIENT_SECRET",
        group: Group::Reader,
        default: Default::Unset,
        help: "when the peers check tokens: the client a bootstrapping reader gets an access token for the admin scope with (client-credentials grant at ...",
    },
    Var {
        name: "KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN",
        group: Group::Reader,
        default: Default::Value("false"),
        help: "send the bootstrap admin token to http:// peers too (a trusted network); by default it goes over https:// only",
    },
    Var {
        name: "KV_API_SNAPSHOT_CONCURRENCY",
        group: Group::Reader,
        default: Default::Value("2"),
        help: "most snapshots this reader serves at once; one more is 503 overloaded with Retry-After",
    },
    Var {
        name: "KV_API_WATCH_BUFFER_EVENTS",
        group: Group::Reader,
        default: Default::Value("10000"),
        help: "most recent changes the replica keeps for watches (GET /v1/kv:watch): a watch resuming from an older position, or a client reading more slowly ...",
    },
    Var {
        name: "KV_API_WATCH_BUFFER_BYTES",
        group: Group::Reader,
        default: Default::Value("16777216"),
        help: "most bytes of keys and values in that buffer (16 MiB), whichever limit is reached first; the newest change is always kept",
    },
    Var {
        name: "KV_API_MAX_WATCHES",
        group: Group::Reader,
        default: Default::Value("1000"),
        help: "most watches open at once; one more is answered 503 overloaded with Retry-After",
    },
    Var {
        name: "KV_API_MAX_WATCHES_PER_CALLER",
        group: Group::Reader,
        default: Default::Value("100"),
        help: "most watches one caller may hold open at once (a token's subject with auth on, else the client's IP address); one more is answered 429 too_many_requests with Retry-After",
    },
    Var {
        name: "KAFKA_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        group: Group::Reader,
        default: Default::Unset,
        help: "user:password for the registry (Confluent's basic.auth.user.info)",
    },
    Var {
        name: "KAFKA_SCHEMA_REGISTRY_CA_PEM_LOCATION",
        group: Group::Reader,
        default: Default::Unset,
        help: "a PEM file of CA certificates trusted for the registry, beside the system's CA store",
    },
    Var {
        name: "KV_API_STATE_STORAGE_SQLITE_PASSWORD",
        group: Group::Reader,
        default: Default::Unset,
        help: "original name of KV_API_STATE_STORAGE_PASSWORD",
    },
];
