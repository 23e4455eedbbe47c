//! Content filters in the session (a listener's `milters`): asked at MAIL and RCPT
//! before the backend sees the sender or the recipient, at DATA before the client gets
//! its 354, and over the whole message, which is held (see [`crate::milter::message`])
//! until every filter has answered. The message then goes to the backend with the
//! filters' changes applied, and the client's reply to the final dot is the backend's
//! (or a filter's refusal). Sender and recipient changes remake the backend's
//! transaction (RSET, MAIL, RCPT...) before DATA.

use super::data::BodySink;
use super::{Outcome, Session, Step};
use crate::metrics;
use crate::milter::message::{ChangeBounds, Edits, HeaderBounds, Held, HoldError, Part, Spool};
use crate::milter::{Facts, Filters, Verdict};
use crate::smtp::Asked;
use crate::smtp::command::Param;
use tokio::io::{AsyncRead, AsyncWrite};

/// A filter's verdict for the client, as the session goes on.
pub(super) enum Filtered {
    Go,
    /// Accept what follows, then drop the message.
    Discard,
    /// Answered (refused); the step is over.
    Refused,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn filter_facts(&self) -> Facts {
        Facts {
            hostname: self.config.hostname.clone(),
            client: self.client,
            helo: self.phase.helo().map(|h| h.name.clone()).unwrap_or_default(),
            tls_version: self.tls_facts().0,
            cipher: self.tls_facts().1,
            user: self.authenticated.clone(),
            auth_mechanism: self.auth_mechanism.map(str::to_string),
        }
    }

