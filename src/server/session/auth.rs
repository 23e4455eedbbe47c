//! AUTH (RFC 4954) toward the client: PLAIN and LOGIN, checked against the users file
//! or passed through to the backend. Failures are slowed down and, after
//! `auth.max_failures`, end the session with 421. Passwords are never logged or kept.

use super::{Outcome, Session, Step};
use crate::auth::mechanism::{self, AuthError, Mechanism};
use crate::auth::verifier;
use crate::backend::upstream::UpstreamError;
use crate::config::{Auth, AuthPolicy, AuthSource};
use crate::metrics;
use crate::smtp::{Asked, Reply};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Delay before answering a failed attempt, multiplied by the failures so far.
const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// How an AUTH exchange ended. Each mode writes its own final reply.
enum Verdict {
    Accepted(String),
    Refused(String),
    /// Cancelled, malformed or a temporary failure: answered, not counted.
    Answered,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) fn auth_offered(&self) -> bool {
        self.listener.auth != AuthPolicy::Off
            && self.config.auth.is_some()
            && (self.stream.is_tls() || self.listener.auth_plaintext)
    }

    pub(super) async fn auth(&mut self, line: &[u8], args: &str) -> Step {
        let Some(auth) = self.config.auth.clone().filter(|_| self.listener.auth != AuthPolicy::Off) else {
            return self.refuse("502 5.5.1 Error: authentication not enabled");
        };
        if !self.stream.is_tls() && !self.listener.auth_plaintext {
            return self.refuse("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        if !self.phase.helo().is_some_and(|h| h.esmtp) {
            return self.refuse("503 5.5.1 Error: send EHLO first");
        }
        if self.authenticated.is_some() {
            return self.refuse("503 5.5.1 Error: already authenticated");
        }
        if self.phase.transaction().is_some() {
            return self.refuse("503 5.5.1 Error: MAIL transaction in progress");
        }
        let (mechanism, initial) = match mechanism::parse_command(args) {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(e.reply()),
        };
        let backend_mode = matches!(auth.source, AuthSource::Backend);
        let verdict = if backend_mode {
            self.auth_backend(line, mechanism, initial).await?
        } else {
            self.auth_local(&auth, mechanism, initial).await?
        };
        match verdict {
            Verdict::Accepted(user) => {
                metrics::auth(&self.listener.name, "success");
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, user = ?user, "authenticated");
                self.authenticated = Some(user);
                self.auth_mechanism = Some(match mechanism {
                    crate::auth::mechanism::Mechanism::Plain => "PLAIN",
                    crate::auth::mechanism::Mechanism::Login => "LOGIN",
                });
                if !backend_mode {
                    // The next backend connection carries the login (XCLIENT LOGIN).
                    self.drop_connection();
                }
                Ok(())
            }
            Verdict::Refused(user) => {
                metrics::auth(&self.listener.name, "failure");
                crate::activity::refused(self.client.addr.ip(), &self.listener.name, "authentication failed");
                self.auth_failures += 1;
                tracing::info!(
                    peer = %self.client.addr, listener = %self.listener.name, user = ?user, failures = self.auth_failures,
                    "authentication failed"
                );
                tokio::time::sleep(FAILURE_DELAY * self.auth_failures).await;
                self.failure("authentication failure")?;
                if self.auth_failures >= auth.max_failures {
                    let text = format!("421 4.7.0 {} Error: too many authentication failures", self.config.hostname);
                    self.reply(&text);
                    return Err(Outcome::AuthFailures);
                }
                Ok(())
            }
            Verdict::Answered => Ok(()),
        }
    }

    /// Checks the credentials against the users file.
    async fn auth_local(
        &mut self,
        auth: &Arc<Auth>,
        mechanism: Mechanism,
        initial: Option<&str>,
    ) -> Result<Verdict, Outcome> {
        let credentials = match mechanism {
            Mechanism::Plain => {
                let response = match initial {
                    Some(i) => mechanism::decode(i),
                    None => self.auth_response("").await?,
                };
                response.and_then(|r| mechanism::plain(&r))
            }
            Mechanism::Login => {
                let user = match initial {
                    Some(i) => mechanism::decode(i),
                    None => self.auth_response("VXNlcm5hbWU6").await?,
                }
                .and_then(|r| mechanism::login_text(&r));
                match user {
                    Ok(user) => {
                        let password = self.auth_response("UGFzc3dvcmQ6").await?;
                        password.and_then(|p| mechanism::login_text(&p)).map(|p| (user, p))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let (user, password) = match credentials {
            Ok(c) => c,
            Err(e) => {
                self.reply(e.reply());
                return Ok(Verdict::Answered);
            }
        };
        let AuthSource::File(users) = &auth.source else {
            self.reply("454 4.7.0 Temporary authentication failure");
            return Ok(Verdict::Answered);
        };
        // argon2 is slow and large on purpose: bounded, and off the event loop.
        let valid = match verifier::verify(users.clone(), user.clone(), password).await {
            Ok(valid) => valid,
            Err(e) => {
                metrics::auth(&self.listener.name, "deferred");
                metrics::limit_refused("auth verifier threads");
                tracing::warn!(peer = %self.client.addr, listener = %self.listener.name, error = %e, "authentication deferred");
                self.reply("454 4.7.0 Temporary authentication failure, try again later");
                return Ok(Verdict::Answered);
            }
        };
        if valid {
            self.reply("235 2.7.0 Authentication successful");
            Ok(Verdict::Accepted(user))
        } else {
            self.reply("535 5.7.8 Authentication credentials invalid");
            Ok(Verdict::Refused(user))
        }
    }

    /// Sends a `334` challenge and decodes the client's answer.
    async fn auth_response(&mut self, challenge: &str) -> Result<Result<Vec<u8>, AuthError>, Outcome> {
        self.out.extend_from_slice(b"334 ");
        self.reply(challenge);
        Ok(match self.next_line().await? {
            Ok(line) => std::str::from_utf8(&line[..line.len() - 2])
                .map_err(|_| AuthError::Undecodable)
                .and_then(mechanism::decode),
            Err(_) => Err(AuthError::Undecodable),
        })
    }

    /// Passes the exchange to the backend (after its identity step, so it sees the real
    /// client); the backend's replies decide and are relayed unchanged.
    async fn auth_backend(
        &mut self,
        line: &[u8],
        mechanism: Mechanism,
        initial: Option<&str>,
    ) -> Result<Verdict, Outcome> {
        match self.connect_upstream(&[]).await {
            Ok(up) => self.idle = Some(up),
            Err(_) => {
                self.reply("454 4.7.0 Temporary authentication failure");
                return Ok(Verdict::Answered);
            }
        }
        if self.idle.as_ref().is_some_and(|u| u.capabilities().auth.is_none()) {
            tracing::warn!(peer = %self.client.addr, "auth.mode = \"backend\" but the backend does not offer AUTH");
            self.reply("454 4.7.0 Temporary authentication failure");
            return Ok(Verdict::Answered);
        }
        // The user name is learnt for the log; the password is forwarded, never kept.
        let mut user = initial.and_then(|i| user_in(mechanism, i));
        // Only the first answer can hold the user name (LOGIN's second is the password).
        let mut first_answer = initial.is_none();
        let mut reply = match self.upstream_command(line).await {
            Ok(r) => r,
            Err(e) => {
                self.upstream_failed(e, "AUTH")?;
                return Ok(Verdict::Answered);
            }
        };
        while reply.code == 334 {
            self.relay_reply(&reply)?;
            let response = match self.read_line(false).await? {
                Ok(l) => l,
                Err(_) => bytes::BytesMut::from(&b"*\r\n"[..]),
            };
            if std::mem::take(&mut first_answer) {
                user = std::str::from_utf8(&response[..response.len() - 2]).ok().and_then(|t| user_in(mechanism, t));
            }
            reply = match self.upstream_command(&response).await {
                Ok(r) => r,
                Err(e) => {
                    self.upstream_failed(e, "AUTH")?;
                    return Ok(Verdict::Answered);
                }
            };
        }
        self.relay_reply(&reply)?;
        let user = user.unwrap_or_else(|| "(unknown)".to_string());
        Ok(match reply.code {
            235 => Verdict::Accepted(user),
            535 | 550 | 554 => Verdict::Refused(user),
            _ => Verdict::Answered,
        })
    }

    async fn upstream_command(&mut self, bytes: &[u8]) -> Result<Reply, UpstreamError> {
        match self.idle.as_mut() {
            Some(up) => up.command(bytes, Asked::Auth).await,
            None => Err(UpstreamError::Closed),
        }
    }
}

/// The user name inside a PLAIN response or a LOGIN user-name response.
fn user_in(mechanism: Mechanism, text: &str) -> Option<String> {
    let raw = mechanism::decode(text.trim_end()).ok()?;
    match mechanism {
        Mechanism::Plain => mechanism::plain(&raw).ok().map(|(user, _)| user),
        Mechanism::Login => mechanism::login_text(&raw).ok(),
    }
}
