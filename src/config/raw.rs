//! The TOML file as written: plain serde structs, unknown keys refused. Values that
//! need checking stay strings here so validation can report every mistake at once.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) listener: Vec<RawListener>,
    #[serde(default)]
    pub(crate) relay: RawRelay,
    #[serde(default)]
    pub(crate) backend: Vec<RawBackend>,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    pub(crate) tls: Option<RawTls>,
    pub(crate) auth: Option<RawAuth>,
    #[serde(default)]
    pub(crate) trust: RawTrust,
    #[serde(default)]
    pub(crate) log: RawLog,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) screen: RawScreen,
    #[serde(default)]
    pub(crate) store: RawStore,
    #[serde(default)]
    pub(crate) milter: Vec<RawMilter>,
    pub(crate) acme: Option<RawAcme>,
    #[serde(default)]
    pub(crate) recipients: Vec<RawRecipients>,
}

/// `[acme]`: certificates obtained and renewed from an ACME CA (RFC 8555).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    /// The CA's directory URL (https).
    pub(crate) directory: String,
    /// "mailto:..." address(es) the CA may write to about the account.
    pub(crate) contact: Option<RawStrings>,
    pub(crate) domains: Vec<String>,
    /// "http-01" | "tls-alpn-01".
    pub(crate) challenge: Option<String>,
    /// Where the HTTP-01 answers are served (port 80 as the CA sees it).
    pub(crate) http_bind: Option<String>,
    /// Account key, certificate and key, kept across restarts; shared by a fleet.
    pub(crate) state_dir: String,
    pub(crate) renew_before: Option<String>,
    /// Trust for the CA's own HTTPS API (a private CA); absent: the system's roots.
    pub(crate) ca_file: Option<String>,
}

/// One string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawStrings {
    One(String),
    Many(Vec<String>),
}

impl RawStrings {
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            RawStrings::One(s) => vec![s.clone()],
            RawStrings::Many(v) => v.clone(),
        }
    }
}

/// `[[recipients]]`: the valid addresses of some local domains, from a file or a
/// directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecipients {
    #[serde(default)]
    pub(crate) domains: Vec<String>,
    /// One address a line, `@domain` for a whole domain.
    pub(crate) file: Option<String>,
    /// "ldaps://host[:port]" or "ldap://host[:port]".
    pub(crate) ldap: Option<String>,
    pub(crate) starttls: Option<bool>,
    pub(crate) ca_file: Option<String>,
    pub(crate) bind_dn: Option<String>,
    pub(crate) bind_password_file: Option<String>,
    pub(crate) base: Option<String>,
    /// With `%s` for the recipient.
    pub(crate) filter: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) cache_ttl: Option<String>,
    /// "tempfail" | "accept", when the source cannot answer.
    pub(crate) on_error: Option<String>,
    pub(crate) recipient_delimiter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMilter {
    pub(crate) name: String,
    /// "inet:host:port" or "unix:/path".
    pub(crate) address: String,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) command_timeout: Option<String>,
    pub(crate) message_timeout: Option<String>,
    /// "tempfail" | "reject" | "accept", when the filter cannot answer.
    pub(crate) default_action: Option<String>,
    /// Steps never sent: "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body".
    #[serde(default)]
    pub(crate) skip: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// Where /metrics, /healthz and /readyz are served.
    pub(crate) bind: String,
    /// A file holding the token that calls changing state (lifting bans) must present.
    pub(crate) token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScreen {
    /// Failures (relay attempts, failed passwords, protocol errors) that ban a client.
    pub(crate) ban_after: Option<u32>,
    pub(crate) ban_window: Option<String>,
    pub(crate) ban_time: Option<String>,
    /// Early-talker detection; absent: on for listeners facing the Internet.
    pub(crate) pregreet: Option<bool>,
    pub(crate) pregreet_wait: Option<String>,
    pub(crate) pregreet_ttl: Option<String>,
    /// The resolver the DNS lists are asked through ("ip" or "ip:port").
    #[serde(default)]
    pub(crate) nameservers: Vec<String>,
    /// Zones: "zone[=filter][*weight]".
    #[serde(default)]
    pub(crate) dnsbl: Vec<String>,
    pub(crate) threshold: Option<i32>,
    /// "reject" | "enforce" | "log", for listeners that do not say.
    pub(crate) action: Option<String>,
    pub(crate) dnsbl_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    /// "redis://host:port/db"; absent: every instance keeps its own state.
    pub(crate) redis: Option<String>,
    /// For one call to the store; beyond it, local limits apply.
    pub(crate) timeout: Option<String>,
    /// Prefix of every key (several fleets in one Redis).
    pub(crate) prefix: Option<String>,
    /// Largest reply taken from the store; past it the connection is dropped.
    pub(crate) max_reply_size: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// "text" or "json".
    pub(crate) format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrust {
    /// Whose PROXY headers are believed.
    #[serde(default)]
    pub(crate) proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) certificate: String,
    pub(crate) private_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    /// "file" (users_file) or "backend" (the backend checks the credentials).
    pub(crate) mode: Option<String>,
    pub(crate) users_file: Option<String>,
    pub(crate) max_failures: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) hostname: Option<String>,
    pub(crate) workers: Option<usize>,
    pub(crate) drain_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: String,
    pub(crate) bind: String,
    #[serde(default = "accept")]
    pub(crate) default: String,
    #[serde(default)]
    pub(crate) rules: Vec<RawRule>,
    #[serde(default = "none")]
    pub(crate) tls: String,
    #[serde(default)]
    pub(crate) require_tls: bool,
    #[serde(default = "off")]
    pub(crate) auth: String,
    #[serde(default)]
    pub(crate) auth_plaintext: bool,
    #[serde(default)]
    pub(crate) proxy_protocol: bool,
    pub(crate) greeting_delay: Option<String>,
    /// What a DNS list verdict does here: "reject" | "enforce" | "log" | "off".
    pub(crate) screen_action: Option<String>,
    /// Content filters (`[[milter]]` names), asked in this order.
    #[serde(default)]
    pub(crate) milters: Vec<String>,
}