    /// The TLS version and cipher suite of the client's connection, in the names
    /// Postfix gives filters ("TLSv1.3").
    fn tls_facts(&self) -> (Option<String>, Option<String>) {
        let crate::tls::MaybeTls::Tls(tls) = &self.stream else { return (None, None) };
        let (_, connection) = tls.get_ref();
        let version = connection.protocol_version().map(|v| format!("{v:?}").replace('_', "."));
        let cipher = connection.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite()));
        (version, cipher)
    }

    /// The filters' id of the current message (`i`), for log lines.
    fn queue_id(&self) -> &str {
        self.filters.as_ref().map_or("", |f| f.queue_id())
    }

    /// MAIL, to the filters first.
    pub(super) async fn filter_mail(&mut self, path: &str, params: &[Param<'_>]) -> Result<Filtered, Outcome> {
        if self.listener.milters.is_empty() {
            return Ok(Filtered::Go);
        }
        let facts = self.filter_facts();
        let filters = self.filters.get_or_insert_with(|| Box::new(Filters::new(&self.listener.milters)));
        let queue_id = format!("{:016X}{:04X}", self.id, self.stats.transactions);
        let args = args(path, params);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let verdict = filters.mail(&facts, queue_id, &args).await;
        self.apply(verdict, "MAIL")
    }

    /// RCPT, to the filters first.
    pub(super) async fn filter_rcpt(&mut self, path: &str, params: &[Param<'_>]) -> Result<Filtered, Outcome> {
        let Some(filters) = self.filters.as_mut().filter(|_| !self.listener.milters.is_empty()) else {
            return Ok(Filtered::Go);
        };
        let args = args(path, params);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let verdict = filters.rcpt(&args).await;
        self.apply(verdict, "RCPT")
    }

    fn apply(&mut self, verdict: Verdict, step: &'static str) -> Result<Filtered, Outcome> {
        match verdict {
            Verdict::Continue => Ok(Filtered::Go),
            Verdict::Discard => Ok(Filtered::Discard),
            Verdict::Refuse(reply) => {
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, queue_id = self.queue_id(), step, reply = ?reply, "refused by a content filter");
                let permanent = reply.starts_with('5');
                self.reply(&reply);
                if permanent {
                    self.count_error_as("content filter")?;
                }
                Ok(Filtered::Refused)
            }
            Verdict::Close => {
                let text = format!("421 4.7.0 {} Error: closing the connection", self.config.hostname);
                self.reply(&text);
                Err(Outcome::FilterClosed)
            }
        }
    }

    /// DATA with filters: the filters' DATA step, our own 354, the message held, then
    /// the filters' verdict and the backend's transaction.
    pub(super) async fn filtered_data(&mut self) -> Step {
        let verdict = match self.filters.as_mut() {
            Some(filters) => filters.data().await,
            None => Verdict::Continue,
        };
        match self.apply(verdict, "DATA")? {
            Filtered::Go => {}
            Filtered::Discard => self.discard_current(),
            Filtered::Refused => return self.reset_transaction().await,
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        let mut sink = BodySink::Hold(Spool::new(self.config.limits.held_in_memory), None);
        let Some(mail_line) = self.phase.transaction().map(|tx| tx.mail_line.clone()) else { return Ok(()) };
        let (discard, rcpt_lines) = match self.filters.as_mut() {
            Some(f) => (f.discard, std::mem::take(&mut f.rcpt_lines)),
            None => (false, Vec::new()),
        };
        let Some(BodySink::Hold(spool, error)) = self.receive_body(&mut sink).await? else {
            self.abort_filters().await;
            return Ok(());
        };
        if let Some(e) = error {
            tracing::error!(peer = %self.client.addr, error = %e, "message could not be held (temporary file); refused for now");
            self.abort_filters().await;
            self.drop_connection();
            metrics::message("failed");
            self.reply("451 4.3.0 Error: local problem holding the message, try again later");
            return Ok(());
        }
        let size = spool.len();
        let held = match Held::new(spool, self.header_bounds()) {
            Ok(h) => h,
            Err(e) => return self.refuse_held(e, size).await,
        };
        if held.on_disk() {
            tracing::debug!(peer = %self.client.addr, size = held.size(), "message held in a temporary file");
        }
        let bounds = self.change_bounds();
        let (verdict, edits) = match self.filters.as_mut() {
            Some(filters) => filters.message(&held, bounds).await,
            None => (Verdict::Continue, Edits::new(bounds)),
        };
        if edits.body_on_disk() {
            tracing::debug!(peer = %self.client.addr, "new body held in a temporary file");
        }
        let discard = match self.apply(verdict, "end of data")? {
            Filtered::Refused => {
                metrics::message("rejected");
                return self.drop_backend_transaction().await;
            }
            Filtered::Discard => true,
            Filtered::Go => discard,
        };
        if discard {
            tracing::info!(peer = %self.client.addr, listener = %self.listener.name, queue_id = self.queue_id(), size = held.size(), "message discarded by a content filter");
            metrics::message("discarded");
            self.reply("250 2.0.0 Ok: discarded");
            return self.drop_backend_transaction().await;
        }
        if let Some(reason) = &edits.quarantine {
            // A proxy has no hold queue: a message a filter wants kept aside is refused
            // rather than delivered.
            tracing::warn!(peer = %self.client.addr, queue_id = self.queue_id(), reason = ?reason, "content filter quarantined the message; refused");
            metrics::message("rejected");
            self.reply("554 5.7.1 Error: message quarantined by a content filter");
            return self.drop_backend_transaction().await;
        }
        if edits.envelope_changed() && !self.remake_envelope(&edits, &mail_line, &rcpt_lines).await? {
            return Ok(());
        }
        // The filters' logs name the message by this id: one line of ours carries it.
        tracing::info!(peer = %self.client.addr, listener = %self.listener.name, queue_id = self.queue_id(), size = held.size(), "message passed the content filters");
        self.deliver_held(&held, &edits).await
    }

    fn header_bounds(&self) -> HeaderBounds {
        let limits = &self.config.limits;
        HeaderBounds { count: limits.max_headers, bytes: limits.max_header_size }
    }

    /// What the filters' changes to a message may come to: headers within the bounds
    /// of a header section, a new body the size of a message (held as one is),
    /// recipients added or removed as many as a client may give.
    fn change_bounds(&self) -> ChangeBounds {
        let limits = &self.config.limits;
        let recipients = limits.max_recipients as usize;
        ChangeBounds {
            headers: self.header_bounds(),
            body: limits.max_message_size + 1024 * 1024,
            held_in_memory: limits.held_in_memory,
            added: recipients,
            deleted: recipients,
        }
    }

    /// A message that could not be held for the filters: refused, 552 past the header
    /// bounds (before any filter is shown a header), 451 on a local failure. The
    /// filters and the backend forget the transaction.
    async fn refuse_held(&mut self, e: HoldError, size: u64) -> Step {
        self.abort_filters().await;
        metrics::message(if e.refusal().is_some() { "rejected" } else { "failed" });
        let Some((limit, reply)) = e.refusal() else {
            tracing::error!(peer = %self.client.addr, error = %e, "held message unreadable; refused for now");
            self.drop_connection();
            self.reply("451 4.3.0 Error: local problem holding the message, try again later");
            return Ok(());
        };
        tracing::info!(peer = %self.client.addr, listener = %self.listener.name, queue_id = self.queue_id(), reason = %e, size, "message refused");
        metrics::limit_refused(limit);
        self.drop_backend_transaction().await?;
        self.refuse(reply)
    }

    /// Marks the open transaction: the message is accepted from the client, then dropped.
    pub(super) fn discard_current(&mut self) {
        if let Some(filters) = self.filters.as_mut() {
            filters.discard = true;
        }
    }

    /// The backend's transaction for a message that will not come: RSET.
    async fn drop_backend_transaction(&mut self) -> Step {
        if let Some(up) = self.connection_mut()
            && !up.command(b"RSET\r\n", Asked::Rset).await.is_ok_and(|r| r.is_positive())
        {
            self.drop_connection();
        }
        Ok(())
    }

    /// Sender or recipients changed by a filter: the backend's transaction is made
    /// again. False when it could not be (the client has its reply).
    async fn remake_envelope(
        &mut self,
        edits: &Edits,
        mail_line: &[u8],
        rcpt_lines: &[Vec<u8>],
    ) -> Result<bool, Outcome> {
        let mut lines: Vec<Vec<u8>> =
            rcpt_lines.iter().filter(|line| !edits.deleted.iter().any(|d| rcpt_is(line, d))).cloned().collect();
        // The client was told these were accepted: each must be again, or the message
        // waits (451) rather than reach fewer recipients than the client was told.
        let kept = lines.len();
        for (address, params) in &edits.added {
            let address = bracketed(address);
            let line = match params {
                Some(p) => format!("RCPT TO:{address} {p}\r\n"),
                None => format!("RCPT TO:{address}\r\n"),
            };
            lines.push(line.into_bytes());
        }
        let mail = match &edits.new_from {
            Some((address, Some(p))) => format!("MAIL FROM:{} {p}\r\n", bracketed(address)).into_bytes(),
            // Without parameters of its own, the new sender keeps the client's (SIZE,
            // BODY, SMTPUTF8, ...): the message has not changed kind.
            Some((address, None)) => match mail_params(mail_line) {
                Some(p) => format!("MAIL FROM:{} {p}\r\n", bracketed(address)).into_bytes(),
                None => format!("MAIL FROM:{}\r\n", bracketed(address)).into_bytes(),
            },
            None => mail_line.to_vec(),
        };
        tracing::info!(
            peer = %self.client.addr, queue_id = self.queue_id(), from = ?String::from_utf8_lossy(&mail).trim_end(), recipients = lines.len(),
            "content filter changed the envelope; backend transaction made again"
        );
        if lines.is_empty() {
            self.reply("554 5.7.1 Error: every recipient was removed by a content filter");
            self.drop_backend_transaction().await?;
            return Ok(false);
        }
        // The client's transaction ended with its final dot: the connection is idle.
        let facts = super::backend::facts_of(self.client, &self.phase, self.authenticated.as_deref());
        let Some(up) = self.idle.as_deref_mut() else {
            self.reply(crate::backend::upstream::CONNECTION_LOST);
            return Ok(false);
        };
        let remade = async {
            let reset = up.command(b"RSET\r\n", Asked::Rset).await?;
            if !reset.is_positive() {
                return Ok(Some(Some(reset)));
            }
            let reply = up.mail(&facts, &mail).await?;
            if !reply.is_positive() {
                return Ok(Some(Some(reply)));
            }
            let mut accepted = 0;
            for (i, line) in lines.iter().enumerate() {
                let reply = up.command(line, Asked::Rcpt).await?;
                if reply.is_positive() {
                    accepted += 1;
                } else {
                    tracing::warn!(rcpt = ?String::from_utf8_lossy(line).trim_end(), reply = ?reply.first_line(), "backend refused a recipient after a filter's change");
                    if i < kept {
                        return Ok(Some(None));
                    }
                }
            }
            Ok(if accepted == 0 { Some(None) } else { None })
        }
        .await;
        match remade {
            Ok(None) => Ok(true),
            Ok(Some(refusal)) => {
                self.drop_connection();
                match refusal {
                    Some(reply) => self.relay_reply(&reply)?,
                    None => self.reply("451 4.3.0 Error: the recipients could not be confirmed again, try again later"),
                }
                Ok(false)
            }
            Err(e) => {
                self.upstream_failed(e, "envelope after a filter's change")?;
                Ok(false)
            }
        }
    }

    /// DATA at the backend, then the held message with the filters' changes.
    async fn deliver_held(&mut self, held: &Held, edits: &Edits) -> Step {
        if !self.backend_data(false).await? {
            return Ok(());
        }
        let Some(up) = self.connection_mut() else {
            metrics::message("failed");
            self.reply(crate::backend::upstream::CONNECTION_LOST);
            return Ok(());
        };
        let mut buf = vec![0u8; 64 * 1024];
        for part in held.render(edits) {
            let sent = match part {
                Part::Bytes(bytes) => up.send_body(&bytes).await,
                Part::Spool { spool, mut from, to } => loop {
                    let n = match spool.read_between(from, to, &mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::error!(error = %e, "held message unreadable; backend transaction abandoned");
                            self.drop_connection();
                            self.reply("451 4.3.0 Error: local problem holding the message, try again later");
                            return Ok(());
                        }
                    };
                    if n == 0 {
                        break Ok(());
                    }
                    from += n as u64;
                    if let Err(e) = up.send_body(&buf[..n]).await {
                        break Err(e);
                    }
                },
            };
            if let Err(e) = sent {
                metrics::message("failed");
                return self.upstream_failed(e, "message body");
            }
        }
        self.finish_message().await
    }

    /// The transaction ended before its end of data: the filters forget it.
    pub(super) async fn abort_filters(&mut self) {
        if let Some(filters) = self.filters.as_mut() {
            filters.abort().await;
        }
    }
}

/// MAIL or RCPT as filters get it: the path in angle brackets, then each parameter.
fn args(path: &str, params: &[Param<'_>]) -> Vec<String> {
    let mut out = vec![format!("<{path}>")];
    for p in params {
        out.push(match p.value {
            Some(v) => format!("{}={v}", p.keyword),
            None => p.keyword.to_string(),
        });
    }
    out
}

/// The parameters of a MAIL line (after its path), if any.
fn mail_params(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let after = text.trim_end().split_once('>')?.1.trim();
    (!after.is_empty()).then(|| after.to_string())
}

fn bracketed(address: &str) -> String {
    if address.starts_with('<') { address.to_string() } else { format!("<{address}>") }
}

/// Whether the RCPT `line` names `address` (with or without angle brackets, any case).
fn rcpt_is(line: &[u8], address: &str) -> bool {
    let text = String::from_utf8_lossy(line);
    let path = text.split_once(':').map(|(_, rest)| rest.trim()).unwrap_or("");
    let path = path.split_whitespace().next().unwrap_or("");
    path.trim_start_matches('<')
        .trim_end_matches('>')
        .eq_ignore_ascii_case(address.trim_start_matches('<').trim_end_matches('>'))
}
