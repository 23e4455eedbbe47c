//! The TOML file as written: plain serde structs, unknown keys refused. Values that
//! need checking stay strings here so validation can report every mistake at once.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub relay: RawRelay,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    #[serde(default)]
    pub limits: RawLimits,
    pub tls: Option<RawTls>,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub trust: RawTrust,
    #[serde(default)]
    pub log: RawLog,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub screen: RawScreen,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub milter: Vec<RawMilter>,
    pub acme: Option<RawAcme>,
    #[serde(default)]
    pub recipients: Vec<RawRecipients>,
}

/// `[acme]`: certificates obtained and renewed from an ACME CA (RFC 8555).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// The CA's directory URL (https).
    pub directory: String,
    /// "mailto:..." address(es) the CA may write to about the account.
    pub contact: Option<RawStrings>,
    pub domains: Vec<String>,
    /// "http-01" | "tls-alpn-01".
    pub challenge: Option<String>,
    /// Where the HTTP-01 answers are served (port 80 as the CA sees it).
    pub http_bind: Option<String>,
    /// Account key, certificate and key, kept across restarts; shared by a fleet.
    pub state_dir: String,
    pub renew_before: Option<String>,
    /// Trust for the CA's own HTTPS API (a private CA); absent: the system's roots.
    pub ca_file: Option<String>,
}

/// One string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawStrings {
    One(String),
    Many(Vec<String>),
}

impl RawStrings {
    pub fn to_vec(&self) -> Vec<String> {
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
pub struct RawRecipients {
    #[serde(default)]
    pub domains: Vec<String>,
    /// One address a line, `@domain` for a whole domain.
    pub file: Option<String>,
    /// "ldaps://host[:port]" or "ldap://host[:port]".
    pub ldap: Option<String>,
    pub starttls: Option<bool>,
    pub ca_file: Option<String>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<String>,
    pub base: Option<String>,
    /// With `%s` for the recipient.
    pub filter: Option<String>,
    pub timeout: Option<String>,
    pub cache_ttl: Option<String>,
    /// "tempfail" | "accept", when the source cannot answer.
    pub on_error: Option<String>,
    pub recipient_delimiter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMilter {
    pub name: String,
    /// "inet:host:port" or "unix:/path".
    pub address: String,
    pub connect_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub message_timeout: Option<String>,
    /// "tempfail" | "reject" | "accept", when the filter cannot answer.
    pub default_action: Option<String>,
    /// Steps never sent: "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body".
    #[serde(default)]
    pub skip: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Where /metrics, /healthz and /readyz are served.
    pub bind: String,
    /// A file holding the token that calls changing state (lifting bans) must present.
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScreen {
    /// Failures (relay attempts, failed passwords, protocol errors) that ban a client.
    pub ban_after: Option<u32>,
    pub ban_window: Option<String>,
    pub ban_time: Option<String>,
    /// Early-talker detection; absent: on for listeners facing the Internet.
    pub pregreet: Option<bool>,
    pub pregreet_wait: Option<String>,
    pub pregreet_ttl: Option<String>,
    /// The resolver the DNS lists are asked through ("ip" or "ip:port").
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Zones: "zone[=filter][*weight]".
    #[serde(default)]
    pub dnsbl: Vec<String>,
    pub threshold: Option<i32>,
    /// "reject" | "enforce" | "log", for listeners that do not say.
    pub action: Option<String>,
    pub dnsbl_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// "redis://host:port/db"; absent: every instance keeps its own state.
    pub redis: Option<String>,
    /// For one call to the store; beyond it, local limits apply.
    pub timeout: Option<String>,
    /// Prefix of every key (several fleets in one Redis).
    pub prefix: Option<String>,
    /// Largest reply taken from the store; past it the connection is dropped.
    pub max_reply_size: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// "text" or "json".
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    /// Whose PROXY headers are believed.
    #[serde(default)]
    pub proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificate: String,
    pub private_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// "file" (users_file) or "backend" (the backend checks the credentials).
    pub mode: Option<String>,
    pub users_file: Option<String>,
    pub max_failures: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub hostname: Option<String>,
    pub workers: Option<usize>,
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    #[serde(default = "accept")]
    pub default: String,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default = "none")]
    pub tls: String,
    #[serde(default)]
    pub require_tls: bool,
    #[serde(default = "off")]
    pub auth: String,
    #[serde(default)]
    pub auth_plaintext: bool,
    #[serde(default)]
    pub proxy_protocol: bool,
    pub greeting_delay: Option<String>,
    /// What a DNS list verdict does here: "reject" | "enforce" | "log" | "off".
    pub screen_action: Option<String>,
    /// Content filters (`[[milter]]` names), asked in this order.
    #[serde(default)]
    pub milters: Vec<String>,
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
pub struct RawRule {
    pub name: String,
    pub action: String,
    pub from: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub local_domains: Vec<String>,
    #[serde(default = "yes")]
    pub authenticated: bool,
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub local_addresses: Vec<String>,
    #[serde(default)]
    pub never: Vec<String>,
    /// Networks in `networks` that hold public addresses, repeated here to say that
    /// relaying for them is meant (an open relay otherwise).
    #[serde(default)]
    pub public_networks_acknowledged: Vec<String>,
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
pub struct RawBackend {
    pub address: String,
    #[serde(default = "xclient")]
    pub identity: String,
    pub connect_timeout: Option<String>,
    pub reply_timeout: Option<String>,
    pub data_timeout: Option<String>,
    #[serde(default = "none")]
    pub tls: String,
    pub ca_file: Option<String>,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    pub tls_server_name: Option<String>,
    pub max_connections: Option<usize>,
    pub queue_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub allow_identity_downgrade: bool,
    /// Health checks: how often ("0s": never), how long one may take, and how many in a
    /// row bring the backend up (rise) or take it down (fall).
    pub check_interval: Option<String>,
    pub check_timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// Keep greeted connections between sessions (identities that do not bind a
    /// connection to one client); absent: on for xforward.
    pub reuse: Option<bool>,
    /// How long a kept connection may wait for its next session.
    pub reuse_idle: Option<String>,
    /// Messages one kept connection carries at most before it is closed.
    pub reuse_max_messages: Option<u32>,
}

fn xclient() -> String {
    "xclient".into()
}

/// A size: a number of bytes or a string such as `"50MB"` / `"10MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_line_length: Option<usize>,
    pub max_message_size: Option<RawSize>,
    pub max_recipients: Option<u32>,
    pub recipient_overshoot_limit: Option<u32>,
    pub bare_lf: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_errors: Option<u32>,
    pub max_junk_commands: Option<u32>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    /// Bytes per second; 0: off.
    pub min_data_rate: Option<u64>,
    pub min_data_rate_grace: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    /// "60/min" style rates; absent: no limit.
    pub max_connection_rate: Option<String>,
    pub max_message_rate: Option<String>,
    pub max_recipient_rate: Option<String>,
    /// IPv6 clients are counted by this prefix.
    pub ipv6_prefix: Option<u8>,
    /// Of a message held for content filters, bytes kept in memory; the rest goes to
    /// an unnamed temporary file.
    pub held_in_memory: Option<RawSize>,
    /// Header fields of a message held for content filters, and of their changes.
    pub max_headers: Option<usize>,
    /// Bytes of those header fields.
    pub max_header_size: Option<RawSize>,
}