fn none() -> String {
    "none".into()
}

fn off() -> String {
    "off".into()
}

fn accept() -> String {
    "accept".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) name: String,
    pub(crate) action: String,
    pub(crate) from: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRelay {
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    #[serde(default)]
    pub(crate) local_domains: Vec<String>,
    #[serde(default = "yes")]
    pub(crate) authenticated: bool,
    #[serde(default)]
    pub(crate) networks: Vec<String>,
    #[serde(default)]
    pub(crate) local_addresses: Vec<String>,
    #[serde(default)]
    pub(crate) never: Vec<String>,
    /// Networks in `networks` that hold public addresses, repeated here to say that
    /// relaying for them is meant (an open relay otherwise).
    #[serde(default)]
    pub(crate) public_networks_acknowledged: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for RawRelay {
    fn default() -> Self {
        Self {
            enabled: true,
            local_domains: Vec::new(),
            authenticated: true,
            networks: Vec::new(),
            local_addresses: Vec::new(),
            never: Vec::new(),
            public_networks_acknowledged: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) address: String,
    #[serde(default = "xclient")]
    pub(crate) identity: String,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) reply_timeout: Option<String>,
    pub(crate) data_timeout: Option<String>,
    #[serde(default = "none")]
    pub(crate) tls: String,
    pub(crate) ca_file: Option<String>,
    #[serde(default = "yes")]
    pub(crate) tls_verify: bool,
    pub(crate) tls_server_name: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) queue_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    #[serde(default)]
    pub(crate) allow_identity_downgrade: bool,
    /// Health checks: how often ("0s": never), how long one may take, and how many in a
    /// row bring the backend up (rise) or take it down (fall).
    pub(crate) check_interval: Option<String>,
    pub(crate) check_timeout: Option<String>,
    pub(crate) rise: Option<u32>,
    pub(crate) fall: Option<u32>,
    /// Keep greeted connections between sessions (identities that do not bind a
    /// connection to one client); absent: on for xforward.
    pub(crate) reuse: Option<bool>,
    /// How long a kept connection may wait for its next session.
    pub(crate) reuse_idle: Option<String>,
    /// Messages one kept connection carries at most before it is closed.
    pub(crate) reuse_max_messages: Option<u32>,
}

fn xclient() -> String {
    "xclient".into()
}

/// A size: a number of bytes or a string such as `"50MB"` / `"10MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_line_length: Option<usize>,
    pub(crate) max_message_size: Option<RawSize>,
    pub(crate) max_recipients: Option<u32>,
    pub(crate) recipient_overshoot_limit: Option<u32>,
    pub(crate) bare_lf: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) max_errors: Option<u32>,
    pub(crate) max_junk_commands: Option<u32>,
    pub(crate) command_timeout: Option<String>,
    pub(crate) data_timeout: Option<String>,
    /// Bytes per second; 0: off.
    pub(crate) min_data_rate: Option<u64>,
    pub(crate) min_data_rate_grace: Option<String>,
    pub(crate) tls_handshake_timeout: Option<String>,
    /// "60/min" style rates; absent: no limit.
    pub(crate) max_connection_rate: Option<String>,
    pub(crate) max_message_rate: Option<String>,
    pub(crate) max_recipient_rate: Option<String>,
    /// IPv6 clients are counted by this prefix.
    pub(crate) ipv6_prefix: Option<u8>,
    /// Of a message held for content filters, bytes kept in memory; the rest goes to
    /// an unnamed temporary file.
    pub(crate) held_in_memory: Option<RawSize>,
    /// Header fields of a message held for content filters, and of their changes.
    pub(crate) max_headers: Option<usize>,
    /// Bytes of those header fields.
    pub(crate) max_header_size: Option<RawSize>,
}
